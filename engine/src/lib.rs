//! Provisio engine: the data tree, namespace and request definitions, the compiler that
//! turns procedures into DAGs, and the executor that runs them through providers.
//!
//! This crate names no concrete provider: providers implement [`Provider`] and are
//! registered in a [`ProviderRegistry`].
//!
//! # The supported surface
//!
//! What a program embedding the engine needs is re-exported here, at the root:
//!
//! - reading definitions: [`parse_namespaces`], [`parse_request`], [`Format`],
//!   [`Namespace`], [`Request`], [`ParseError`], and the [`Catalog`] they are compiled
//!   against;
//! - running: [`Engine`], [`EngineOptions`], [`TxnResult`], [`TxnState`], [`Event`];
//! - writing a provider: [`Provider`], [`ProviderRegistry`], [`ProcedureSpec`], [`Call`],
//!   [`CallContext`], [`Done`], [`Outcome`], [`Preview`], [`UndoKind`], [`ProviderError`],
//!   and the data tree [`Element`] / [`Scalar`];
//! - durability: [`Store`], [`SledStore`], [`StoreError`], [`DurableJournal`], [`SealKey`],
//!   with [`recover`] and [`resume_rollback`] after a crash.
//!
//! The modules stay public for the finer parts (the journal's record types, the data-tree
//! transforms, the script host, the error codes in [`codes`]); everything else is private
//! to the crate.

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
mod txn_id;

pub use compile::Catalog;
pub use data::{Element, Scalar};
pub use exec::{Engine, EngineOptions, Event, TxnResult, TxnState};
pub use model::{Format, Namespace, Request};
pub use provider::{
    Call, CallContext, Done, Outcome, Preview, ProcedureSpec, Provider, ProviderError,
    ProviderRegistry, UndoKind,
};
pub use request::{parse_namespaces, parse_request, ParseError};
pub use store::{SledStore, Store, StoreError};
pub use txn::{recover, resume_rollback, DurableJournal, SealKey};
pub use txn_id::{TxnId, TxnIdError};
