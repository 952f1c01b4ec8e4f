//! The `provisio` command line: run, plan, validate and inspect provisioning requests.

mod cli;
mod commands;
mod config;
mod driver;
mod load;

use clap::Parser;
use std::process::ExitCode;

/// mimalloc: parsing a request allocates for every element, and mimalloc's small-object
/// paths are markedly cheaper than glibc's (see BENCHMARKS.md, xml_10MB). The
/// `system-alloc` feature keeps the system allocator.
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit codes a script can rely on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The transaction committed (or the command succeeded).
    Ok = 0,
    /// A step failed and everything done was rolled back.
    RolledBack = 1,
    /// Bad input: nothing ran.
    BadInput = 2,
    /// A step failed and some undo failed too: an operator must look.
    RollbackFailed = 3,
}

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    cli::init_tracing(&cli.global);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(Exit::BadInput as u8);
        }
    };
    match runtime.block_on(commands::dispatch(cli)) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(Exit::BadInput as u8)
        }
    }
}
