//! Command-line arguments (clap derive): the doc comments here are `--help`.

use clap::{Args, Parser, Subcommand, ValueEnum};
use provisio_engine::TxnState;
use std::path::PathBuf;

const AFTER_HELP: &str = "\
Examples:
  provisio run workflows/provision-tenant.yaml          run a request, print the response
  provisio plan workflows/provision-tenant.yaml         show what would run, call nothing
  provisio validate namespaces workflows                check every definition and request
  provisio graph 'Hosted Tenant' ProvisionTenant --expand --format mermaid
  provisio namespaces 'Hosted DNS'                      list a namespace's procedures
  provisio tx list                                      transactions in the journal
  provisio script examples/scripts/onboard.rhai         a driver script submitting requests

Exit codes:
  0  committed (or the command succeeded)
  1  a step failed; everything done was rolled back
  2  bad input (syntax, unknown name, access, missing input): nothing ran
  3  a step failed and an undo failed too: the response lists what to fix
  4  the PostgreSQL store was lost mid-run: the transaction stopped unfinished; run
     `provisio recover` once the database is back
  75 another provisio process holds the journal: nothing ran; try again later (--wait-lock)

Configuration (each layer overrides the one before; `provisio config show` prints the result):
  defaults < provisio.toml (--config FILE, PROVISIO_CONFIG, or ./provisio.toml) < PROVISIO_* < flags
  Keys and a full example: docs/configuration.md, provisio.example.toml

Daemon:
  provisio serve                                        HTTP API + job queue (docs/daemon.md)
  provisio submit req.yaml --wait                       submit to it (PROVISIO_SERVER, PROVISIO_TOKEN)
  provisio status ID | provisio jobs | provisio cancel ID
  While a daemon holds the data directory, `run`, `tx` and `recover` go through it
  (its URL is in DATA_DIR/daemon.json; the token from PROVISIO_TOKEN or --token-file).

Environment:
  PROVISIO_CONFIG      configuration file (default: ./provisio.toml when present)
  PROVISIO_NAMESPACES  namespace folder (default: namespaces)
  PROVISIO_DATA_DIR    where the journal and the embedded providers keep their state (default: data)
  PROVISIO_SEAL_KEY    key (64 hex digits) sealing secrets in the journal (default: DATA_DIR/seal.key, created 0600)
  PROVISIO_MAX_PARALLEL, PROVISIO_STEP_TIMEOUT_SECS,
  PROVISIO_STORE       `sled` (default) or postgres://USER:PASSWORD@HOST:PORT/DATABASE (docs/store.md)
  PROVISIO_SEAL_KEY_FILE, PROVISIO_WAIT_LOCK, PROVISIO_CONNECT_RETRY, PROVISIO_FILES_ROOT, PROVISIO_DNS_BACKEND,
  PROVISIO_DNS_ZONE_DIR, PROVISIO_DNS_SERVER, PROVISIO_DNS_KEY_FILE,
  PROVISIO_LISTEN, PROVISIO_WORKERS, PROVISIO_MAX_BODY_BYTES,
  PROVISIO_SHUTDOWN_TIMEOUT                                         the config keys of the same names
  PROVISIO_SERVER, PROVISIO_TOKEN, PROVISIO_TOKEN_FILE, PROVISIO_CACERT
                       the daemon's URL, bearer token (or a file holding it) and (https) certificate
                       for submit/status/jobs/cancel and for commands going through a daemon
  RUST_LOG             log filter, e.g. RUST_LOG=provisio_engine=debug";

