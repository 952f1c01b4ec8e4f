//! The journal at scale: `tx list` a page at a time through the index, `tx show` / `tx log`
//! streamed from the store, `tx prune` and `purge` applying retention, and the bounded prune
//! after each `run`.

use crate::cli::{ListArgs, PruneArgs, PurgeArgs};
use crate::commands::{bad_input, fmt_ms, render_log_line, render_summary, render_undo};
use crate::config::Config;
use crate::{load, Exit};
use anyhow::{Context, Result};
use provisio_engine::provider::{PurgeScope, TxnStatus};
use provisio_engine::txn::index::{self, TxnQuery};
use provisio_engine::txn::listing;
use provisio_engine::txn::retention;
use provisio_engine::txn::stream::RecordStream;
use provisio_engine::txn::{DurableJournal, Guarded, Record, TxnSummary};
use provisio_engine::TxnState;
use provisio_engine::{KeyRange, SledStore, Space};
use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::sync::Arc;

fn query_of(args: &ListArgs) -> TxnQuery {
    TxnQuery {
        state: args.state.map(|s| s.0),
        procedure: args.procedure.clone(),
        subject: args.subject.clone(),
        since_ms: args.since.map(|t| t.0),
        until_ms: args.until.map(|t| t.0),
        after: args.after.clone(),
        limit: args.limit.max(1),
    }
}

/// `tx list` from the listing file of a sled store closed cleanly (`txn::listing`), without
/// opening the store: `None` when the files cannot answer (the store is held, was not closed
/// cleanly, is PostgreSQL, or the files are missing or damaged), and the store is read.
pub(crate) fn list_from_listing(config: &Config, args: &ListArgs) -> Result<Option<Exit>> {
    if !matches!(config.store, crate::config::StoreSetting::Sled) {
        return Ok(None);
    }
    let page = match listing::list(&load::journal_dir(config), &query_of(args)) {
        Ok(p) => p,
        Err(e @ listing::ListingError::UnknownCursor(_)) => {
            return bad_input(format!("error: {e}")).map(Some)
        }
        Err(listing::ListingError::Unavailable(why)) => {
            tracing::debug!("tx list reads the store: {why}");
            return Ok(None);
        }
    };
    let mut out = std::io::stdout().lock();
    if page.items.is_empty() {
        writeln!(out, "no transactions")?;
    }
    for t in &page.items {
        writeln!(
            out,
            "{}",
            line(&t.id, t.state, t.started_ms, &t.who, &t.target)
        )?;
    }
    if let Some(next) = &page.next {
        eprintln!(
            "{} shown; the next page: provisio tx list --after {next} (with the same filters)",
            page.items.len()
        );
    }
    Ok(Some(Exit::Ok))
}

/// `tx list`.
pub(crate) async fn list(journal: &DurableJournal, args: &ListArgs) -> Result<Exit> {
    let query = query_of(args);
    let page = match index::list(&**journal.store(), &query).await {
        Ok(p) => p,
        Err(e @ index::QueryError::UnknownCursor(_)) => return bad_input(format!("error: {e}")),
        Err(e) => return Err(e.into()),
    };
    let mut out = std::io::stdout().lock();
    if page.items.is_empty() {
        writeln!(out, "no transactions")?;
    }
    for t in &page.items {
        writeln!(out, "{}", list_line(t))?;
    }
    if let Some(next) = &page.next {
        eprintln!(
            "{} shown; the next page: provisio tx list --after {next} (with the same filters)",
            page.items.len()
        );
    }
    Ok(Exit::Ok)
}

pub(crate) fn list_line(t: &TxnSummary) -> String {
    line(t.id.as_str(), t.state, t.started_ms, &t.who, &t.target)
}

fn line(id: &str, state: TxnState, started_ms: u64, who: &str, target: &str) -> String {
    format!(
        "{}  {:<15}  {}  {}  {}",
        id,
        state.name(),
        fmt_ms(started_ms),
        who,
        target
    )
}

/// The transaction `id` names (a full id or a unique prefix), or the message saying why not.
fn resolve(journal: &DurableJournal, id: &str) -> Result<Result<TxnSummary, String>> {
    Ok(match index::find(&**journal.store(), id)? {
        Ok(Some(t)) => Ok(t),
        Ok(None) => Err(format!(
            "error: no transaction `{id}`\n  hint: `provisio tx list` shows them"
        )),
        Err(n) => Err(format!(
            "error: `{id}` matches {}{n} transactions; give more characters",
            if n >= 100 { "at least " } else { "" }
        )),
    })
}

