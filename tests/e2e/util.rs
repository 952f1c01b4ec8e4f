//! Shared helpers for the end-to-end tests: a temporary data folder per test, the real
//! binary run against it, and independent checks of what it left on disk.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub struct Sandbox {
    pub dir: tempfile::TempDir,
    /// The PostgreSQL store (`PROVISIO_STORE`) the binary is run with, if any.
    pub store: Option<String>,
}

impl Sandbox {
    /// A sandbox on the store the suite runs on: sled, or a fresh PostgreSQL schema when
    /// `PROVISIO_TEST_STORE=postgres` (test-support's `store_url`).
    pub fn new() -> Sandbox {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = provisio_test_support::postgres::store_url(&dir.path().join("pg"));
        Sandbox { dir, store }
    }

    /// A sandbox whose store is a fresh schema of the shared PostgreSQL server; `None` (the
    /// test skips, with a note) when PostgreSQL is not installed.
    pub fn postgres() -> Option<Sandbox> {
        let pg = provisio_test_support::postgres::Postgres::shared()?;
        Some(Sandbox {
            dir: tempfile::tempdir().expect("temp dir"),
            store: Some(pg.new_schema("e2e")),
        })
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&p, text).expect("write");
        p
    }

    /// Runs the binary with the repo's namespaces and this sandbox's data folder.
    pub fn run(&self, args: &[&str]) -> Run {
        self.run_with(args, &repo().join("namespaces"))
    }

    pub fn run_with(&self, args: &[&str], namespaces: &Path) -> Run {
        self.run_env(args, namespaces, &[])
    }

    /// Runs with extra environment variables.
    pub fn run_env(&self, args: &[&str], namespaces: &Path, env: &[(&str, String)]) -> Run {
        let mut command = Command::new(env!("CARGO_BIN_EXE_provisio"));
        if let Some(url) = &self.store {
            command.env("PROVISIO_STORE", url);
        }
        let out = command
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .current_dir(repo())
            .env("PROVISIO_NAMESPACES", namespaces)
            .env("PROVISIO_DATA_DIR", self.data())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .output()
            .expect("run provisio");
        Run::from(out)
    }

    /// Every file under the data folder with its content (the embedded providers' world).
    pub fn snapshot(&self) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        fn walk(base: &Path, p: &Path, out: &mut Vec<(String, Vec<u8>)>) {
            let Ok(entries) = std::fs::read_dir(p) else {
                return;
            };
            for e in entries.flatten() {
                let path = e.path();
                let rel = path
                    .strip_prefix(base)
                    .unwrap_or(&path)
                    .display()
                    .to_string();
                if path.is_dir() {
                    out.push((format!("{rel}/"), Vec::new()));
                    walk(base, &path, out);
                } else {
                    out.push((rel, std::fs::read(&path).unwrap_or_default()));
                }
            }
        }
        walk(&self.data(), &self.data(), &mut out);
        out.sort();
        out
    }

    /// The user-visible world: tenant folders and zone files, not the providers' own bookkeeping.
    pub fn visible(&self) -> Vec<(String, Vec<u8>)> {
        self.snapshot()
            .into_iter()
            .filter(|(p, _)| {
                p.starts_with("files/tenants") || (p.starts_with("zones/") && p.ends_with(".zone"))
            })
            .collect()
    }
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

pub fn named_checkzone(zone: &str, file: &Path) {
    let Ok(out) = Command::new("named-checkzone").arg(zone).arg(file).output() else {
        assert!(
            std::env::var("PROVISIO_REQUIRE_BIND").is_err(),
            "named-checkzone is required (PROVISIO_REQUIRE_BIND=1) but missing"
        );
        eprintln!("note: named-checkzone not installed; zone file not checked by BIND");
        return;
    };
    assert!(
        out.status.success(),
        "named-checkzone rejected {}:\n{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Runs the binary in `cwd` with only the given `PROVISIO_*` variables (every inherited
/// one is removed, so a test controls all layers of the configuration itself).
pub fn run_clean(cwd: &Path, args: &[&str], env: &[(&str, String)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_provisio"));
    for (k, _) in std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v))) {
        if k.starts_with("PROVISIO_")
            && k != "PROVISIO_REQUIRE_BIND"
            && k != "PROVISIO_REQUIRE_PYTHON"
        {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run provisio");
    Run::from(out)
}
