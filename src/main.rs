//! The `provisio` command line.
fn main() {}
