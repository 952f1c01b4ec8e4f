//! Out-of-process providers: any program that speaks the exec-provider JSON-lines protocol
//! on stdin/stdout can serve procedures (see `docs/providers/exec.md`).
//!
//! [`ExecProvider::spawn`] starts the program, asks it to `describe` its procedures, then
//! forwards every [`Provider`] call as one request line and waits for one response line.
//! Calls to one child are serialized. A call that times out, or a child that crashes,
//! closes its stdout or writes something that is not a well-formed response, fails the
//! call with an error naming the provider; the child is killed and restarted lazily on
//! the next call. A timeout, a crash or a broken pipe after the request line was written
//! leaves the call in doubt ([`ProviderError::InDoubt`]: the child may have applied it
//! before it died), and the engine settles it through `recover` (same idempotency key)
//! before it retries or rolls back; the same failures before the request was written are
//! transient (nothing was sent). Protocol violations are permanent.
//!
//! A child that keeps failing is not restarted forever: after
//! [`ExecConfig::max_restarts`] restarts within [`ExecConfig::restart_window`], calls fail
//! with a permanent error naming the provider and its last failure until the window has
//! room again. Killing a child kills its whole process group (see `child`).
//!
//! With [`ExecConfig::state_dir`] set, every child is recorded there (synced) before it is
//! sent a request, and [`ExecProvider::spawn`] first kills the children an earlier,
//! killed engine left running, so that no orphan can apply a call after recovery asked
//! `recover` about it (see `orphans`).

mod child;
mod orphans;
pub mod protocol;

use async_trait::async_trait;
use child::{describe_exit, quote_line, Launch, ReadError, Running};
use protocol::{Method, Reply, ShapeError};
use provisio_engine::data::Element;
use provisio_engine::provider::{
    Call, CallContext, Done, Outcome, Preview, ProcedureSpec, Provider, ProviderError,
};
use serde_json::{Map, Value};
use std::collections::VecDeque;
use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::RwLock;
use std::time::{Duration, Instant};

pub use child::MAX_LINE;

/// How to start and talk to an out-of-process provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecConfig {
    /// The provider id (`providerSource` in a namespace), e.g. `Ledger`.
    pub name: String,
    /// Program and arguments, e.g. `["python3", "ledger.py"]`. The program is looked up on
    /// `PATH` like a shell would.
    pub command: Vec<String>,
    /// Environment variables added to (or overriding) the engine's environment.
    pub env: Vec<(String, String)>,
    /// Working directory of the child; the engine's own when `None`.
    pub working_dir: Option<PathBuf>,
    /// Longest a call (request written → response read) may take.
    pub call_timeout: Duration,
    /// Longest the start (spawn + `describe`) may take.
    pub start_timeout: Duration,
    /// How many times the child may be restarted within [`ExecConfig::restart_window`];
    /// one more restart is refused with a permanent error (a crash-looping program).
    pub max_restarts: u32,
    /// The sliding window [`ExecConfig::max_restarts`] counts restarts in.
    pub restart_window: Duration,
    /// The provider's own state folder, where each running child is recorded (process
    /// group and start time) so that the next start kills the children a killed engine
    /// left behind. `None` records nothing (orphans are then not found). Use one folder
    /// per provider.
    pub state_dir: Option<PathBuf>,
}

impl ExecConfig {
    /// A config with no extra environment, the engine's working directory, a 30 s call
    /// timeout, a 10 s start timeout and at most 5 restarts a minute.
    pub fn new<S: Into<String>>(
        name: impl Into<String>,
        command: impl IntoIterator<Item = S>,
    ) -> Self {
        ExecConfig {
            name: name.into(),
            command: command.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            working_dir: None,
            call_timeout: Duration::from_secs(30),
            start_timeout: Duration::from_secs(10),
            max_restarts: 5,
            restart_window: Duration::from_secs(60),
            state_dir: None,
        }
    }
}

