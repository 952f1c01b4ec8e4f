//! The sled queue's record encoding: a job (and the counts record) as tagged binary
//! fields instead of JSON, read back from either.
//!
//! A job record is the format byte [`JOB_V1`] followed by fields, each a tag byte, a
//! length (LEB128) and that many bytes: numbers little-endian, text UTF-8, a flag present
//! (empty) only when set, an `Option` absent when `None`, a list one field per item in
//! order. A record written as JSON by an earlier version starts with `{` and is read as
//! JSON. **Adding a field** to [`Job`]: give it a new tag below, write it in [`encode_job`]
//! (the destructuring there fails to compile until every field is handled) and read it in
//! [`decode_job`]; a record written before has no such field and reads as the default, so
//! no new format byte is needed. A tag this version does not know is refused (the record
//! was written by a newer provisio, whose fields an older one must not drop on its next
//! write). Changing what an existing tag means takes a new format byte.

use super::{Job, JobState, RetryType, Slot, Tally, ALL_STATES, STATES};

/// The format byte of a binary job record (a JSON one starts with `{`).
pub(super) const JOB_V1: u8 = 1;
/// The format byte of the binary counts record.
const TALLY_V1: u8 = 1;

const T_ID: u8 = 1;
const T_SEQ: u8 = 2;
const T_STATE: u8 = 3;
const T_PRIORITY: u8 = 4;
const T_NOT_BEFORE: u8 = 5;
const T_SERIAL_KEY: u8 = 6;
const T_SERIAL_POS: u8 = 7;
const T_IDEMPOTENCY: u8 = 8;
const T_SUBJECT: u8 = 9;
const T_TARGET: u8 = 10;
const T_ATTEMPTS: u8 = 11;
const T_MAX_ATTEMPTS: u8 = 12;
const T_TXN: u8 = 13;
const T_TXNS: u8 = 14;
const T_SUBMITTED: u8 = 15;
const T_STARTED: u8 = 16;
const T_FINISHED: u8 = 17;
const T_ERROR: u8 = 18;
const T_OUTCOME: u8 = 19;
const T_CANCEL: u8 = 20;
const T_PAYLOAD: u8 = 21;
const T_RESULT: u8 = 22;
const T_HELD_BY: u8 = 23;
const T_RETRY_INTERVAL: u8 = 24;
const T_FAIL_WHEN_EXHAUSTED: u8 = 25;
const T_SLOT: u8 = 26;
const T_RETRY_TYPE: u8 = 27;
const T_RETRY_STOP_CODE: u8 = 28;
const T_DROP_SUCCESS_RESPONSE: u8 = 29;
const T_PARENT: u8 = 30;
const T_WAITING_FOR: u8 = 31;
const T_AWAITED: u8 = 32;

struct Out(Vec<u8>);

impl Out {
    fn field(&mut self, tag: u8, bytes: &[u8]) {
        self.0.push(tag);
        let mut n = bytes.len() as u64;
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                self.0.push(b);
                break;
            }
            self.0.push(b | 0x80);
        }
        self.0.extend_from_slice(bytes);
    }
    fn u64(&mut self, tag: u8, v: u64) {
        self.field(tag, &v.to_le_bytes());
    }
    fn opt_u64(&mut self, tag: u8, v: Option<u64>) {
        if let Some(v) = v {
            self.u64(tag, v);
        }
    }
    fn text(&mut self, tag: u8, v: &str) {
        self.field(tag, v.as_bytes());
    }
    fn opt_text(&mut self, tag: u8, v: Option<&str>) {
        if let Some(v) = v {
            self.text(tag, v);
        }
    }
    fn flag(&mut self, tag: u8, v: bool) {
        if v {
            self.field(tag, &[]);
        }
    }
}

fn state_byte(s: JobState) -> u8 {
    ALL_STATES.iter().position(|x| *x == s).unwrap_or(0) as u8
}