/// Provisio: a transactional provisioning workflow engine.
///
/// Requests name a procedure of a namespace (Hosted DNS, Hosted Files, …) and carry data;
/// procedures compile to a DAG of steps that call providers. Every request is one
/// transaction: it commits, or everything it did is undone in reverse order.
#[derive(Debug, Parser)]
#[command(name = "provisio", version, after_help = AFTER_HELP, propagate_version = true)]
pub struct Cli {
    /// Options for every command.
    #[command(flatten)]
    pub global: Global,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Options for every command.
#[derive(Debug, Args)]
pub struct Global {
    /// Configuration file (TOML; see docs/configuration.md). Default: $PROVISIO_CONFIG, else
    /// ./provisio.toml when present, else built-in defaults.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Folder of namespace definitions (.xml, .yaml, .yml, .json), loaded at start.
    /// Overrides `namespaces` in the config and $PROVISIO_NAMESPACES [default: namespaces;
    /// when that folder does not exist, only the providers' built-in namespaces].
    #[arg(long, global = true, value_name = "DIR")]
    pub namespaces: Option<PathBuf>,
    /// Where the journal, the seal key and the embedded providers keep their state (files/,
    /// zones/). Overrides `data_dir` in the config and $PROVISIO_DATA_DIR [default: data].
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// How long to wait when another provisio process holds the journal (e.g. `30s`, `2m`,
    /// `0s`), before giving up with exit code 75. Overrides `journal.wait_lock` and
    /// $PROVISIO_WAIT_LOCK [default: 10s].
    #[arg(long, global = true, value_name = "DURATION")]
    pub wait_lock: Option<crate::config::Wait>,
    /// Where the journal, queue and provider state live: `sled` (embedded, under the data
    /// directory) or `postgres://USER:PASSWORD@HOST:PORT/DATABASE` (docs/store.md; add
    /// `?sslmode=verify-full` for TLS, `&sslrootcert=CA.pem` for a private authority;
    /// prefer the variable or the file for a URL with a password: a flag shows in the
    /// process list). Overrides `store` and $PROVISIO_STORE [default: sled].
    #[arg(long, global = true, value_name = "URL")]
    pub store: Option<String>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// More logs (-v info, -vv debug). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// No progress display.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// The daemon's bearer token, for the client commands and for `run`, `tx`, `recover` and
    /// `script` going through a daemon that holds the data directory (prefer the variable or
    /// --token-file: a flag shows in the process list).
    #[arg(
        long,
        global = true,
        env = "PROVISIO_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// A file holding the daemon's bearer token (its first line), used when no --token /
    /// PROVISIO_TOKEN is given.
    #[arg(long, global = true, env = "PROVISIO_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM certificate(s) to trust for an https:// daemon (its CA, or its own certificate).
    #[arg(long, global = true, env = "PROVISIO_CACERT", value_name = "FILE")]
    pub cacert: Option<PathBuf>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Response and listing format.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum OutputFormat {
    /// MPS-style XML.
    Xml,
    /// YAML.
    Yaml,
    /// JSON.
    Json,
}

/// Graph syntax.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum GraphSyntax {
    /// Graphviz DOT (`| dot -Tsvg > plan.svg`).
    Dot,
    /// Mermaid flowchart (paste into Markdown).
    Mermaid,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a request (XML, YAML or JSON) as one transaction and print the response.
    ///
    /// The response has the request's format unless --output says otherwise. On failure it
    /// carries an error context naming the failing step, namespace, procedure, provider
    /// message and code, and everything already done has been undone.
    #[command(
        after_help = "Examples:\n  provisio run workflows/provision-tenant.yaml --output json\n  provisio run workflows/hosting/initialize-hosting.yaml workflows/hosting/provision-tenant.yaml"
    )]
    Run(RunArgs),
    /// Show what a request would do without calling any provider (a dry run).
    ///
    /// Prints the provider calls in order, grouped in waves that can run in parallel,
    /// with their resolved inputs (secrets masked) and what each provider says would change.
    #[command(after_help = "Example:\n  provisio plan workflows/provision-tenant.yaml")]
    Plan(PlanArgs),
    /// Check namespace files, folders and requests; report every error, not just the first.
    #[command(after_help = "Example:\n  provisio validate namespaces workflows")]
    Validate(ValidateArgs),
    /// Print a procedure's compiled DAG as DOT or Mermaid.
    #[command(
        after_help = "Example:\n  provisio graph 'Hosted DNS' CreateTenantZone --format dot | dot -Tsvg > zone.svg"
    )]
    Graph(GraphArgs),
    /// List namespaces, or one namespace's procedures with access, type and inputs.
    #[command(after_help = "Example:\n  provisio namespaces 'Hosted DNS'")]
    Namespaces(NamespacesArgs),
    /// Inspect transactions in the journal, or continue a failed rollback.
    ///
    /// These commands never create state: without a journal in the data directory they say
    /// so and stop (exit 0 for `list` and `audit`, 2 otherwise).
    #[command(subcommand)]
    Tx(TxCommand),
    /// Finish every transaction a crash left running (also done before each `run`).
    ///
    /// Prints where the state it opens lives; without a journal there is nothing to
    /// recover, and nothing is created.
    Recover,
    /// Remove what providers kept only for undo (deleted folders in `.provisio-trash/`,
    /// deleted zones in `.deleted/`, intent markers, quotas of deleted folders), for
    /// transactions committed or rolled back longer ago than `retention.provider_state`.
    ///
    /// Never touches what a running, rolling-back or rollback_failed transaction may still
    /// need. Once purged, those calls can no longer be undone.
    #[command(after_help = "Example:\n  provisio purge --older-than 7d --dry-run")]
    Purge(PurgeArgs),
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// The store itself (`store` in provisio.toml): bring a PostgreSQL store's schema up to
    /// date.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Run a rhai driver script that submits requests and reads their results.
    ///
    /// The script sees `submit(#{"call": "Namespace/Procedure", data: #{…}})` (or
    /// `submit("Namespace/Procedure", #{…})`), `read_csv("file.csv")` (files inside the
    /// script's folder only, cells trimmed) and `log("…")`; each submitted request is its own
    /// transaction, journaled and recovered like `provisio run`, and its outcome (also
    /// "rejected") goes back to the script. Exits 1 when any request did not commit, naming
    /// them. See docs/scripting.md.
    #[command(after_help = "Example:\n  provisio script examples/scripts/onboard.rhai")]
    Script(ScriptArgs),
    /// Run the daemon: a persistent job queue and an HTTP API (under /v1) in front of the
    /// engine.
    ///
    /// Holds the data directory (journal, queue) for as long as it runs: a second daemon,
    /// or `provisio run` on the same data directory, is refused while it does. At start it
    /// finishes what a crash left running (like `provisio recover`) and takes back the
    /// jobs of the workers that died with it. SIGTERM or Ctrl-C: stop taking jobs, let the
    /// running ones finish (up to --shutdown-timeout), exit 0. Clients authenticate with
    /// bearer tokens from `[[serve.tokens]]` (see docs/daemon.md).
    #[command(
        after_help = "Example:\n  provisio --data-dir /var/lib/provisio serve --listen 127.0.0.1:8750 --workers 8"
    )]
    Serve(ServeArgs),
    /// Run the queued jobs without serving HTTP: with --drain, every job that is due, then
    /// exit (for cron where no daemon runs). Recovers and takes back jobs first, as
    /// `serve` does; refused while a daemon holds the data directory. Also runs the jobs
    /// that `queue` steps of `provisio run` queued (once their transaction committed).
    #[command(after_help = "Example:\n  provisio worker --drain --workers 2")]
    Worker(WorkerArgs),
    /// Submit a request to a running daemon; prints its id (with --wait: its response).
    #[command(
        after_help = "Example:\n  PROVISIO_TOKEN=… provisio submit workflows/provision-tenant.yaml --wait"
    )]
    Submit(SubmitArgs),
    /// A request's state, steps and response, from a running daemon.
    Status(StatusArgs),
    /// List a daemon's requests, newest first; --watch follows their changes.
    #[command(after_help = "Example:\n  provisio jobs --state running --watch")]
    Jobs(JobsArgs),
    /// Cancel a request on a daemon: a queued one never starts, a running one rolls back.
    Cancel(StatusArgs),
    /// Bearer tokens for `[[serve.tokens]]`.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Print a shell completion script (generated from these definitions).
    #[command(
        after_help = "Examples:\n  provisio completions bash > /etc/bash_completion.d/provisio\n  provisio completions zsh > \"${fpath[1]}/_provisio\""
    )]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the JSON Schema (draft 7) of the YAML/JSON namespace or request format, for
    /// editors to validate and complete files (see docs/yaml-syntax.md, "Editor support").
    #[command(
        after_help = "Examples:\n  provisio schema namespace --out schemas/namespace.schema.json\n  provisio schema request > request.schema.json"
    )]
    Schema(SchemaArgs),
    /// Print the man page (roff, generated from these definitions).
    #[command(after_help = "Example:\n  provisio man > /usr/local/share/man/man1/provisio.1")]
    Man,
}