/// Starting an out-of-process provider failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The config cannot work (empty name or command, zero timeout).
    #[error("exec provider config: {0}")]
    Config(String),
    /// The program could not be started.
    #[error("cannot start provider `{name}` (`{program}`): {source}")]
    Spawn {
        /// Provider name.
        name: String,
        /// The program that failed to start.
        program: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The state folder could not record a child, or a child an earlier engine left
    /// behind could not be killed.
    #[error("provider `{name}`: state folder `{}`: {source}", dir.display())]
    State {
        /// Provider name.
        name: String,
        /// The state folder.
        dir: PathBuf,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// The program started but the `describe` handshake failed (no answer in time, exit,
    /// garbage, or a malformed procedure list). The message names the provider.
    #[error("{message}")]
    Handshake {
        /// Provider name.
        name: String,
        /// What happened.
        message: String,
        /// Whether trying again later might help (timeout or crash, not garbage).
        transient: bool,
    },
}

impl ExecError {
    /// The error a call reports when a lazy restart fails this way.
    fn into_provider_error(self) -> ProviderError {
        let transient = match &self {
            ExecError::Config(_) => false,
            ExecError::Spawn { source, .. } => !matches!(
                source.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
            ),
            ExecError::Handshake { transient, .. } => *transient,
            ExecError::State { .. } => true,
        };
        let message = format!("restarting failed: {self}");
        if transient {
            ProviderError::transient(message)
        } else {
            ProviderError::permanent(message)
        }
    }
}

/// Why an exchange with the child failed; the child is killed afterwards.
#[derive(Debug)]
enum Failure {
    /// No complete response within the timeout.
    Timeout(Duration),
    /// Stdout ended or stdin broke; with the exit status when the child exited.
    Ended(Option<ExitStatus>),
    /// A pipe error other than a closed pipe.
    Io(io::Error),
    /// A line over [`MAX_LINE`].
    TooLong,
    /// A line that is not UTF-8.
    NotUtf8(Vec<u8>),
    /// A line that is not JSON.
    NotJson(Vec<u8>),
    /// JSON of the wrong shape or with the wrong id.
    Shape(ShapeError),
}

impl Failure {
    fn transient(&self) -> bool {
        matches!(
            self,
            Failure::Timeout(_) | Failure::Ended(_) | Failure::Io(_)
        )
    }

    fn message(&self, name: &str, method: Method) -> String {
        let m = method.as_str();
        match self {
            Failure::Timeout(d) => {
                format!("provider `{name}` did not answer {m} within {d:?}; it was killed")
            }
            Failure::Ended(Some(status)) => {
                format!("provider `{name}` {} during {m}", describe_exit(*status))
            }
            Failure::Ended(None) => format!("provider `{name}` closed its stdout during {m}"),
            Failure::Io(e) => format!("provider `{name}`: pipe error during {m}: {e}"),
            Failure::TooLong => format!(
                "provider `{name}` sent a line longer than {} MiB during {m}",
                MAX_LINE / (1024 * 1024)
            ),
            Failure::NotUtf8(line) => format!(
                "provider `{name}` sent a line that is not UTF-8 during {m}: `{}`",
                quote_line(line)
            ),
            Failure::NotJson(line) => format!(
                "provider `{name}` sent a line that is not JSON during {m}: `{}`",
                quote_line(line)
            ),
            Failure::Shape(e) => format!("provider `{name}` sent {} during {m}", e.0),
        }
    }

    fn into_provider_error(self, name: &str, method: Method) -> ProviderError {
        let message = self.message(name, method);
        if self.transient() {
            ProviderError::transient(message)
        } else {
            ProviderError::permanent(message)
        }
    }
}

/// The child process slot, behind the per-provider call lock.
#[derive(Debug, Default)]
struct State {
    /// The running child; `None` after a failure until the next call restarts it.
    running: Option<Running>,
    /// Next request id (starts at 1, never reused for the life of the provider).
    next_id: u64,
    /// Set while a request is on the wire. Still set when the lock is next taken means the
    /// caller's future was dropped mid-call: the pipe is out of sync, so the child goes.
    in_flight: bool,
    /// When the child was restarted, within the restart window (oldest first).
    restarts: VecDeque<Instant>,
    /// Why the child last had to go (for the error once restarts are exhausted).
    last_failure: Option<String>,
}

impl State {
    fn take_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

/// A provider served by a child process over the exec-provider protocol.
#[derive(Debug)]
pub struct ExecProvider {
    launch: Launch,
    call_timeout: Duration,
    start_timeout: Duration,
    max_restarts: u32,
    restart_window: Duration,
    state_dir: Option<PathBuf>,
    state: tokio::sync::Mutex<State>,
    procedures: RwLock<Vec<ProcedureSpec>>,
}

impl ExecProvider {
    /// Starts the program and performs the `describe` handshake within `start_timeout`.
    pub async fn spawn(config: ExecConfig) -> Result<ExecProvider, ExecError> {
        if config.name.trim().is_empty() {
            return Err(ExecError::Config("the provider name is empty".into()));
        }
        if config.command.first().is_none_or(|p| p.is_empty()) {
            return Err(ExecError::Config(format!(
                "provider `{}` has no command to run",
                config.name
            )));
        }
        if config.restart_window.is_zero() {
            return Err(ExecError::Config(format!(
                "provider `{}`: restart_window must be more than zero",
                config.name
            )));
        }
        if config.call_timeout.is_zero() || config.start_timeout.is_zero() {
            return Err(ExecError::Config(format!(
                "provider `{}`: call_timeout and start_timeout must be more than zero",
                config.name
            )));
        }
        let provider = ExecProvider {
            launch: Launch {
                name: config.name,
                command: config.command,
                env: config.env,
                working_dir: config.working_dir,
            },
            call_timeout: config.call_timeout,
            start_timeout: config.start_timeout,
            max_restarts: config.max_restarts,
            restart_window: config.restart_window,
            state_dir: config.state_dir,
            state: tokio::sync::Mutex::new(State::default()),
            procedures: RwLock::new(Vec::new()),
        };
        provider.kill_orphans().await?;
        {
            let mut state = provider.state.lock().await;
            let (running, procedures) = provider.start_child(&mut state).await?;
            state.running = Some(running);
            provider.set_procedures(procedures);
        }
        Ok(provider)
    }

    /// The OS process id of the child, `None` while it is not running (after a failure,
    /// until the next call restarts it).
    pub async fn process_id(&self) -> Option<u32> {
        self.state
            .lock()
            .await
            .running
            .as_ref()
            .and_then(Running::pid)
    }

    /// Stops the child: closes its stdin, waits up to `grace` for it to exit, then kills
    /// it. A later call starts it again.
    pub async fn shutdown(&self, grace: Duration) {
        let mut state = self.state.lock().await;
        state.in_flight = false;
        if let Some(running) = state.running.take() {
            running.shutdown(grace).await;
        }
    }

    /// Kills the children recorded in the state folder by an earlier engine process that
    /// are still running (it was killed and could not stop them), and waits until they
    /// are gone.
    async fn kill_orphans(&self) -> Result<(), ExecError> {
        let Some(dir) = self.state_dir.clone() else {
            return Ok(());
        };
        let name = self.launch.name.clone();
        let found = tokio::task::spawn_blocking({
            let dir = dir.clone();
            move || orphans::kill_orphans(&dir)
        })
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)));
        match found {
            Ok(killed) => {
                for child in killed {
                    tracing::warn!(
                        provider = %name,
                        pid = child.pgid,
                        "killed a child an earlier engine process left running (it was killed \
                         mid-call); recovery settles its call"
                    );
                }
                Ok(())
            }
            Err(source) => Err(ExecError::State { name, dir, source }),
        }
    }

    fn name_str(&self) -> &str {
        &self.launch.name
    }

    fn set_procedures(&self, procedures: Vec<ProcedureSpec>) {
        let mut slot = self.procedures.write().unwrap_or_else(|e| e.into_inner());
        if !slot.is_empty() && *slot != procedures {
            tracing::warn!(
                provider = %self.launch.name,
                "the restarted provider describes different procedures; using the new list"
            );
        }
        *slot = procedures;
    }

    /// Spawns the child and runs `describe`.
    async fn start_child(
        &self,
        state: &mut State,
    ) -> Result<(Running, Vec<ProcedureSpec>), ExecError> {
        let name = &self.launch.name;
        let mut running = Running::start(&self.launch).map_err(|source| ExecError::Spawn {
            name: name.clone(),
            program: self.launch.command.first().cloned().unwrap_or_default(),
            source,
        })?;
        tracing::debug!(provider = %name, pid = running.pid(), "started exec provider");
        if let Some(dir) = &self.state_dir {
            // Durably, before the child is sent anything: a killed engine leaves it behind.
            if let Err(source) = running.record(dir) {
                running.kill().await;
                return Err(ExecError::State {
                    name: name.clone(),
                    dir: dir.clone(),
                    source,
                });
            }
        }
        let id = state.take_id();
        let request = protocol::describe_request(id);
        let handshake = |message: String, transient: bool| ExecError::Handshake {
            name: name.clone(),
            message,
            transient,
        };
        match exchange(&mut running, &request, id, self.start_timeout, &mut false).await {
            Ok(Reply::Ok(map)) => match protocol::procedures(&map) {
                Ok(procedures) => Ok((running, procedures)),
                Err(e) => {
                    running.kill().await;
                    Err(handshake(
                        format!(
                            "provider `{name}` sent a malformed describe answer: {}",
                            e.0
                        ),
                        false,
                    ))
                }
            },
            Ok(Reply::Err(e)) => {
                running.kill().await;
                let transient = matches!(e, ProviderError::Transient { .. });
                Err(handshake(
                    format!("provider `{name}` answered describe with an error: {e}"),
                    transient,
                ))
            }
            Err(failure) => {
                running.kill().await;
                Err(handshake(
                    failure.message(name, Method::Describe),
                    failure.transient(),
                ))
            }
        }
    }

    /// Sends one request and returns the `ok: true` response object. Starts (or restarts)
    /// the child first when needed.
    async fn request(
        &self,
        method: Method,
        build: impl FnOnce(u64) -> Value,
    ) -> Result<Map<String, Value>, ProviderError> {
        let name = self.name_str();
        let mut state = self.state.lock().await;
        if state.in_flight {
            state.in_flight = false;
            if let Some(running) = state.running.take() {
                tracing::warn!(provider = %name, "a call was abandoned mid-request; restarting the provider");
                running.kill().await;
                state.last_failure = Some("a call was abandoned mid-request".into());
            }
        }
        if let Some(running) = state.running.as_mut() {
            if let Some(status) = running.exited() {
                tracing::warn!(provider = %name, "provider {} while idle; restarting it", describe_exit(status));
                state.running = None;
                state.last_failure = Some(format!("it {} while idle", describe_exit(status)));
            }
        }
        if state.running.is_none() {
            self.count_restart(&mut state)?;
            let started = self.start_child(&mut state).await;
            let (running, procedures) = started.map_err(|e| {
                state.last_failure = Some(format!("restarting failed: {e}"));
                e.into_provider_error()
            })?;
            tracing::info!(provider = %name, pid = running.pid(), "restarted exec provider");
            state.running = Some(running);
            self.set_procedures(procedures);
        }
        let id = state.take_id();
        let request = build(id);
        tracing::debug!(provider = %name, id, method = method.as_str(), "exec provider request");
        state.in_flight = true;
        let mut sent = false;
        let result = match state.running.as_mut() {
            Some(running) => exchange(running, &request, id, self.call_timeout, &mut sent).await,
            None => Err(Failure::Ended(None)),
        };
        state.in_flight = false;
        match result {
            Ok(Reply::Ok(map)) => Ok(map),
            Ok(Reply::Err(e)) => Err(e),
            Err(failure) => {
                if let Some(running) = state.running.take() {
                    running.kill().await;
                }
                let e = if sent && failure.transient() {
                    // The child read the request and may have acted on it before failing.
                    ProviderError::in_doubt(failure.message(name, method))
                } else {
                    failure.into_provider_error(name, method)
                };
                tracing::warn!(provider = %name, "{}; it will be restarted on the next call", e.message());
                state.last_failure = Some(e.message());
                Err(e)
            }
        }
    }

    /// Counts a restart about to happen, or refuses it when the window already holds
    /// `max_restarts` of them (the program keeps failing: more restarts will not help).
    fn count_restart(&self, state: &mut State) -> Result<(), ProviderError> {
        let now = Instant::now();
        while state
            .restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.restart_window)
        {
            state.restarts.pop_front();
        }
        if state.restarts.len() >= self.max_restarts as usize {
            let wait = state
                .restarts
                .front()
                .map(|t| self.restart_window.saturating_sub(now.duration_since(*t)))
                .unwrap_or_default();
            return Err(ProviderError::permanent(format!(
                "provider `{}` is not restarted again: it was restarted {} times within {:?} \
                 and keeps failing (last: {}); fix the program or what it depends on (see its \
                 stderr in the log); calls are refused for another {:.0?}",
                self.launch.name,
                state.restarts.len(),
                self.restart_window,
                state.last_failure.as_deref().unwrap_or("unknown"),
                wait
            )));
        }
        state.restarts.push_back(now);
        Ok(())
    }

    /// Refuses a procedure the provider did not describe.
    fn check_procedure(&self, procedure: &str) -> Result<(), ProviderError> {
        let known = self
            .procedures
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|p| p.name == procedure);
        if known {
            Ok(())
        } else {
            Err(ProviderError::invalid(format!(
                "provider `{}` has no procedure `{procedure}`",
                self.name_str()
            )))
        }
    }

    fn malformed(&self, method: Method, e: ShapeError) -> ProviderError {
        ProviderError::permanent(format!(
            "provider `{}` sent a malformed {} response: {}",
            self.name_str(),
            method.as_str(),
            e.0
        ))
    }

    async fn call_method(
        &self,
        method: Method,
        call: &Call,
    ) -> Result<Map<String, Value>, ProviderError> {
        self.check_procedure(&call.context.procedure)?;
        self.request(method, |id| {
            protocol::call_request(
                id,
                method,
                &call.context,
                &call.provider_context,
                &call.execute_data,
            )
        })
        .await
    }

    async fn done_method(&self, method: Method, done: &Done) -> Result<(), ProviderError> {
        self.check_procedure(&done.context.procedure)?;
        let context: &CallContext = &done.context;
        let provider_context: &Element = &done.provider_context;
        self.request(method, |id| {
            protocol::done_request(
                id,
                method,
                context,
                provider_context,
                &done.undo,
                done.execute_data.as_ref(),
            )
        })
        .await
        .map(|_| ())
    }
}

