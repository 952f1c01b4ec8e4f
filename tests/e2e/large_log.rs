//! A transaction of a few thousand calls through the binary: `tx log` and `tx show` print
//! every record and every call (the first and the last among them), read from the store as
//! they are printed, and a reader that stops early ends the output quietly.

use crate::util::Sandbox;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// Independent steps (they run concurrently, so the test is not one long chain of syncs)
/// and the folders each creates, one call per folder, all in one transaction.
const STEPS: usize = 4;
const PER_STEP: usize = 500;
const CALLS: usize = STEPS * PER_STEP;

fn request() -> String {
    let mut steps = String::new();
    let mut data = String::new();
    for g in 0..STEPS {
        steps.push_str(&format!(
            "    g{g}:\n      call: Filesystem Provider/CreateFolder\n      \
             forEach: {{ user: \"data/g{g}/user\" }}\n      \
             with: {{ path: \"bulk/{{{{ user.name }}}}\" }}\n"
        ));
        let users: Vec<String> = (0..PER_STEP)
            .map(|i| format!("{{ name: u{g}-{i:04} }}"))
            .collect();
        data.push_str(&format!("  g{g}:\n    user: [{}]\n", users.join(", ")));
    }
    format!("procedure:\n  steps:\n{steps}data:\n{data}")
}

#[test]
fn log_and_show_of_a_large_transaction_are_complete_and_end_quietly_for_a_short_reader() {
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.data().join("files/bulk")).expect("mkdir");
    let req = sb.write("bulk.yaml", &request());
    let run = sb.run(&["run", req.to_str().expect("utf-8 path"), "--quiet"]);
    assert_eq!(run.code, 0, "{run:?}");
    let id = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("transactionId: "))
        .expect("the run names its transaction")
        .to_string();
    assert_eq!(
        std::fs::read_dir(sb.data().join("files/bulk"))
            .expect("folders")
            .count(),
        CALLS
    );

    let log = sb.run(&["tx", "log", &id]);
    assert_eq!(log.code, 0, "{log:?}");
    let lines: Vec<&str> = log.stdout.lines().collect();
    // The start, an intent and a result per call, the final state.
    assert!(lines.len() >= 2 * CALLS + 2, "{} lines", lines.len());
    // forEach iterations are numbered from 1.
    let first = "g0[1]".to_string();
    let last = format!("g{}[{PER_STEP}]", STEPS - 1);
    let intents = lines
        .iter()
        .filter(|l| l.contains("\"type\":\"intent\""))
        .count();
    assert_eq!(intents, CALLS, "one intent per call");
    let step = |s: &str| format!("\"step\":\"{s}\"");
    assert!(
        lines.iter().any(|l| l.contains(&step(&first))),
        "first call logged"
    );
    assert!(
        lines.iter().any(|l| l.contains(&step(&last))),
        "last call logged"
    );
    assert!(lines[0].contains("started"), "{}", lines[0]);
    assert!(
        lines.last().expect("lines").contains("committed"),
        "{:?}",
        lines.last()
    );
    // Sequence numbers run from 0 without a gap: nothing lost between chunks.
    for (n, l) in lines.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
        assert_eq!(v["seq"].as_u64(), Some(n as u64), "{l}");
    }

    let show = sb.run(&["tx", "show", &id]);
    assert_eq!(show.code, 0, "{show:?}");
    assert!(show.stdout.contains("committed"), "{}", &show.stdout[..200]);
    let calls: Vec<&str> = show
        .stdout
        .lines()
        .filter(|l| l.contains(" (attempt 1) Filesystem Provider/CreateFolder"))
        .collect();
    assert_eq!(calls.len(), CALLS, "one entry per call");
    for step in [&first, &last] {
        let entry = format!("{step} (attempt 1) ");
        assert!(
            calls.iter().any(|l| l.trim_start().starts_with(&entry)),
            "{step} shown"
        );
    }
    let done = show
        .stdout
        .lines()
        .filter(|l| l.contains("done in "))
        .count();
    assert_eq!(done, CALLS, "each call with its result");
    // A reader that stops after the first line: far more than a pipe holds is still to
    // come; the output ends quietly.
    let mut child = Command::new(env!("CARGO_BIN_EXE_provisio"))
        .args(["tx", "log", &id])
        .current_dir(crate::util::repo())
        .env("PROVISIO_DATA_DIR", sb.data())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start provisio");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    out.read_line(&mut first).expect("first line");
    assert!(first.contains("started"), "{first}");
    drop(out);
    let done = child.wait_with_output().expect("wait");
    assert_eq!(done.status.code(), Some(0), "{done:?}");
    assert!(
        done.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
}
