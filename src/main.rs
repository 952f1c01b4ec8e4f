//! The `provisio` command line: run, plan, validate and inspect provisioning requests.

/// `print!` for this binary: writes through [`output::stdout`], so a reader that closed the
/// pipe (`provisio tx list | head -1`) ends the output instead of panicking. Defined before
/// the modules, so it shadows the standard macro in all of them.
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::output::stdout(format_args!($($arg)*))
    };
}

/// `println!` for this binary (see `print!`).
macro_rules! println {
    () => {
        $crate::output::stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `eprintln!` for this binary: a closed stderr is not worth a panic either.
macro_rules! eprintln {
    () => {
        $crate::output::stderr(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::stderr(format_args!("{}\n", format_args!($($arg)*)))
    };
}

mod cli;
mod client;
mod commands;
mod config;
mod driver;
mod inspect;
mod load;
mod serve;
mod via_daemon;

/// Standard output and error that tolerate a reader going away.
mod output {
    use std::fmt::Arguments;
    use std::io::{ErrorKind, Write};
    use std::sync::atomic::{AtomicBool, Ordering};

    static STDOUT_GONE: AtomicBool = AtomicBool::new(false);
    static STDERR_GONE: AtomicBool = AtomicBool::new(false);

    /// Writes to stdout. Once the reader has closed the pipe, the rest of the output is
    /// dropped: what the command did (a transaction already committed) stands, and the
    /// exit code still says how it ended. Another write error is reported once on stderr.
    pub fn stdout(args: Arguments<'_>) {
        if STDOUT_GONE.load(Ordering::Relaxed) {
            return;
        }
        if let Err(e) = std::io::stdout().lock().write_fmt(args) {
            STDOUT_GONE.store(true, Ordering::Relaxed);
            if e.kind() != ErrorKind::BrokenPipe {
                stderr(format_args!(
                    "warning: cannot write to standard output ({e}); the rest of the output is dropped\n"
                ));
            }
        }
    }

    /// Writes to stderr; a closed stderr silences the rest.
    pub fn stderr(args: Arguments<'_>) {
        if STDERR_GONE.load(Ordering::Relaxed) {
            return;
        }
        if std::io::stderr().lock().write_fmt(args).is_err() {
            STDERR_GONE.store(true, Ordering::Relaxed);
        }
    }
}

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
    /// The PostgreSQL store was lost mid-run: the transaction stopped unfinished and is
    /// left for recovery (`provisio recover` once the database is back).
    StoreLost = 4,
    /// Another provisio process holds the journal: nothing ran; try again later
    /// (EX_TEMPFAIL of sysexits.h).
    StoreBusy = 75,
    /// `plan --detailed-exitcode`: the run would change something (exit 2).
    PlanChanges = 200,
    /// `plan`: the run would fail, or the request is bad (exit 1).
    PlanFails = 201,
}

impl Exit {
    /// The process exit status.
    pub fn code(self) -> u8 {
        match self {
            Exit::PlanChanges => 2,
            Exit::PlanFails => 1,
            other => other as u8,
        }
    }
}

/// Turns transparent huge pages off for this process (and the processes it starts: the
/// flag is inherited, an out-of-process provider's included). mimalloc asks for huge pages
/// on its 1 GiB arena, then hands freed pages back to the system in pieces; a page touched
/// again faults in a whole 2 MiB page the kernel zeroes first. Measured (BENCHMARKS.md,
/// session 18): a 64 MiB request runs in half the time without, a durable 10k-folder run on
/// tmpfs ~11% faster; on the disk no change. Best effort: a kernel without the flag is
/// left as it is.
fn no_huge_pages() {
    #[cfg(all(target_os = "linux", not(feature = "system-alloc")))]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
}

fn main() -> ExitCode {
    no_huge_pages();
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
    let command = match &cli.command {
        cli::Command::Tx(_) => "tx",
        cli::Command::Recover => "recover",
        cli::Command::Purge(_) => "purge",
        cli::Command::Script(_) => "script",
        _ => "run",
    };
    match runtime.block_on(commands::dispatch(cli)) {
        Ok(code) => ExitCode::from(code.code()),
        // A reader that closed the pipe (`provisio tx list | head`) ends the output: the
        // command's work stands, nothing to report.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::from(Exit::Ok.code())
        }
        Err(e) => {
            match e.downcast_ref::<load::StoreBusy>() {
                Some(busy) if busy.daemon.is_some() => {
                    eprintln!("error: {e:#}\n{}", busy.hint_for(command))
                }
                _ => eprintln!("error: {e:#}"),
            }
            let code = if e.downcast_ref::<load::StoreBusy>().is_some() {
                Exit::StoreBusy
            } else {
                Exit::BadInput
            };
            ExitCode::from(code as u8)
        }
    }
}
