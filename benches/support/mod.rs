//! Shared benchmark workloads: engines over the in-process `RecordingProvider` (plus a
//! provider that blocks forever), generated procedures and documents, and the issue-3
//! transaction workloads used by both `benches/txn.rs` and `examples/bench.rs`.
#![allow(dead_code)]

use anyhow::{anyhow, Context as _, Result};
use async_trait::async_trait;
use provisio_engine::data::Element;
use provisio_engine::model::{
    Access, CallTarget, ExecuteStep, Format, Namespace, Ordering, Procedure, Request,
    RequestTarget, SourceRef, Step,
};
use provisio_engine::provider::{
    Call, Done, Outcome, ProcedureSpec, Provider, ProviderError, ProviderRegistry, UndoKind,
};
use provisio_engine::request::parse_namespaces;
use provisio_engine::testing::RecordingProvider;
use provisio_engine::txn::DurableJournal;
use provisio_engine::Catalog;
use provisio_engine::SledStore;
use provisio_engine::{Engine, EngineOptions, Journal, RetryOptions, TxnResult, TxnState};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The namespace of generated benchmark procedures.
pub const NS: &str = "Bench";

/// A provider whose only procedure, `Block`, counts its callers and never returns
/// (stands for a slow real system; recovery treats its in-doubt calls as not applied).
#[derive(Debug, Default)]
pub struct BlockProvider {
    /// Calls currently blocked.
    pub entered: AtomicUsize,
}

#[async_trait]
impl Provider for BlockProvider {
    fn name(&self) -> &str {
        "Blk"
    }

    fn procedures(&self) -> Vec<ProcedureSpec> {
        vec![ProcedureSpec {
            name: "Block".into(),
            kind: provisio_engine::model::ProcKind::Write,
            undo: UndoKind::Nothing,
            description: "blocks forever".into(),
            inputs: Vec::new(),
        }]
    }

    async fn execute(&self, _call: Call) -> Result<Outcome, ProviderError> {
        self.entered.fetch_add(1, AtomicOrdering::SeqCst);
        futures::future::pending::<()>().await;
        Err(ProviderError::permanent("unreachable"))
    }

    async fn undo(&self, _done: Done) -> Result<(), ProviderError> {
        Ok(())
    }

    async fn recover(&self, _call: &Call) -> Result<Option<Element>, ProviderError> {
        Ok(None)
    }
}

/// An engine with the providers `Rec` (RecordingProvider) and `Blk` (BlockProvider).
pub struct Env {
    pub engine: Engine,
    pub rec: RecordingProvider,
    pub block: Arc<BlockProvider>,
}

/// Options for benchmarks: defaults, but fast retries.
pub fn options() -> EngineOptions {
    EngineOptions {
        retry: RetryOptions::default()
            .with_intervals(Duration::from_millis(1), Duration::from_millis(1)),
        ..EngineOptions::default()
    }
}

/// Builds an engine over `namespaces`, optionally journaling to `journal`.
pub fn env(namespaces: Vec<Namespace>, journal: Option<Arc<dyn Journal>>) -> Result<Env> {
    let rec = RecordingProvider::new("Rec");
    let block = Arc::new(BlockProvider::default());
    let mut registry = ProviderRegistry::new();
    registry.register(Arc::new(rec.clone()));
    registry.register(block.clone());
    let catalog =
        Catalog::new(namespaces, &registry).map_err(|e| anyhow!("catalog errors: {e:?}"))?;
    let mut engine = Engine::new(catalog, registry, options());
    if let Some(j) = journal {
        engine = engine.with_journal(j);
    }
    Ok(Env { engine, rec, block })
}

/// A step calling `Rec Provider/Noop` (no inputs, nothing to undo).
pub fn noop_step(i: usize, needs: Vec<String>) -> Step {
    Step::Execute(ExecuteStep {
        id: format!("s{i}"),
        call: Some(CallTarget {
            namespace: "Rec Provider".into(),
            procedure: "Noop".into(),
        }),
        for_each: Vec::new(),
        when: Vec::new(),
        repeat: None,
        execute_data: Element::new("executeData"),
        before: Vec::new(),
        after: Vec::new(),
        needs,
        source_ref: SourceRef::default(),
        sensitive: None,
        impersonate: Default::default(),
        pass_credentials: false,
        queue: None,
    })
}

