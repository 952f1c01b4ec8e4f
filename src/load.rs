//! Start-up: loads the namespace folder and the embedded providers into an engine.

use crate::cli::Global;
use anyhow::{bail, Context, Result};
use provisio_engine::compile::Catalog;
use provisio_engine::exec::{Engine, EngineOptions};
use provisio_engine::model::{Format, Namespace, Request, SourceRef};
use provisio_engine::provider::ProviderRegistry;
use provisio_engine::request::{self, ParseError};
use provisio_engine::store::SledStore;
use provisio_engine::txn::{CrashPoint, DurableJournal, SealKey};
use std::io::Read;
use std::sync::Arc;
use std::path::Path;

/// The embedded providers, with their state under the data folder.
pub fn registry(global: &Global) -> Result<ProviderRegistry> {
    provisio_providers::embedded_registry(&global.data_dir).with_context(|| {
        format!(
            "cannot set up the embedded providers under `{}`",
            global.data_dir.display()
        )
    })
}

/// Loads the namespace folder; every parse error is reported.
pub fn namespaces(global: &Global) -> Result<Vec<Namespace>> {
    let dir = &global.namespaces;
    if !dir.is_dir() {
        bail!(
            "namespace folder `{}` not found\n  hint: run from the project folder, or pass --namespaces DIR (or set PROVISIO_NAMESPACES)",
            dir.display()
        );
    }
    let (namespaces, errors) = request::load_namespace_dir(dir);
    if !errors.is_empty() {
        bail!("{}", join_parse_errors(&errors));
    }
    Ok(namespaces)
}

/// Catalog of the namespace folder plus the providers' own namespaces.
pub fn catalog(namespaces: Vec<Namespace>, registry: &ProviderRegistry) -> Result<Catalog> {
    Catalog::new(namespaces, registry).map_err(|errors| {
        anyhow::anyhow!(
            "{}",
            errors
                .iter()
                .map(|e| format!("error[{}]: {e}", e.code()))
                .collect::<Vec<_>>()
                .join("\n")
        )
    })
}

/// An engine over the namespace folder and the embedded providers.
pub fn engine(global: &Global, options: EngineOptions) -> Result<Engine> {
    let registry = registry(global)?;
    let catalog = catalog(namespaces(global)?, &registry)?;
    Ok(Engine::new(catalog, registry, options))
}

/// Opens the journal under `<data-dir>/journal` with the seal key, and arms fault injection
/// from `PROVISIO_CRASH_AT` (crash tests only).
pub fn journal(global: &Global) -> Result<Arc<DurableJournal>> {
    let store = SledStore::open(&global.data_dir.join("journal"))?;
    let key = match std::env::var("PROVISIO_SEAL_KEY") {
        Ok(k) => SealKey::parse(&k).context("PROVISIO_SEAL_KEY")?,
        Err(_) => SealKey::load_or_create(&global.data_dir.join("seal.key"))?,
    };
    let who = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "unknown".into());
    Ok(Arc::new(DurableJournal::new(Arc::new(store), Some(key), who).with_crash_point(CrashPoint::from_env())))
}

/// Reads a request file (or stdin for `-`).
pub fn request(path: &Path) -> std::result::Result<Request, ParseError> {
    if path.as_os_str() == "-" {
        let mut src = String::new();
        if let Err(e) = std::io::stdin()
            .take(request::MAX_FILE_BYTES as u64 + 1)
            .read_to_string(&mut src)
        {
            return Err(ParseError::new(
                SourceRef::new("<stdin>", 0, 0),
                format!("cannot read: {e}"),
            ));
        }
        let trimmed = src.trim_start();
        let format = if trimmed.starts_with('<') {
            Format::Xml
        } else if trimmed.starts_with('{') {
            Format::Json
        } else {
            Format::Yaml
        };
        return request::parse_request(&src, "<stdin>", format);
    }
    request::load_request_file(path)
}

/// Formats several parse errors, one per paragraph.
pub fn join_parse_errors(errors: &[ParseError]) -> String {
    errors
        .iter()
        .map(|e| format!("error: {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}