/// Writes `request` as one line and reads the matching response, all within `timeout`.
/// Sets `sent` once the whole line was written (from then on a failure leaves the
/// request's outcome unknown).
async fn exchange(
    running: &mut Running,
    request: &Value,
    id: u64,
    timeout: Duration,
    sent: &mut bool,
) -> Result<Reply, Failure> {
    let line = serde_json::to_vec(request).map_err(|e| Failure::Io(io::Error::other(e)))?;
    let outcome = tokio::time::timeout(timeout, async {
        if let Err(e) = running.write_line(&line).await {
            return Err(match e.kind() {
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => {
                    Failure::Ended(running.wait_briefly().await)
                }
                _ => Failure::Io(e),
            });
        }
        *sent = true;
        match running.read_line().await {
            Ok(line) => Ok(line),
            Err(ReadError::Eof) => Err(Failure::Ended(running.wait_briefly().await)),
            Err(ReadError::TooLong) => Err(Failure::TooLong),
            Err(ReadError::Io(e)) => Err(Failure::Io(e)),
        }
    })
    .await;
    let line = match outcome {
        Ok(r) => r?,
        Err(_) => return Err(Failure::Timeout(timeout)),
    };
    let text = match std::str::from_utf8(&line) {
        Ok(t) => t,
        Err(_) => return Err(Failure::NotUtf8(line)),
    };
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(_) => return Err(Failure::NotJson(line)),
    };
    protocol::parse_envelope(value, id).map_err(Failure::Shape)
}

