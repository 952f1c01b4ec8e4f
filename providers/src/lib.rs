//! Provisio providers: the embedded filesystem provider, the DNS provider with its
//! zone-file backend, the directory provider with its embedded backend and the Error
//! Provider, plus [`embedded_registry`] that wires them for
//! the quick start.

mod common;
pub mod directory;
pub mod dns;
pub mod error;
pub mod exec;
pub mod filesystem;

use provisio_engine::provider::ProviderRegistry;
use std::path::Path;
use std::sync::Arc;

/// Errors building the embedded registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The filesystem provider root could not be opened.
    #[error(transparent)]
    Filesystem(#[from] filesystem::FilesystemError),
    /// The zone directory could not be opened.
    #[error(transparent)]
    Dns(#[from] dns::DnsError),
}

/// The providers that need no server: `Filesystem` rooted at `<data_dir>/files`, `DNS`
/// writing zone files to `<data_dir>/zones`, `Active Directory` (the embedded directory
/// under `DC=provisio,DC=local`, in the engine's provider state) and `Error` (namespace
/// `Error Provider`).
pub fn embedded_registry(data_dir: &Path) -> Result<ProviderRegistry, RegistryError> {
    let mut registry = ProviderRegistry::new();
    registry.register(Arc::new(filesystem::FilesystemProvider::new(
        data_dir.join("files"),
    )?));
    registry.register(Arc::new(dns::DnsProvider::zonefile(
        data_dir.join("zones"),
    )?));
    registry.register(Arc::new(
        directory::DirectoryProvider::embedded(
            directory::Dn::parse(directory::DEFAULT_BASE_DN).expect("the default base DN parses"),
        )
        .expect("the default base DN is not empty"),
    ));
    registry.register(Arc::new(error::ErrorProvider::new()));
    Ok(registry)
}