/// Which format's schema.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum SchemaKind {
    /// A namespace file (one namespace, or a list of them).
    Namespace,
    /// A request (one request, or a batch).
    Request,
}

/// `schema` arguments.
#[derive(Debug, Args)]
pub struct SchemaArgs {
    /// The format.
    #[arg(value_enum)]
    pub kind: SchemaKind,
    /// Write it to this file instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// `token` subcommands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print the SHA-256 of a token (read from stdin, one line) for `sha256 = "…"` in
    /// `[[serve.tokens]]`; with --new, make a random token and print both.
    #[command(
        after_help = "Examples:\n  provisio token hash --new\n  printf '%s' \"$TOKEN\" | provisio token hash"
    )]
    Hash {
        /// Make a new random token (printed once: keep it in the client's secret store).
        #[arg(long)]
        new: bool,
    },
}

/// How the client commands reach the daemon.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The daemon's URL.
    #[arg(
        long,
        env = "PROVISIO_SERVER",
        default_value = "http://127.0.0.1:8750",
        value_name = "URL"
    )]
    pub server: String,
}

/// `serve` arguments.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address and port to listen on (overrides serve.listen and $PROVISIO_LISTEN)
    /// [default: 127.0.0.1:8750].
    #[arg(long, value_name = "IP:PORT")]
    pub listen: Option<String>,
    /// Jobs run at once (overrides serve.workers and $PROVISIO_WORKERS) [default: 4].
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Largest request body in bytes (overrides serve.max_body_bytes and
    /// $PROVISIO_MAX_BODY_BYTES) [default: 1048576].
    #[arg(long, value_name = "BYTES")]
    pub max_body_bytes: Option<usize>,
    /// How long running jobs may take to finish after SIGTERM (overrides
    /// serve.shutdown_timeout and $PROVISIO_SHUTDOWN_TIMEOUT) [default: 30s].
    #[arg(long, value_name = "DURATION")]
    pub shutdown_timeout: Option<crate::config::Wait>,
}

