//! End-to-end tests: the real `provisio` binary on real files, one test binary with modules.

mod batch;
mod bookkeeping;
mod cli;
mod config;
mod container;
mod crash;
mod daemon;
mod daemon_acl;
mod daemon_cli;
mod daemon_queue;
mod directory;
mod directory_ldap;
mod error_provider;
mod files;
mod hostile;
mod large_log;
mod mps_batch;
mod operator;
mod queue_step;
mod retention;
mod script;
mod store;
mod store_postgres;
mod util;
mod xsl;
