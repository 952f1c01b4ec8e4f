//! Provisio providers: the embedded filesystem provider, the DNS provider with its
//! zone-file backend, the directory provider with its embedded backend, the Error Provider
//! and the bookkeeping providers (Exchange 2007 Resource Manager, Managed Plans), plus
//! [`embedded_registry`] that wires them for the quick start.

mod bookkeeping;
mod common;
pub mod directory;
pub mod dns;
pub mod error;
// The mail provider (Exchange 2007 Provider; issue 16).
pub mod exchange;
pub mod exec;
pub mod filesystem;
// Bookkeeping providers (records only in provider state; issue 16).
pub mod plans;
pub mod resource_manager;

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
/// under `DC=provisio,DC=local`, in the engine's provider state), `Error` (namespace
/// `Error Provider`), and the bookkeeping providers that keep their records in provider
/// state: `ExchangeResourceManager` (namespace `Exchange 2007 Resource Manager`) and
/// `ManagedPlans` (namespace `Managed Plans`).
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
    register_bookkeeping(&mut registry);
    Ok(registry)
}

/// Registers the providers that keep their records only in provider state and need no
/// configuration: the Exchange 2007 Resource Manager and Managed Plans.
pub fn register_bookkeeping(registry: &mut ProviderRegistry) {
    registry.register(Arc::new(resource_manager::ResourceManagerProvider::new()));
    registry.register(Arc::new(plans::PlansProvider::new()));
}