/// `worker` arguments.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Run the due jobs, then exit (the only mode for now: required).
    #[arg(long, required = true)]
    pub drain: bool,
    /// Jobs run at once (overrides serve.workers and $PROVISIO_WORKERS) [default: 4].
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
}

/// `submit` arguments.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The request file (.xml, .yaml, .yml, .json).
    pub file: PathBuf,
    /// Follow the request (a progress display fed by its event stream) until it finishes,
    /// then print it with its response; exit as `provisio run` does (0 committed, 1 rolled
    /// back, 3 rollback failed).
    #[arg(long)]
    pub wait: bool,
    /// Submitting the same key again returns the same request instead of a second one.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    /// Higher runs first.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    pub priority: i16,
    /// Requests with the same key (a tenant) run one at a time, in submission order.
    #[arg(long, value_name = "KEY")]
    pub serial_key: Option<String>,
    /// The daemon.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `status` and `cancel` arguments.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The request id (as `submit` printed it).
    pub id: String,
    /// The daemon.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `jobs` arguments.
#[derive(Debug, Args)]
pub struct JobsArgs {
    /// Only requests in this state (held, queued, running, succeeded, failed, dead, cancelled).
    #[arg(long)]
    pub state: Option<String>,
    /// Only requests of this namespace.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Only requests of this `Namespace/Procedure`.
    #[arg(long)]
    pub procedure: Option<String>,
    /// Only requests of this subject.
    #[arg(long)]
    pub subject: Option<String>,
    /// Most requests to list.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Keep watching: after the list, print a line for every request that appears or
    /// changes state (the newest --limit are polled), until Ctrl-C.
    #[arg(long)]
    pub watch: bool,
    /// How often --watch asks the daemon.
    #[arg(long, default_value = "1s", value_name = "DURATION")]
    pub interval: crate::config::Wait,
    /// The daemon.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `script` arguments.
#[derive(Debug, Args)]
pub struct ScriptArgs {
    /// The driver script (.rhai).
    pub file: PathBuf,
    /// Most rhai operations the script may run (its own work, not the requests').
    #[arg(long, default_value_t = 100_000_000, value_name = "N")]
    pub max_operations: u64,
    /// Seconds the script may run, not counting time spent in requests.
    #[arg(long, default_value_t = 600, value_name = "SECONDS")]
    pub timeout: u64,
    /// Largest CSV file `read_csv` reads, in MiB.
    #[arg(long, default_value_t = 16, value_name = "MIB")]
    pub max_csv_mib: u64,
    /// Most memory the script may take for its data, in MiB; a script going past it is
    /// stopped with an error (never in the middle of a request).
    #[arg(long, default_value_t = 1024, value_name = "MIB")]
    pub max_data_mib: u64,
    /// Submit the script's requests to this daemon (`http://127.0.0.1:8750`) instead of
    /// running them in-process; each runs as the token's subject (--token-file,
    /// PROVISIO_TOKEN). Without it, a daemon holding the data directory is used the same way.
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
}

/// `store` subcommands.
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Apply the PostgreSQL store's pending schema migrations and print its schema version,
    /// then exit (every command that opens the store also does this first). Refused, like
    /// every command, while another provisio process holds the store; refused when the
    /// database has a schema from a newer provisio. Nothing to do for sled.
    #[command(after_help = "Example:
  PROVISIO_STORE=postgres://provisio@db.example/provisio provisio store migrate")]
    Migrate,
}