#[async_trait]
impl Provider for ExecProvider {
    fn name(&self) -> &str {
        self.name_str()
    }

    fn procedures(&self) -> Vec<ProcedureSpec> {
        self.procedures
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    async fn execute(&self, call: Call) -> Result<Outcome, ProviderError> {
        let map = self.call_method(Method::Execute, &call).await?;
        let execute_data = protocol::execute_data(&map, &call.execute_data)
            .map_err(|e| self.malformed(Method::Execute, e))?;
        let undo = protocol::undo_record(&map).map_err(|e| self.malformed(Method::Execute, e))?;
        Ok(Outcome { execute_data, undo })
    }

    async fn undo(&self, done: Done) -> Result<(), ProviderError> {
        self.done_method(Method::Undo, &done).await
    }

    async fn recover(&self, call: &Call) -> Result<Option<Element>, ProviderError> {
        // E_NOTIMPL stays `Unsupported`: the engine then asks an operator.
        let map = self.call_method(Method::Recover, call).await?;
        protocol::recovered(&map).map_err(|e| self.malformed(Method::Recover, e))
    }

    async fn preview(&self, call: &Call) -> Result<Preview, ProviderError> {
        match self.call_method(Method::Preview, call).await {
            Ok(map) => protocol::preview(&map).map_err(|e| self.malformed(Method::Preview, e)),
            // A provider without preview answers E_NOTIMPL: it cannot tell.
            Err(ProviderError::Unsupported(_)) => Ok(Preview::Unknown),
            Err(e) => Err(e),
        }
    }

    async fn prepare(&self, done: &Done) -> Result<(), ProviderError> {
        self.done_method(Method::Prepare, done).await
    }

    async fn commit(&self, done: &Done) -> Result<(), ProviderError> {
        self.done_method(Method::Commit, done).await
    }
}