/// `tx log`: one JSON line per record, read from the store as they are printed.
pub(crate) fn log(journal: &DurableJournal, id: &str) -> Result<Exit> {
    let t = match resolve(journal, id)? {
        Ok(t) => t,
        Err(m) => return bad_input(m),
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for r in RecordStream::new(&**journal.store(), &t.id) {
        let (seq, r) = r?;
        writeln!(out, "{}", render_log_line(seq, &r)?)?;
    }
    out.flush()?;
    Ok(Exit::Ok)
}

/// `tx show`: the summary, then the steps, then the events, each a pass over the streamed
/// records.
pub(crate) fn show(journal: &DurableJournal, id: &str) -> Result<Exit> {
    let t = match resolve(journal, id)? {
        Ok(t) => t,
        Err(m) => return bad_input(m),
    };
    let store = &**journal.store();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    write_show(
        &t,
        || RecordStream::new(store, &t.id).map(|r| r.map(|(_, r)| r).map_err(Into::into)),
        &mut out,
    )?;
    out.flush()?;
    Ok(Exit::Ok)
}

/// What `tx show` prints of a transaction: its summary, then two passes over its records
/// (from the store, or as the daemon sent them): the steps, then the events.
pub(crate) fn write_show<I>(
    t: &TxnSummary,
    records: impl Fn() -> I,
    out: &mut impl Write,
) -> Result<()>
where
    I: Iterator<Item = Result<Record>>,
{
    write!(out, "{}", render_summary(t))?;
    writeln!(out, "  steps:")?;
    let mut steps = Steps::default();
    for r in records() {
        steps.record(&r?, out)?;
    }
    steps.finish(out)?;
    writeln!(out, "  events:")?;
    for r in records() {
        if let Some(line) = event_line(&r?) {
            writeln!(out, "{line}")?;
        }
    }
    Ok(())
}

/// Calls whose lines wait for their result; past this many the oldest is printed as it is
/// (its result then follows on its own line), so memory stays bounded when a call never
/// got a result (in doubt) or thousands run at once.
const OPEN_CALLS: usize = 1024;

type CallKey = (String, u32);

/// One call's lines, printed together once it has its result.
struct OpenCall {
    key: CallKey,
    started_ms: u64,
    lines: Vec<String>,
    finished: bool,
}

/// The steps section of `tx show`: calls run concurrently, so their records interleave;
/// each call's lines are gathered under it (by step and attempt) and printed in the order
/// of their intents, holding only the calls that are still open.
#[derive(Default)]
struct Steps {
    open: VecDeque<OpenCall>,
    /// The position of each open call, counted from the first call of the transaction.
    position: HashMap<CallKey, usize>,
    /// The position of `open[0]`.
    first: usize,
}

impl Steps {
    fn record(&mut self, r: &Record, out: &mut impl Write) -> Result<()> {
        match r {
            Record::Intent {
                step,
                attempt,
                target,
                input,
                at_ms,
                ..
            } => {
                let key = (step.clone(), *attempt);
                self.position
                    .insert(key.clone(), self.first + self.open.len());
                self.open.push_back(OpenCall {
                    key,
                    started_ms: *at_ms,
                    lines: vec![
                        format!("    {step} (attempt {attempt}) {target}"),
                        format!("      input:  {input}"),
                    ],
                    finished: false,
                });
            }
            Record::Done {
                step,
                attempt,
                output,
                undo,
                at_ms,
                ..
            } => {
                let key = (step.clone(), *attempt);
                match self.call(&key) {
                    Some(call) => {
                        let took = at_ms.saturating_sub(call.started_ms);
                        call.lines
                            .push(format!("      done in {took} ms: {output}"));
                        call.lines.extend(undo.as_ref().map(render_undo));
                        call.finished = true;
                    }
                    None => {
                        writeln!(out, "    {step} (attempt {attempt}) done: {output}")?;
                        if let Some(u) = undo {
                            writeln!(out, "{}", render_undo(u))?;
                        }
                    }
                }
            }
            Record::Failed {
                step,
                attempt,
                message,
                ..
            } => {
                let key = (step.clone(), *attempt);
                match self.call(&key) {
                    Some(call) => {
                        call.lines.push(format!("      FAILED: {message}"));
                        call.finished = true;
                    }
                    None => writeln!(out, "    {step} (attempt {attempt}) FAILED: {message}")?,
                }
            }
            Record::InDoubt {
                step,
                attempt,
                message,
                ..
            } => {
                let key = (step.clone(), *attempt);
                match self.call(&key) {
                    // Not finished: a settlement (done or failed) follows, or nothing.
                    Some(call) => call.lines.push(format!("      IN DOUBT: {message}")),
                    None => writeln!(out, "    {step} (attempt {attempt}) IN DOUBT: {message}")?,
                }
            }
            Record::Marker {
                step,
                attempt,
                marker: Some(marker),
                ..
            } => {
                let line = match marker {
                    Guarded::Plain(m) => {
                        format!("      marker: {}", provisio_engine::data::xml::to_string(m))
                    }
                    Guarded::Sealed(_) => "      marker: (sealed: holds secrets)".into(),
                    Guarded::Withheld => {
                        "      marker: (withheld: held secrets, no seal key)".into()
                    }
                };
                let key = (step.clone(), *attempt);
                match self.call(&key) {
                    Some(call) => call.lines.push(line),
                    None => writeln!(out, "    {step} (attempt {attempt}){}", &line[5..])?,
                }
            }
            Record::ScriptDone { step, vars, .. } => {
                let key = (step.clone(), 1);
                self.position
                    .insert(key.clone(), self.first + self.open.len());
                self.open.push_back(OpenCall {
                    key,
                    started_ms: 0,
                    lines: vec![
                        format!("    {step} (script step)"),
                        format!(
                            "      undo script kept{}",
                            match vars {
                                Guarded::Plain(_) => "",
                                Guarded::Sealed(_) => " (inputs sealed: they hold secrets)",
                                Guarded::Withheld =>
                                    " (inputs withheld: they held secrets, no seal key)",
                            }
                        ),
                    ],
                    finished: true,
                });
            }
            _ => {}
        }
        self.flush(out, false)
    }

    fn call(&mut self, key: &CallKey) -> Option<&mut OpenCall> {
        let at = *self.position.get(key)?;
        self.open.get_mut(at - self.first)
    }

    /// Prints the calls at the front that are finished (all of them with `all`), and the
    /// oldest open ones past [`OPEN_CALLS`].
    fn flush(&mut self, out: &mut impl Write, all: bool) -> Result<()> {
        while let Some(front) = self.open.front() {
            if !(all || front.finished || self.open.len() > OPEN_CALLS) {
                break;
            }
            let call = self.open.pop_front().expect("a front call");
            self.position.remove(&call.key);
            self.first += 1;
            for line in &call.lines {
                writeln!(out, "{line}")?;
            }
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut impl Write) -> Result<()> {
        self.flush(out, true)
    }
}

/// The events section's line for a record, if it is an event.
fn event_line(r: &Record) -> Option<String> {
    Some(match r {
        Record::Undone {
            step, error: None, ..
        } => format!("    undone {step}"),
        Record::Undone {
            step,
            error: Some(e),
            ..
        } => format!("    UNDO FAILED {step}: {e}"),
        Record::Phase {
            step, phase, error, ..
        } => format!("    {phase} {step}: {}", error.as_deref().unwrap_or("ok")),
        Record::State { state, at_ms, .. } => format!("    -> {state} at {}", fmt_ms(*at_ms)),
        Record::Resolved {
            step,
            attempt,
            applied,
            who,
            at_ms,
        } => format!(
            "    resolved {step} (attempt {attempt}) as {} by {who} at {}",
            if *applied { "applied" } else { "not applied" },
            fmt_ms(*at_ms)
        ),
        _ => return None,
    })
}

/// `tx audit`: the audit entries as JSON lines, oldest first, read a page at a time.
pub(crate) fn audit(journal: &DurableJournal) -> Result<Exit> {
    let store = &**journal.store();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut from: Vec<u8> = Vec::new();
    loop {
        let rows = store.scan_range(Space::Audit, KeyRange::new(&from, None), 512, false)?;
        for (_, v) in &rows {
            writeln!(out, "{}", String::from_utf8_lossy(v))?;
        }
        match rows.last() {
            Some((k, _)) if rows.len() == 512 => {
                from = k.clone();
                from.push(0);
            }
            _ => break,
        }
    }
    out.flush()?;
    Ok(Exit::Ok)
}

/// `tx prune`.
pub(crate) async fn prune(
    config: &Config,
    journal: &DurableJournal,
    args: &PruneArgs,
) -> Result<Exit> {
    let policy = config.retention.policy(args.older_than, args.keep);
    let pruned =
        retention::prune(&**journal.store(), &policy, now_ms(), None, args.dry_run).await?;
    print_pruned(
        &pruned.transactions,
        pruned.audit_entries,
        &policy,
        &config.retention.audit.to_string(),
        args.dry_run,
    )?;
    Ok(Exit::Ok)
}

/// Bytes of the journal folder (sled store; 0 for PostgreSQL).
pub(crate) fn journal_bytes(config: &Config) -> u64 {
    match config.store {
        crate::config::StoreSetting::Sled => {
            provisio_engine::allocated_bytes(&crate::load::journal_dir(config))
        }
        crate::config::StoreSetting::Postgres(_) => 0,
    }
}

/// After `tx prune` (sled store): closes the journal and rewrites sled's database when its
/// files hold more than 3x what it keeps (and over 8 MiB), or always with `--compact`
/// (`store/vacuum.rs` in the engine), then says what the journal folder gave back since
/// `before` (its bytes before the prune).
pub(crate) fn compact_after_prune(
    config: &Config,
    journal: Arc<DurableJournal>,
    args: &PruneArgs,
    before: u64,
) -> Result<()> {
    if args.dry_run || !matches!(config.store, crate::config::StoreSetting::Sled) {
        return Ok(());
    }
    let dir = crate::load::journal_dir(config);
    // The only holder: dropping it closes the store (a clean close, everything in sled).
    drop(journal);
    let done = SledStore::vacuum(&dir, args.compact)
        .with_context(|| format!("compacting the journal at `{}`", dir.display()))?;
    let after = provisio_engine::allocated_bytes(&dir);
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let mut out = std::io::stdout().lock();
    if done.rewritten {
        writeln!(
            out,
            "journal folder: {:.1} MiB before, {:.1} MiB after (its database rewritten in {:.1} s: {:.1} MiB of files for {:.1} MiB it holds, now {:.1} MiB)",
            mib(before),
            mib(after),
            done.seconds,
            mib(done.before),
            mib(done.live.unwrap_or(0)),
            mib(done.after),
        )?;
    } else {
        writeln!(
            out,
            "journal folder: {:.1} MiB before, {:.1} MiB after (its database, {:.1} MiB{}, is rewritten smaller once over {} MiB and {}x what it holds; --compact: now)",
            mib(before),
            mib(after),
            mib(done.before),
            match done.live {
                Some(live) => format!(" for {:.1} MiB it holds", mib(live)),
                None => String::new(),
            },
            SledStore::VACUUM_FLOOR / (1024 * 1024),
            SledStore::VACUUM_RATIO,
        )?;
    }
    Ok(())
}

/// What `tx prune` prints (also through a daemon): a line per transaction removed (or that
/// would be), then the totals and what the policy keeps.
pub(crate) fn print_pruned(
    transactions: &[TxnSummary],
    audit_entries: usize,
    policy: &retention::Retention,
    audit: &str,
    dry_run: bool,
) -> Result<()> {
    let verb = if dry_run { "would remove" } else { "removed" };
    let mut out = std::io::stdout().lock();
    for t in transactions {
        writeln!(out, "{verb} {}", list_line(t))?;
    }
    writeln!(
        out,
        "{verb} {} transaction(s) and {} audit entr{} (kept: transactions {}{}, audit {audit})",
        transactions.len(),
        audit_entries,
        if audit_entries == 1 { "y" } else { "ies" },
        match policy.max_age {
            Some(d) => format!("finished within {}", humantime::format_duration(d)),
            None => "of any age".into(),
        },
        match policy.max_count {
            Some(n) => format!(", at most {n}"),
            None => String::new(),
        },
    )?;
    Ok(())
}

/// How many expired transactions `run` prunes after its request, at most: enough to keep up
/// with any request rate, little enough to add milliseconds, not seconds.
const PRUNE_AFTER_RUN: usize = 100;

/// After a `run`: prunes a bounded number of transactions past retention, when configured.
/// Best effort: a failure is logged, the run's outcome stands.
pub(crate) async fn prune_after_run(config: &Config, journal: &DurableJournal) {
    if !config.retention.prune_after_run {
        return;
    }
    let policy = config.retention.policy(None, None);
    match retention::prune(
        &**journal.store(),
        &policy,
        now_ms(),
        Some(PRUNE_AFTER_RUN),
        false,
    )
    .await
    {
        Ok(p) if !p.transactions.is_empty() || p.audit_entries > 0 => tracing::info!(
            transactions = p.transactions.len(),
            audit_entries = p.audit_entries,
            more = p.more,
            "pruned the journal past retention"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!("pruning the journal after the run failed: {e}"),
    }
}

/// `purge`.
pub(crate) async fn purge(config: &Config, args: &PurgeArgs) -> Result<Exit> {
    let Some(older_than) = args.older_than.unwrap_or(config.retention.provider_state).0 else {
        println!("nothing to purge: retention.provider_state is `forever`");
        return Ok(Exit::Ok);
    };
    // Without a journal every transaction is unknown to it: the age of what was kept
    // decides (and no journal is created).
    let scope = if load::journal_exists(config) {
        let journal = load::journal(config)?;
        retention::purge_scope(journal.store().clone(), older_than, args.dry_run)
    } else {
        PurgeScope::new(
            older_than,
            args.dry_run,
            now_ms(),
            Arc::new(|_: &str| TxnStatus::Unknown),
        )
    };
    let registry = match load::registry(config).await {
        Ok(r) => r,
        Err(e) => return bad_input(format!("error: {e:#}")),
    };
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    let mut failed = false;
    let mut total = 0;
    for (provider, result) in registry.purge_all(&scope).await {
        match result {
            Ok(purged) => {
                total += purged.removed.len();
                for item in purged.removed {
                    println!("{verb} {provider}: {item}");
                }
            }
            Err(e) => {
                failed = true;
                eprintln!("error: provider {provider} could not purge: {e}");
            }
        }
    }
    println!(
        "{verb} {total} item(s) kept for the undo of transactions finished more than {} ago",
        humantime::format_duration(older_than)
    );
    Ok(if failed { Exit::BadInput } else { Exit::Ok })
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_prints_a_calls_marker_under_it_masked_when_sealed() {
        let summary: TxnSummary = serde_json::from_value(serde_json::json!({
            "id": "0190f1c2-0000-7000-8000-000000000001",
            "state": "running",
            "target": "T/Make",
            "who": "me",
            "started_ms": 0,
            "updated_ms": 0,
            "resumable": false,
            "definitions": "",
            "message": null,
        }))
        .unwrap();
        let intent: Record = serde_json::from_value(serde_json::json!({
            "type": "intent", "at_ms": 0, "step": "a", "attempt": 1, "namespace": "N",
            "procedure": "Create", "provider": "P", "target": "N/Create", "kind": "write",
            "provider_context": provisio_engine::Element::new("providerContext"),
            "input": {}, "call_data": "withheld",
        }))
        .unwrap();
        let mut m = provisio_engine::Element::new("marker");
        m.push(provisio_engine::Element::with_text("path", "x/y"));
        let marker = |step: &str, marker: Option<Guarded>| Record::Marker {
            at_ms: 0,
            step: step.into(),
            attempt: 1,
            marker,
        };
        let records = [
            intent,
            marker("a", Some(Guarded::Plain(m))),
            marker("a", None),
            marker("b", Some(Guarded::Sealed("c2VhbGVk".into()))),
        ];
        let mut out = Vec::new();
        write_show(&summary, || records.iter().cloned().map(Ok), &mut out).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.contains("      marker: <marker><path>x/y</path></marker>"),
            "{out}"
        );
        assert!(
            out.contains("    b (attempt 1) marker: (sealed: holds secrets)"),
            "{out}"
        );
        assert_eq!(out.matches("marker:").count(), 2, "{out}");
    }
}
