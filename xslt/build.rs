//! Builds the C shim against the system's libxslt and libxml2 (found with pkg-config), when
//! the `libxslt` feature is on.

fn main() {
    println!("cargo:rerun-if-changed=csrc/shim.c");
    if std::env::var_os("CARGO_FEATURE_LIBXSLT").is_none() {
        return; // built without libxslt: nothing to compile or link
    }
    let mut build = cc::Build::new();
    for lib in ["libxslt", "libxml-2.0"] {
        match pkg_config::Config::new().probe(lib) {
            Ok(found) => {
                for dir in &found.include_paths {
                    build.include(dir);
                }
            }
            Err(e) => panic!(
                "{lib} was not found by pkg-config ({e}); on Debian install libxslt1-dev, \
                 libxml2-dev and pkg-config (scripts/ensure-tools does)"
            ),
        }
    }
    build
        .file("csrc/shim.c")
        .warnings(true)
        .compile("provisio_xslt_shim");
}