/// A public procedure of `n` no-op steps: a chain (`sequential`) or a flat fan-out.
pub fn noop_procedure(name: &str, n: usize, sequential: bool) -> Procedure {
    let mut p = Procedure::new(name);
    p.access = Access::Public;
    p.ordering = if sequential {
        Ordering::Sequential
    } else {
        Ordering::Parallel
    };
    p.steps = (0..n).map(|i| noop_step(i, Vec::new())).collect();
    p
}

/// The benchmark namespace holding `procedures`.
pub fn namespace(procedures: Vec<Procedure>) -> Namespace {
    Namespace {
        name: NS.into(),
        description: None,
        provider: None,
        provider_context: Element::new("providerContext"),
        read_only: false,
        procedures,
        source_ref: SourceRef::default(),
    }
}

/// A simple request calling `Bench/<procedure>` with `data`.
pub fn request(procedure: &str, data: Element) -> Request {
    Request {
        target: RequestTarget::Call(CallTarget {
            namespace: NS.into(),
            procedure: procedure.into(),
        }),
        data,
        context: Element::new("context"),
        format: Format::Yaml,
        source_ref: SourceRef::default(),
    }
}

/// `<data><p>{prefix}</p></data>`.
pub fn data_p(prefix: &str) -> Element {
    let mut d = Element::new("data");
    d.push(Element::with_text("p", prefix));
    d
}

/// YAML of a namespace with one procedure of `n` no-op steps (for the YAML compile bench).
pub fn noop_yaml(name: &str, n: usize, sequential: bool) -> String {
    let mut s = format!(
        "namespace: {NS}\nprocedures:\n  {name}:\n    access: public\n    parallel: {}\n    steps:\n",
        !sequential
    );
    for i in 0..n {
        s.push_str(&format!("      s{i}: {{ call: Rec Provider/Noop }}\n"));
    }
    s
}

/// An XML request of about `target_bytes`: `<request namespace procedure>` with a data
/// section of many small records (attributes, text, entities), like a bulk DNS request.
pub fn xml_request(target_bytes: usize) -> String {
    let mut s = String::with_capacity(target_bytes + 4096);
    s.push_str("<?xml version=\"1.0\"?>\n<request namespace=\"Hosted DNS\" procedure=\"CreateTenantZone\">\n  <data>\n    <zoneName>contoso.example</zoneName>\n    <records>\n");
    let mut i = 0usize;
    while s.len() < target_bytes {
        s.push_str(&format!(
            "      <record type=\"TXT\" ttl=\"3600\"><name>host{i}.contoso.example</name><value>v=spf1 include:_spf.example &amp; -all {i}</value><owner>tenant-{}</owner></record>\n",
            i % 97
        ));
        i += 1;
    }
    s.push_str("    </records>\n  </data>\n  <context><clientContext clientTransactionId=\"42\"/></context>\n</request>\n");
    s
}

// ---------------------------------------------------------------------------------------
// Issue 3: transactions with a durable journal