/// A job as the bytes of its record.
pub(super) fn encode_job(job: &Job) -> Vec<u8> {
    // No `..`: a field added to `Job` must be written here (and read in `decode_job`).
    let Job {
        id,
        seq,
        state,
        priority,
        not_before_ms,
        serial_key,
        serial_pos,
        idempotency_key,
        subject,
        target,
        attempts,
        max_attempts,
        txn,
        txns,
        submitted_ms,
        started_ms,
        finished_ms,
        error,
        outcome,
        cancel_requested,
        payload,
        result,
        held_by,
        retry_interval_ms,
        fail_when_exhausted,
        retry_type,
        retry_stop_code,
        drop_success_response,
        parents,
        waiting_for,
        awaited,
        slot,
    } = job;
    let mut o = Out(Vec::with_capacity(
        160 + payload.as_ref().map_or(0, String::len) + result.as_ref().map_or(0, String::len),
    ));
    o.0.push(JOB_V1);
    o.text(T_ID, id);
    o.u64(T_SEQ, *seq);
    o.field(T_STATE, &[state_byte(*state)]);
    o.field(T_PRIORITY, &priority.to_le_bytes());
    o.u64(T_NOT_BEFORE, *not_before_ms);
    o.opt_text(T_SERIAL_KEY, serial_key.as_deref());
    o.u64(T_SERIAL_POS, *serial_pos);
    o.opt_text(T_IDEMPOTENCY, idempotency_key.as_deref());
    o.text(T_SUBJECT, subject);
    o.text(T_TARGET, target);
    o.field(T_ATTEMPTS, &attempts.to_le_bytes());
    o.field(T_MAX_ATTEMPTS, &max_attempts.to_le_bytes());
    o.opt_text(T_TXN, txn.as_deref());
    for t in txns {
        o.text(T_TXNS, t);
    }
    o.u64(T_SUBMITTED, *submitted_ms);
    o.opt_u64(T_STARTED, *started_ms);
    o.opt_u64(T_FINISHED, *finished_ms);
    o.opt_text(T_ERROR, error.as_deref());
    o.opt_text(T_OUTCOME, outcome.as_deref());
    o.flag(T_CANCEL, *cancel_requested);
    o.opt_text(T_PAYLOAD, payload.as_deref());
    o.opt_text(T_RESULT, result.as_deref());
    o.opt_text(T_HELD_BY, held_by.as_deref());
    o.opt_u64(T_RETRY_INTERVAL, *retry_interval_ms);
    o.flag(T_FAIL_WHEN_EXHAUSTED, *fail_when_exhausted);
    if let Some(t) = retry_type {
        let b = match t {
            RetryType::Fixed => 0u8,
            RetryType::Linear => 1,
            RetryType::Exponential => 2,
        };
        o.field(T_RETRY_TYPE, &[b]);
    }
    if let Some(code) = retry_stop_code {
        o.field(T_RETRY_STOP_CODE, &code.to_le_bytes());
    }
    o.flag(T_DROP_SUCCESS_RESPONSE, *drop_success_response);
    for p in parents {
        o.text(T_PARENT, p);
    }
    for p in waiting_for {
        o.text(T_WAITING_FOR, p);
    }
    o.flag(T_AWAITED, *awaited);
    let (kind, at) = match slot {
        Slot::Ready => (0u8, None),
        Slot::Scheduled(t) => (1, Some(*t)),
        Slot::Waiting => (2, None),
        Slot::Leased(t) => (3, Some(*t)),
        Slot::Held => (4, None),
        Slot::Nowhere => (5, None),
    };
    let mut s = [0u8; 9];
    s[0] = kind;
    let n = match at {
        Some(t) => {
            s[1..].copy_from_slice(&t.to_le_bytes());
            9
        }
        None => 1,
    };
    o.field(T_SLOT, &s[..n]);
    o.0
}

fn fixed<const N: usize>(tag: u8, v: &[u8]) -> Result<[u8; N], String> {
    v.try_into()
        .map_err(|_| format!("field {tag} has {} bytes, not {N}", v.len()))
}

fn text(tag: u8, v: &[u8]) -> Result<String, String> {
    String::from_utf8(v.to_vec()).map_err(|_| format!("field {tag} is not UTF-8"))
}

/// A job from the bytes of its record (binary, or JSON as earlier versions wrote it).
pub(super) fn decode_job(bytes: &[u8]) -> Result<Job, String> {
    match bytes.first() {
        Some(&JOB_V1) => decode_v1(&bytes[1..]),
        Some(b'{') => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
        Some(b) => Err(format!(
            "unknown record format {b} (written by a newer provisio?)"
        )),
        None => Err("empty record".into()),
    }
}