/// `config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration (defaults < file < PROVISIO_* < flags) as TOML,
    /// with where it came from; secrets are never printed.
    #[command(
        after_help = "Example:\n  PROVISIO_DATA_DIR=/var/lib/provisio provisio --config /etc/provisio.toml config show"
    )]
    Show,
}

/// A transaction state on the command line: the engine's [`TxnState`] and its names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateArg(pub TxnState);

/// Every state, as [`ValueEnum`] lists them.
static STATE_ARGS: [StateArg; TxnState::ALL.len()] = {
    let mut out = [StateArg(TxnState::Queued); TxnState::ALL.len()];
    let mut i = 0;
    while i < out.len() {
        out[i] = StateArg(TxnState::ALL[i]);
        i += 1;
    }
    out
};

impl ValueEnum for StateArg {
    fn value_variants<'a>() -> &'a [Self] {
        &STATE_ARGS
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.0.name()))
    }
}

/// `tx` subcommands.
#[derive(Debug, Subcommand)]
pub enum TxCommand {
    /// List transactions, newest first, a page at a time, filtered by state, procedure,
    /// subject and start time. A full page ends with the `--after` that shows the next one.
    #[command(
        after_help = "Examples:\n  provisio tx list --state rollback_failed\n  provisio tx list --procedure 'Hosted Files/CreateFolder' --since 2h --limit 20\n  provisio tx list --subject alice --since 2026-01-01 --until 2026-02-01 --after 0193…"
    )]
    List(ListArgs),
    /// One transaction: state, timing, steps with their inputs, outputs and undo records
    /// (secrets masked or sealed).
    Show {
        /// Transaction id (or a unique prefix).
        id: String,
    },
    /// The raw journal of one transaction, in order (JSON lines).
    Log {
        /// Transaction id (or a unique prefix).
        id: String,
    },
    /// Retry the undos of a rollback_failed transaction after fixing their cause.
    ///
    /// Runs every undo that has not succeeded (provider undos and script steps' undo
    /// scripts alike), asks providers again about calls still in doubt, and skips what an
    /// operator resolved as not applied (`provisio tx resolve`).
    ResumeRollback {
        /// Transaction id (or a unique prefix).
        id: String,
    },
    /// Record what you found about a step of a rollback_failed transaction that recovery
    /// could not settle: a call in doubt, or a call whose undo kept failing.
    ///
    /// `--applied`: its effect exists, and the next `tx resume-rollback` undoes it (for a call
    /// in doubt it asks the provider once more for the call's undo record). `--not-applied`:
    /// there is nothing to undo (it never happened, or you undid it by hand), and resume
    /// skips it. The finding is journaled and audited with who recorded it (the process's
    /// real user). A step that declared no undo needs no resolution; a step that is not in
    /// doubt, an unknown step, or a finished transaction is refused (exit 2).
    #[command(
        after_help = "Example:\n  provisio tx resolve 0190f1c2 dns/zone --not-applied\n  provisio tx resume-rollback 0190f1c2"
    )]
    Resolve {
        /// Transaction id (or a unique prefix).
        id: String,
        /// The step path, as `tx show` lists it (e.g. `dns/zone`, `users/each[2]`).
        step: String,
        /// Its effect exists: resume undoes it.
        #[arg(
            long,
            required_unless_present = "not_applied",
            conflicts_with = "not_applied"
        )]
        applied: bool,
        /// Nothing to undo: resume skips it.
        #[arg(long)]
        not_applied: bool,
    },
    /// The audit log: who ran what, when, with what outcome (JSON lines).
    Audit,
    /// Remove committed and rolled-back transactions past retention (`[retention]` in the
    /// configuration: `transactions`, `max_transactions`), and audit entries past
    /// `retention.audit`. Running, rolling-back and rollback_failed transactions are never
    /// removed, whatever their age. `run` does this too after each request (bounded) unless
    /// `retention.prune_after_run = false`. Afterwards the journal's database is rewritten
    /// to give the space back when its files are over 8 MiB and more than 3x what it holds
    /// (`--compact`: always); it says what the journal folder gave back. Through a running
    /// daemon, that rewrite waits for the daemon's next start.
    #[command(
        after_help = "Examples:\n  provisio tx prune --older-than 30d --dry-run\n  provisio tx prune --keep 10000\n  provisio tx prune --older-than 90d --compact"
    )]
    Prune(PruneArgs),
}