/// The YAML namespace of the issue-3 workloads.
pub fn txn_namespace_yaml() -> String {
    let mut s = String::from("namespace: Bench\nprocedures:\n");
    s.push_str("  Seq40:\n    access: public\n    parallel: false\n    steps:\n");
    for i in 0..40 {
        s.push_str(&format!("      s{i}: {{ call: Rec Provider/Noop }}\n"));
    }
    s.push_str("  Five:\n    access: public\n    parallel: false\n    steps:\n");
    for i in 0..5 {
        s.push_str(&format!("      s{i}: {{ call: Rec Provider/Noop }}\n"));
    }
    // Five no-op reads (the daemon benchmark's steps are reads: their intents are not
    // synced before the call, so a transaction of them syncs once).
    s.push_str("  FiveRead:\n    access: public\n    parallel: false\n    steps:\n");
    for i in 0..5 {
        s.push_str(&format!("      s{i}: {{ call: Rec Provider/Echo }}\n"));
    }
    s.push_str(
        r#"  Fail4:
    access: public
    parallel: false
    steps:
      s1: { call: Rec Provider/Create, with: { name: "{{ data.p }}-1" } }
      s2: { call: Rec Provider/Create, with: { name: "{{ data.p }}-2" } }
      s3: { call: Rec Provider/Create, with: { name: "{{ data.p }}-3" } }
      s4: { call: Rec Provider/Fail, with: { message: "step 4 fails" } }
      s5: { call: Rec Provider/Noop }
  Stuck:
    access: public
    parallel: false
    steps:
      s1: { call: Rec Provider/Create, with: { name: "{{ data.p }}-1" } }
      s2: { call: Rec Provider/Noop }
      s3: { call: Blk Provider/Block }
"#,
    );
    s
}

/// The issue-3 namespaces.
pub fn txn_namespaces() -> Result<Vec<Namespace>> {
    parse_namespaces(&txn_namespace_yaml(), "bench.yaml", Format::Yaml)
        .map_err(|e| anyhow!("bench namespace does not parse: {e:?}"))
}

/// A durable journal on a fresh sled store in `dir`.
pub fn durable(dir: &Path) -> Result<Arc<DurableJournal>> {
    let store = SledStore::open(dir).map_err(|e| anyhow!("{e}"))?;
    Ok(Arc::new(DurableJournal::new(
        Arc::new(store),
        None,
        "bench",
    )))
}

/// An engine journaling to a new store in `dir`.
pub fn durable_env(dir: &Path) -> Result<(Env, Arc<DurableJournal>)> {
    let journal = durable(dir)?;
    let env = env(txn_namespaces()?, Some(journal.clone()))?;
    Ok((env, journal))
}

/// Runs a request and checks its final state.
pub async fn run_expect(engine: &Engine, req: &Request, want: TxnState) -> Result<TxnResult> {
    let r = engine
        .run(req)
        .await
        .map_err(|e| anyhow!("request does not compile: {e}"))?;
    if r.state != want {
        return Err(anyhow!(
            "expected {want}, got {} ({:?}; journal {:?})",
            r.state,
            r.failure,
            r.journal_error
        ));
    }
    Ok(r)
}

/// Runs `total` requests of `procedure`, `in_flight` at a time (spawned tasks); returns the
/// wall time.
pub async fn throughput(
    engine: &Engine,
    procedure: &str,
    total: usize,
    in_flight: usize,
) -> Result<Duration> {
    let next = Arc::new(AtomicUsize::new(0));
    let req = Arc::new(request(procedure, Element::new("data")));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..in_flight {
        let engine = engine.clone();
        let next = next.clone();
        let req = req.clone();
        tasks.spawn(async move {
            while next.fetch_add(1, AtomicOrdering::Relaxed) < total {
                run_expect(&engine, &req, TxnState::Committed).await?;
            }
            Ok::<(), anyhow::Error>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.context("worker task")??;
    }
    Ok(start.elapsed())
}

/// Resident set size of this process in bytes (Linux `/proc/self/statm`).
pub fn rss_bytes() -> Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow!("statm has no rss"))?
        .parse()?;
    Ok(pages * 4096)
}

/// Result of [`stuck_transactions`].
pub struct Stuck {
    /// RSS growth per in-flight transaction, in bytes.
    pub rss_per_txn: f64,
    /// Time until all were blocked.
    pub start_time: Duration,
}

/// Starts `n` transactions of `Bench/Stuck` (Create, Noop, then a call that never
/// returns) journaling into `dir`, waits until all are blocked in the provider, measures
/// RSS growth, then abandons them (tasks aborted, store closed) as a crash would: every
/// transaction stays `running` in the journal with an in-doubt step.
pub async fn stuck_transactions(dir: &Path, n: usize) -> Result<Stuck> {
    stuck_transactions_with(dir, n, true).await
}