fn decode_v1(mut p: &[u8]) -> Result<Job, String> {
    let mut job = Job {
        id: String::new(),
        seq: 0,
        state: JobState::Queued,
        priority: 0,
        not_before_ms: 0,
        serial_key: None,
        serial_pos: 0,
        idempotency_key: None,
        subject: String::new(),
        target: String::new(),
        attempts: 0,
        max_attempts: 1,
        txn: None,
        txns: Vec::new(),
        submitted_ms: 0,
        started_ms: None,
        finished_ms: None,
        error: None,
        outcome: None,
        cancel_requested: false,
        payload: None,
        result: None,
        held_by: None,
        retry_interval_ms: None,
        fail_when_exhausted: false,
        retry_type: None,
        retry_stop_code: None,
        drop_success_response: false,
        parents: Vec::new(),
        waiting_for: Vec::new(),
        awaited: false,
        slot: Slot::Nowhere,
    };
    let mut has_id = false;
    while let Some((&tag, rest)) = p.split_first() {
        let (mut len, mut shift, mut used) = (0u64, 0u32, 0usize);
        loop {
            let &b = rest.get(used).ok_or("truncated field length")?;
            used += 1;
            if shift > 63 {
                return Err("field length too long".into());
            }
            len |= u64::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        let rest = &rest[used..];
        let len = usize::try_from(len).map_err(|_| "field length too long")?;
        if rest.len() < len {
            return Err(format!("field {tag} is truncated"));
        }
        let (v, next) = rest.split_at(len);
        p = next;
        let u64v = || fixed::<8>(tag, v).map(u64::from_le_bytes);
        match tag {
            T_ID => {
                job.id = text(tag, v)?;
                has_id = true;
            }
            T_SEQ => job.seq = u64v()?,
            T_STATE => {
                let [i] = fixed::<1>(tag, v)?;
                job.state = *ALL_STATES
                    .get(usize::from(i))
                    .ok_or_else(|| format!("unknown state {i}"))?;
            }
            T_PRIORITY => job.priority = i16::from_le_bytes(fixed(tag, v)?),
            T_NOT_BEFORE => job.not_before_ms = u64v()?,
            T_SERIAL_KEY => job.serial_key = Some(text(tag, v)?),
            T_SERIAL_POS => job.serial_pos = u64v()?,
            T_IDEMPOTENCY => job.idempotency_key = Some(text(tag, v)?),
            T_SUBJECT => job.subject = text(tag, v)?,
            T_TARGET => job.target = text(tag, v)?,
            T_ATTEMPTS => job.attempts = u32::from_le_bytes(fixed(tag, v)?),
            T_MAX_ATTEMPTS => job.max_attempts = u32::from_le_bytes(fixed(tag, v)?),
            T_TXN => job.txn = Some(text(tag, v)?),
            T_TXNS => job.txns.push(text(tag, v)?),
            T_SUBMITTED => job.submitted_ms = u64v()?,
            T_STARTED => job.started_ms = Some(u64v()?),
            T_FINISHED => job.finished_ms = Some(u64v()?),
            T_ERROR => job.error = Some(text(tag, v)?),
            T_OUTCOME => job.outcome = Some(text(tag, v)?),
            T_CANCEL => job.cancel_requested = true,
            T_PAYLOAD => job.payload = Some(text(tag, v)?),
            T_RESULT => job.result = Some(text(tag, v)?),
            T_HELD_BY => job.held_by = Some(text(tag, v)?),
            T_RETRY_INTERVAL => job.retry_interval_ms = Some(u64v()?),
            T_FAIL_WHEN_EXHAUSTED => job.fail_when_exhausted = true,
            T_RETRY_TYPE => {
                let [b] = fixed::<1>(tag, v)?;
                job.retry_type = Some(match b {
                    0 => RetryType::Fixed,
                    1 => RetryType::Linear,
                    2 => RetryType::Exponential,
                    _ => return Err(format!("unknown retry type {b}")),
                });
            }
            T_RETRY_STOP_CODE => job.retry_stop_code = Some(u32::from_le_bytes(fixed(tag, v)?)),
            T_DROP_SUCCESS_RESPONSE => job.drop_success_response = true,
            T_PARENT => job.parents.push(text(tag, v)?),
            T_WAITING_FOR => job.waiting_for.push(text(tag, v)?),
            T_AWAITED => job.awaited = true,
            T_SLOT => {
                let at = || {
                    v.get(1..)
                        .ok_or_else(|| "slot without its time".to_string())
                        .and_then(|t| fixed::<8>(tag, t).map(u64::from_le_bytes))
                };
                job.slot = match v.first() {
                    Some(0) => Slot::Ready,
                    Some(1) => Slot::Scheduled(at()?),
                    Some(2) => Slot::Waiting,
                    Some(3) => Slot::Leased(at()?),
                    Some(4) => Slot::Held,
                    Some(5) => Slot::Nowhere,
                    _ => return Err("unknown slot".into()),
                };
            }
            other => {
                return Err(format!(
                    "unknown field {other} (written by a newer provisio?)"
                ))
            }
        }
    }
    if !has_id {
        return Err("no job id".into());
    }
    Ok(job)
}

/// The counts record: the format byte, the number of states, then `now`, `entered` and
/// `submitted` as little-endian numbers.
pub(super) fn encode_tally(t: &Tally) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + 8 * (2 * STATES + 1));
    out.push(TALLY_V1);
    out.push(STATES as u8);
    for v in t.now.iter().chain(t.entered.iter()) {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&t.submitted.to_le_bytes());
    out
}

/// The counts from their record (binary, or JSON as earlier versions wrote it); `None`:
/// not readable as counts of this version's states (the caller counts again).
pub(super) fn decode_tally(bytes: &[u8]) -> Option<Tally> {
    match bytes {
        [TALLY_V1, n, rest @ ..]
            if usize::from(*n) == STATES && rest.len() == 8 * (2 * STATES + 1) =>
        {
            let mut nums = rest
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])));
            let mut t = Tally::default();
            for v in t.now.iter_mut().chain(t.entered.iter_mut()) {
                *v = nums.next()?;
            }
            t.submitted = nums.next()?;
            Some(t)
        }
        [b'{', ..] => serde_json::from_slice(bytes).ok(),
        _ => None,
    }
}