/// `tx list` arguments.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only transactions in this state.
    #[arg(long, value_name = "STATE")]
    pub state: Option<StateArg>,
    /// Only transactions of this procedure (`Namespace/Procedure`, as listed).
    #[arg(long, value_name = "NAMESPACE/PROCEDURE")]
    pub procedure: Option<String>,
    /// Only transactions asked for by this subject (the `who` of the listing and the audit).
    #[arg(long, value_name = "WHO")]
    pub subject: Option<String>,
    /// Only transactions started at or after this time: RFC 3339 (`2026-01-31T12:00:00Z`,
    /// `2026-01-31`) or a duration ago (`2h`, `7d`).
    #[arg(long, value_name = "TIME")]
    pub since: Option<TimeArg>,
    /// Only transactions started before this time (same forms as --since).
    #[arg(long, value_name = "TIME")]
    pub until: Option<TimeArg>,
    /// At most this many transactions.
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub limit: usize,
    /// Continue after this transaction (the id a full page ends with).
    #[arg(long, value_name = "ID")]
    pub after: Option<String>,
}

/// `tx prune` arguments.
#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Remove those that finished longer ago than this (`30d`, `12h`, `forever`); overrides
    /// `retention.transactions`.
    #[arg(long, value_name = "DURATION")]
    pub older_than: Option<crate::config::Keep>,
    /// Keep at most this many, the newest; overrides `retention.max_transactions`.
    #[arg(long, value_name = "N")]
    pub keep: Option<usize>,
    /// Print what would be removed; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Rewrite the journal's database afterwards whatever its size. Without it, it is
    /// rewritten only when its files are over 8 MiB and more than 3x what it holds.
    #[arg(long, conflicts_with = "dry_run")]
    pub compact: bool,
}

/// `purge` arguments.
#[derive(Debug, Args)]
pub struct PurgeArgs {
    /// Purge what belongs to transactions that finished longer ago than this (`7d`, `0s`);
    /// overrides `retention.provider_state`.
    #[arg(long, value_name = "DURATION")]
    pub older_than: Option<crate::config::Keep>,
    /// Print what would be removed; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// A point in time on the command line: RFC 3339, a date, or a duration ago; held as ms
/// since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeArg(pub u64);

impl std::str::FromStr for TimeArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let ms = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .unwrap_or(0)
        };
        let date_only = s.len() == 10 && s.as_bytes().get(4) == Some(&b'-');
        let stamp = if date_only {
            format!("{s}T00:00:00Z")
        } else {
            s.to_string()
        };
        if let Ok(t) = humantime::parse_rfc3339_weak(stamp.trim_end_matches('Z')) {
            return Ok(TimeArg(ms(t)));
        }
        if let Ok(d) = humantime::parse_duration(s) {
            let now = std::time::SystemTime::now();
            return Ok(TimeArg(ms(now
                .checked_sub(d)
                .unwrap_or(std::time::UNIX_EPOCH))));
        }
        Err(format!(
            "{s:?} is not a time; write an RFC 3339 time (\"2026-01-31T12:00:00Z\"), a date (\"2026-01-31\", UTC) or a duration ago (\"2h\", \"7d\")"
        ))
    }
}