/// [`stuck_transactions`], with the durable journal or without any (the engine's own share
/// of the memory).
pub async fn stuck_transactions_with(dir: &Path, n: usize, journaled: bool) -> Result<Stuck> {
    let (env, journal) = if journaled {
        let (env, journal) = durable_env(dir)?;
        (env, Some(journal))
    } else {
        (env(txn_namespaces()?, None)?, None)
    };
    // Warm up allocator arenas and lazy statics with one transaction of each kind.
    run_expect(
        &env.engine,
        &request("Five", Element::new("data")),
        TxnState::Committed,
    )
    .await?;
    let before = rss_bytes()?;
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let engine = env.engine.clone();
        let req = request("Stuck", data_p(&format!("t{i}")));
        tasks.push(tokio::spawn(async move {
            let _ = engine.run(&req).await;
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while env.block.entered.load(AtomicOrdering::SeqCst) < n {
        if Instant::now() > deadline {
            return Err(anyhow!(
                "only {} of {n} transactions reached the blocking step",
                env.block.entered.load(AtomicOrdering::SeqCst)
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let start_time = start.elapsed();
    let after = rss_bytes()?;
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        let _ = t.await;
    }
    drop(env);
    drop(journal);
    Ok(Stuck {
        rss_per_txn: after.saturating_sub(before) as f64 / n as f64,
        start_time,
    })
}

/// Reopens the store in `dir` and times `txn::recover` (plus the reopen itself).
/// Returns (open time, recover time, transactions recovered).
pub async fn recover_dir(dir: &Path) -> Result<(Duration, Duration, usize)> {
    let t0 = Instant::now();
    let journal = durable(dir)?;
    let env = env(txn_namespaces()?, Some(journal.clone()))?;
    let opened = t0.elapsed();
    let t1 = Instant::now();
    let recovered = provisio_engine::txn::recover(&env.engine, &journal)
        .await
        .map_err(|e| anyhow!("recover: {e}"))?;
    let took = t1.elapsed();
    if let Some(bad) = recovered
        .iter()
        .find(|r| r.to != TxnState::RolledBack || !r.problems.is_empty())
    {
        return Err(anyhow!("a transaction did not recover cleanly: {bad:?}"));
    }
    Ok((opened, took, recovered.len()))
}

/// Median and p90 of durations, in seconds.
pub fn median_p90(samples: &mut [Duration]) -> (f64, f64) {
    if samples.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() - 1) as f64 * q).round() as usize;
        samples[i.min(samples.len() - 1)].as_secs_f64()
    };
    (at(0.5), at(0.9))
}

/// The disk's floor for a workload that needs `syncs` sequential durable writes: the median
/// time of `syncs` appends of 512 bytes to one file in `dir`, each followed by `fdatasync`
/// (what "a journal that appends and syncs once per step" costs on this disk, right now).
pub fn sync_floor(dir: &Path, syncs: usize, reps: usize) -> Result<Duration> {
    floor_of(dir, syncs, reps, false)
}

/// The same number of 512-byte writes and `fdatasync`s, over blocks already written and
/// synced (what the journal's write-ahead log does between its growth steps): no file-size
/// change to commit, so usually cheaper than appends.
pub fn sync_floor_preallocated(dir: &Path, syncs: usize, reps: usize) -> Result<Duration> {
    floor_of(dir, syncs, reps, true)
}

fn floor_of(dir: &Path, syncs: usize, reps: usize, preallocated: bool) -> Result<Duration> {
    use std::io::Write as _;
    use std::os::unix::fs::FileExt as _;
    let path = dir.join("sync-floor");
    let mut samples = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let mut f = std::fs::File::create(&path)?;
        if preallocated {
            f.write_all(&vec![0; syncs * 512 + 4096])?;
            f.sync_all()?;
        }
        let start = Instant::now();
        for i in 0..syncs {
            if preallocated {
                f.write_all_at(&[0x5a; 512], (i * 512) as u64)?;
            } else {
                f.write_all(&[0x5a; 512])?;
            }
            f.sync_data()?;
        }
        samples.push(start.elapsed());
    }
    let _ = std::fs::remove_file(&path);
    samples.sort();
    Ok(samples[samples.len() / 2])
}
