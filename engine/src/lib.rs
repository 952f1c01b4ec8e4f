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
//! - running: [`Engine`], [`EngineOptions`] (with its [`RetryOptions`]), [`TxnResult`],
//!   [`TxnState`], [`Event`], and [`JobSink`] / [`QueuedCall`] where MPS `queue` steps put
//!   their jobs ([`Engine::with_jobs`]);
//! - writing a provider: [`Provider`], [`ProviderRegistry`], [`ProcedureSpec`], [`Call`],
//!   [`CallContext`], [`Done`], [`Outcome`], [`Preview`], [`UndoKind`], [`ProviderError`],
//!   the provider's own transactional key-value space [`ProviderState`] (with
//!   [`StateError`]), and the data tree [`Element`] / [`Scalar`];
//! - durability: [`Store`], [`SledStore`], `PgStore` (feature `postgres`), [`MemStore`], [`StoreError`], [`DurableJournal`],
//!   [`SealKey`], provider state as the journal writes it ([`StateChange`], [`StateRecord`],
//!   [`state_key`]),
//!   with [`recover`] and [`resume_rollback`] after a crash; a journal of one's own
//!   implements [`Journal`];
//! - inspecting what the compiler made of a request: [`compile_request`], [`Program`] and the
//!   [`plan`] module (steps, edges, the graph renderer);
//! - scripting: [`ScriptEngine`], [`ScriptLimits`], [`DriverHost`].
//!
//! These modules are public namespaces because their contents belong together and read best
//! qualified: [`codes`] (HRESULT codes), [`data`] (the data tree and its transforms),
//! [`model`] (the definitions as parsed), [`provider`] (everything a provider implements),
//! [`queue`] (the daemon's persistent job queue),
//! [`request`] (parsing and loading definition files), [`response`] (rendering a result) and
//! [`txn`] (the journal's records, recovery, retention, the index). The compiler, the
//! executor, the script host, the store and provider state are private: what they offer is
//! re-exported here, and nothing else of theirs is reachable.

pub mod codes;
mod compile;
pub mod data;
mod exec;
pub mod failpoint;
pub mod model;
pub mod provider;
pub mod queue;
pub mod request;
pub mod response;
mod script;
mod state;
mod store;
#[cfg(feature = "test-util")]
pub mod testing;
pub mod txn;
mod txn_id;

pub use compile::{
    check_catalog, compile_procedure, compile_request, Catalog, CompileError, CompileErrors,
    Limits, Program,
};
pub use data::{Element, Scalar};
pub use exec::{
    Cancel, Engine, EngineOptions, ErrorSource, Event, Failure, JobSink, Journal, JournalError,
    KeptResponse, NoJournal, PlanEntry, QueuedCall, RunControl, RunError, ScriptUndoDone, StepDone,
    StepIntent, StepMarker, TxnResult, TxnStart, TxnState, UndoFailure,
};
pub use exec::{RetryOptions, RetryPolicies, RetryPolicy, RetryUse};
pub use model::{Format, Namespace, Request};
pub use provider::{
    Call, CallContext, Done, IntentBarrier, IntentGate, MarkerSink, Outcome, Preview,
    ProcedureSpec, Provider, ProviderError, ProviderRegistry, UndoKind,
};
pub use request::{parse_namespaces, parse_request, ParseError};
pub use script::{
    CompiledScript, DriverHost, ScriptEngine, ScriptError, ScriptHost, ScriptLimits, ScriptOrigin,
    Vars,
};
pub use state::{state_key, ProviderState, StateChange, StateError, StateRecord};
pub use store::{
    allocated_bytes, prefix_end, Batch, KeyRange, KeyValue, MemStore, SledStore, Space, Store,
    StoreError, Vacuumed,
};
#[cfg(feature = "postgres")]
pub use store::{
    is_postgres_url, latest_schema_version, mask_url, Link, PgOptions, PgStore, SchemaStatus,
    MIGRATIONS, NODE_EXPIRY, NODE_HEARTBEAT,
};
pub use txn::{recover, resume_rollback, DurableJournal, SealKey};
pub use txn_id::{TxnId, TxnIdError};

/// What the compiler makes of a procedure: its steps, the edges between them and why, and a
/// renderer for `provisio graph`.
pub mod plan {
    pub use crate::compile::graph::{render, GraphFormat};
    pub use crate::compile::{
        Body, CompiledProcedure, Dep, ExecNode, Leaf, Plan, PlanNode, ScriptNode, SelectNode,
        TryNode,
    };
}