/// `run` arguments.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The request file (.xml, .yaml, .yml, .json); `-` reads YAML/JSON/XML from stdin.
    /// A batch request (several data items) runs one transaction per item, one after
    /// another; exit 1 when any item rolled back, and the response lists every item.
    pub file: PathBuf,
    /// More request files, run after the first one, in order, each as its own request (its
    /// own transaction and response); the first that does not commit stops the run and its
    /// exit code is the command's. With `--ephemeral` each starts from empty provider state.
    #[arg(value_name = "MORE")]
    pub more: Vec<PathBuf>,
    /// Response format (default: the request's own).
    #[arg(long, short, value_enum)]
    pub output: Option<OutputFormat>,
    /// Most provider calls in flight at once (overrides engine.max_parallel) [default: 16].
    #[arg(long, value_name = "N")]
    pub max_parallel: Option<usize>,
    /// Seconds a provider call may take before its step fails (overrides
    /// engine.step_timeout_secs) [default: 300].
    #[arg(long, value_name = "SECONDS")]
    pub step_timeout: Option<u64>,
    /// Keep no journal (no crash recovery, no `tx` history; provider state lives in memory
    /// and is gone when the run ends): for throwaway experiments.
    #[arg(long)]
    pub ephemeral: bool,
}

/// `plan` arguments.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The request file.
    pub file: PathBuf,
    /// Print the plan as JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Exit 0 when there is nothing to do, 2 when the run would change something, 1 when
    /// it would fail (or the request is bad). Without it: 1 when a failure is already
    /// visible, 2 for a bad request, 0 otherwise.
    #[arg(long)]
    pub detailed_exitcode: bool,
}

/// `validate` arguments.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Files or folders: namespace definitions and requests (told apart by their root).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

/// `graph` arguments.
#[derive(Debug, Args)]
pub struct GraphArgs {
    /// Namespace name, e.g. 'Hosted DNS'.
    pub namespace: String,
    /// Procedure name.
    pub procedure: String,
    /// Output syntax.
    #[arg(long, value_enum, default_value_t = GraphSyntax::Dot)]
    pub format: GraphSyntax,
    /// Draw the steps of called procedures inside clusters.
    #[arg(long)]
    pub expand: bool,
}

/// `namespaces` arguments.
#[derive(Debug, Args)]
pub struct NamespacesArgs {
    /// A namespace to describe; without it, all are listed.
    pub name: Option<String>,
    /// Print the namespace (or, without NAME, every namespace from a file) as Markdown:
    /// procedures with access, type, description, inputs and the steps they call (how
    /// docs/namespaces/ is generated).
    #[arg(long)]
    pub markdown: bool,
}

/// Sets up `tracing` on stderr: RUST_LOG, else warn / -v info / -vv debug.
pub fn init_tracing(g: &Global) {
    use tracing_subscriber::EnvFilter;
    let default = match g.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match g.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tx_list_state(args: &[&str]) -> Result<Option<TxnState>, clap::Error> {
        let cli = Cli::try_parse_from([&["provisio", "tx", "list"], args].concat())?;
        match cli.command {
            Command::Tx(TxCommand::List(a)) => Ok(a.state.map(|s| s.0)),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn times_read_as_rfc3339_dates_and_durations_ago() {
        assert_eq!("1970-01-02".parse::<TimeArg>(), Ok(TimeArg(86_400_000)));
        assert_eq!("1970-01-01T00:00:01Z".parse::<TimeArg>(), Ok(TimeArg(1000)));
        let hour_ago: TimeArg = "1h".parse().expect("a duration");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_millis() as u64;
        assert!((now - 3_600_000 - 5_000..=now - 3_600_000).contains(&hour_ago.0));
        let e = "yesterday".parse::<TimeArg>().expect_err("not a time");
        assert!(e.contains("RFC 3339"), "{e}");
    }

    #[test]
    fn tx_list_state_takes_every_state_name_and_lists_them_on_a_typo() {
        for st in TxnState::ALL {
            assert_eq!(tx_list_state(&["--state", st.name()]).ok(), Some(Some(st)));
        }
        assert_eq!(tx_list_state(&[]).ok(), Some(None));
        let e = tx_list_state(&["--state", "rolledback"]).expect_err("a typo is refused");
        let text = e.to_string();
        assert!(text.contains("rolledback"), "{text}");
        assert!(
            text.contains("queued, running, committed, rolling_back, rolled_back, rollback_failed"),
            "{text}"
        );
    }
}
