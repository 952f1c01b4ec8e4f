//! Provisio engine: the data tree, namespace and request definitions, the compiler that
//! turns procedures into DAGs, and the executor that runs them through providers.
//!
//! This crate names no concrete provider: providers implement [`provider::Provider`] and are
//! registered in a [`provider::ProviderRegistry`].

pub mod codes;
pub mod compile;
pub mod data;
pub mod exec;
pub mod model;
pub mod provider;
pub mod request;
pub mod response;
pub mod script;
pub mod store;
#[cfg(feature = "test-util")]
pub mod testing;
pub mod txn;
