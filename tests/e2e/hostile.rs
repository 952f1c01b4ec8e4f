//! The hostile-input catalogue: every probe of bad input, escapes and secrets the project
//! defends against, in one place, driving the real `provisio` binary.
//!
//! Each probe asserts the specific message (naming the file, line, column or input), the
//! exit code (2 = refused before anything ran, 1 = failed and rolled back), and that no
//! partial state is left: the files and zones outside are untouched, earlier steps are
//! undone, and the journal shows nothing committed. Probes already covered elsewhere by a
//! test that drives the binary (or, for the parsers and providers, by a library test) are
//! listed here and not repeated.
//!
//! | probe | where tested |
//! | --- | --- |
//! | XXE (`<!DOCTYPE>` with an external entity) in a request and a namespace file | [`xxe_and_entity_expansion_are_refused`] (parser: `engine/tests/xml_parse.rs` `doctype_and_billion_laughs_refused`) |
//! | billion laughs (XML entity expansion, 10⁹ `lol`s) | [`xxe_and_entity_expansion_are_refused`], `e2e/cli.rs` `bad_requests_are_refused_before_anything_runs` |
//! | YAML alias bomb (10⁹ nodes) | [`yaml_alias_bomb_is_refused_fast`] (parser: `engine/tests/yaml_parse.rs` `billion_laughs_is_bounded`) |
//! | XML / YAML (flow, block, list) / JSON nested 100,000 deep | [`deep_documents_are_refused_fast`] (parsers: `xml_parse.rs` `deep_document_errors_without_overflow`, `yaml_parse.rs` `yaml_nested_100k_deep_is_refused_at_the_limit`) |
//! | request over the 64 MiB limit, a link to `/dev/zero`, a named pipe | [`oversized_and_endless_request_files_are_refused_before_reading`] |
//! | a request that is not UTF-8 | [`oversized_and_endless_request_files_are_refused_before_reading`] |
//! | malformed XML (line and column), a raw NUL byte in XML | [`malformed_documents_name_line_and_column`] (parser: `xml_parse.rs` `raw_nul_and_control_characters_are_refused`) |
//! | an unknown key in a YAML request | [`malformed_documents_name_line_and_column`] |
//! | YAML request and namespace files with a byte order mark | [`files_with_a_byte_order_mark_are_read_as_what_they_are`] (parser: `yaml_parse.rs` `yaml_with_a_byte_order_mark`) |
//! | a YAML integer ≥ 2⁶⁴ | [`integers_beyond_64_bits_become_floats`] (parser: `yaml_parse.rs` `integers_beyond_64_bits_become_floats`) |
//! | a cycle in a namespace (`run` and `validate`) | [`a_cycle_refuses_the_run_and_names_the_loop`], `e2e/cli.rs` `validate_reports_every_error_with_its_location` |
//! | unknown namespace / procedure, with a suggestion | `e2e/cli.rs` `bad_requests_are_refused_before_anything_runs`, `validate_reports_every_error_with_its_location`, `graph_prints_dot_and_mermaid`; XML: [`xml_requests_to_unknown_or_private_procedures_are_refused`] |
//! | a private procedure called from a request or a batch | `e2e/cli.rs` `bad_requests_are_refused_before_anything_runs`, `e2e/batch.rs` `a_batch_cannot_call_a_private_procedure`; XML: [`xml_requests_to_unknown_or_private_procedures_are_refused`] |
//! | a missing required input | `e2e/cli.rs` `bad_requests_are_refused_before_anything_runs` |
//! | path traversal in a constant input (`../escape`) | `e2e/cli.rs` `constant_inputs_are_checked_before_anything_runs` |
//! | path traversal from request data: `../`, absolute, a symlink out, a hard link, setuid | [`paths_leaving_the_root_are_refused_and_the_run_rolls_back`] (provider: `providers/tests/filesystem.rs` `escapes_are_rejected_and_nothing_is_created_outside`, `filesystem_perms.rs` `a_hard_link_to_a_file_outside_the_root_is_refused`, `special_modes_need_the_option`; property: `providers/tests/fuzz.rs` `fs_paths_stay_inside_root`) |
//! | DNS injection: names with a line break, `;`, `$INCLUDE`, blanks, empty labels; TXT text with a line break or a directive | [`dns_injection_never_reaches_the_zone_file`] (provider: `providers/tests/dns.rs` `injection_attempts_are_rejected_before_writing`; property: `fuzz.rs` `dns_inputs_never_panic_and_txt_reloads`) |
//! | LDAP injection | not applicable yet: no provider speaks LDAP; the first one gets its probes here |
//! | a secret (and a value computed from it) in stdout, stderr at `-vv`, `tx show`, `tx log`, `tx audit`, the bytes of the state folder | [`secrets_never_reach_output_logs_or_the_state_folder`], `e2e/cli.rs` `a_secret_in_a_failing_step_stays_masked` (library: `engine/tests/exec.rs` `secrets_never_leave_the_engine`, `a_failing_step_logs_no_secret`, `a_value_computed_from_a_secret_is_masked`) |
//! | a runaway script step (endless loop, doubling string) | [`runaway_scripts_stop_at_their_limit_and_roll_back`] (library: `engine/tests/script.rs` `every_limit_is_enforced`, `script_steps.rs` `a_runaway_script_fails_with_the_limit_and_its_location`) |
//! | a script reaching the host (`import`, `eval`, files) | library: `engine/tests/script.rs` `no_host_access` |
//! | driver script: `read_csv` outside its folder, through a symlink (file, folder, `/dev/zero`) | `e2e/script.rs` `a_driver_script_cannot_read_outside_its_folder`, `read_csv_refuses_symlinks_leading_out_of_the_script_folder` |
//! | driver script: an oversized CSV, a script hoarding memory | `e2e/script.rs` `read_csv_refuses_a_file_over_the_size_limit`, `a_script_hoarding_data_is_stopped_with_an_error_not_an_abort` |
//! | broken pipe (`provisio run … \| head -1`, `plan`, `tx list`) | `e2e/cli.rs` `a_closed_stdout_ends_the_output_quietly` |
//! | a busy journal (another process holds it) | `e2e/cli.rs` `a_busy_journal_exits_75_after_waiting_and_a_released_one_is_used` |
//! | concurrent runs racing for the same tenant | [`concurrent_runs_for_one_tenant_commit_once`] |
//! | a damaged or emptied journal | `e2e/store.rs` `a_damaged_journal_is_refused_and_left_as_it_was`, `a_journal_that_comes_back_empty_is_refused` |
//! | kill -9 at every journal write | `e2e/crash.rs` `a_crash_at_any_journal_write_leaves_all_or_nothing` |
//! | a bad configuration file | `e2e/config.rs` `bad_config_exits_2_naming_file_line_and_key` |
//! | an exec provider sending garbage, overlong lines, crash-looping | `providers/tests/exec.rs` |
//! | a provider that panics or hangs | `engine/tests/exec.rs` `provider_panic_fails_the_step_and_the_engine_keeps_working`, `hanging_provider_times_out` |
//! | too many steps, recursion, call depth | `engine/tests/exec.rs` `step_limit_rejects_big_procedures`, `recursion_and_call_depth` |
//! | arbitrary bytes into every parser | property tests: `engine/tests/parser_props.rs`, `engine/tests/data_props.rs`, `engine/tests/xml_parse.rs`, `providers/tests/fuzz.rs` |

use crate::util::{named_checkzone, Run, Sandbox};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Public procedures that hand request data to the providers unchanged, so a probe reaches
/// the provider's own checks.
const PROBE_NS: &str = r#"namespace: Probe
procedures:
  Write:
    access: public
    parallel: false
    inputs: { path: string, content: string }
    steps:
      first: { call: Filesystem Provider/CreateFolder, with: { path: tenants/first } }
      write: { call: Filesystem Provider/WriteFile, with: { path: "{{ data.path }}", content: "{{ data.content }}" } }
  Mode:
    access: public
    parallel: false
    inputs: { path: string, mode: string }
    steps:
      first: { call: Filesystem Provider/CreateFolder, with: { path: tenants/first } }
      chmod: { call: Filesystem Provider/SetPermissions, with: { path: "{{ data.path }}", mode: "{{ data.mode }}" } }
  Zone:
    access: public
    steps:
      zone: { call: DNS Provider/CreateZone, with: { zoneName: probe.test, nsAddress: 192.0.2.53 } }
  Record:
    access: public
    inputs: { name: string, text: string }
    steps:
      record:
        call: DNS Provider/AddRecord
        with: { zoneName: probe.test, name: "{{ data.name }}", rrType: TXT, text: "{{ data.text }}" }
  Number:
    access: public
    inputs: { n: float }
    steps:
      write: { call: Filesystem Provider/WriteFile, with: { path: n.txt, content: "{{ data.n }}" } }
  Hidden:
    access: private
    steps:
      mk: { call: Filesystem Provider/CreateFolder, with: { path: tenants/hidden } }
"#;

/// Longest a single refused probe may take: refusals happen before any real work, so even
/// a loaded two-core machine stays far below this.
const REFUSED_WITHIN: Duration = Duration::from_secs(10);

/// A sandbox with the probe namespaces in `ns/`.
struct Probe {
    sb: Sandbox,
}

impl Probe {
    fn new() -> Probe {
        let sb = Sandbox::new();
        sb.write("ns/probe.yaml", PROBE_NS);
        Probe { sb }
    }

    fn ns(&self) -> PathBuf {
        self.sb.path("ns")
    }

    fn write(&self, rel: &str, text: &str) -> String {
        path_str(&self.sb.write(rel, text))
    }

    /// Runs the binary on the probe namespaces; panics if it takes longer than `limit`
    /// (after killing it), so an endless read or a hang fails the test instead of the CI
    /// job.
    fn run_within(&self, args: &[&str], limit: Duration) -> (Run, Duration) {
        let started = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_provisio"))
            .args(args)
            .current_dir(self.sb.dir.path())
            .env("PROVISIO_NAMESPACES", self.ns())
            .env("PROVISIO_DATA_DIR", self.sb.data())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn provisio");
        let drain = |mut pipe: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut text = Vec::new();
                let _ = pipe.read_to_end(&mut text);
                String::from_utf8_lossy(&text).into_owned()
            })
        };
        let stdout = drain(Box::new(child.stdout.take().expect("stdout")));
        let stderr = drain(Box::new(child.stderr.take().expect("stderr")));
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if started.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                panic!("provisio {args:?} still running after {limit:?}; killed");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let elapsed = started.elapsed();
        let run = Run {
            code: status.code().unwrap_or(-1),
            stdout: stdout.join().expect("stdout reader"),
            stderr: stderr.join().expect("stderr reader"),
        };
        (run, elapsed)
    }

    fn run(&self, args: &[&str]) -> Run {
        self.run_within(args, Duration::from_secs(60)).0
    }

    /// `run FILE --quiet --output json`: the run's exit code and its JSON response.
    fn run_json(&self, request: &str) -> (Run, serde_json::Value) {
        let r = self.run(&["run", request, "--quiet", "--output", "json"]);
        let v = serde_json::from_str(&r.stdout)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {r:?}"));
        (r, v)
    }

    /// Asserts the request is refused before anything ran: exit 2, `expect` in stderr, no
    /// panic, quickly, and no transaction in the journal.
    fn refused(&self, request: &str, expect: &[&str]) -> Run {
        let (r, took) = self.run_within(&["run", request, "--quiet"], REFUSED_WITHIN);
        assert_eq!(r.code, 2, "{request}: {r:?}");
        for e in expect {
            assert!(r.stderr.contains(e), "{request}: expected `{e}` in {r:?}");
        }
        assert!(!r.stderr.contains("panicked"), "{request}: {r:?}");
        assert!(
            r.stdout.is_empty(),
            "{request}: a refused run answers nothing: {r:?}"
        );
        assert!(
            took < REFUSED_WITHIN,
            "{request}: refused only after {took:?}"
        );
        self.nothing_committed();
        r
    }

    /// No transaction committed, and no tenant folder or zone file exists.
    fn nothing_committed(&self) {
        if self.sb.data().join("journal").exists() {
            let list = self.run(&["tx", "list"]);
            assert_eq!(list.code, 0, "{list:?}");
            assert!(
                !list.stdout.contains(" committed"),
                "a transaction committed: {list:?}"
            );
        }
        assert!(
            self.sb.visible().is_empty(),
            "files or zones were left: {:?}",
            self.sb.visible()
        );
    }
}

fn path_str(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_string()
}

#[test]
fn xxe_and_entity_expansion_are_refused() {
    let p = Probe::new();
    let xxe = p.write(
        "xxe.xml",
        "<?xml version=\"1.0\"?>\n<!DOCTYPE r [<!ENTITY x SYSTEM \"file:///etc/passwd\">]>\n\
         <request namespace=\"Probe\" procedure=\"Write\"><data><path>&x;</path><content>x</content></data></request>\n",
    );
    let r = p.refused(
        &xxe,
        &[
            "xxe.xml:2:1: DOCTYPE is not allowed (entity expansion is refused)",
            "hint: remove the <!DOCTYPE",
        ],
    );
    assert!(!r.stderr.contains("root:"), "{r:?}");
    // The full billion laughs: ten levels of ten, 10⁹ `lol`s if expanded.
    let mut entities = String::from("<!ENTITY lol \"lol\">");
    for i in 1..=9 {
        let prev = if i == 1 {
            "lol".to_string()
        } else {
            format!("lol{}", i - 1)
        };
        entities.push_str(&format!(
            "<!ENTITY lol{i} \"{}\">",
            format!("&{prev};").repeat(10)
        ));
    }
    let bomb = p.write(
        "lolz.xml",
        &format!("<?xml version=\"1.0\"?>\n<!DOCTYPE lolz [{entities}]>\n<request namespace=\"Probe\" procedure=\"Zone\"><data>&lol9;</data></request>\n"),
    );
    p.refused(&bomb, &["lolz.xml:2:1: DOCTYPE is not allowed"]);
    // In a namespace file: `validate` names it, and loading the folder refuses it.
    p.write(
        "ns/xxe.xml",
        "<?xml version=\"1.0\"?>\n<!DOCTYPE n [<!ENTITY x SYSTEM \"file:///etc/passwd\">]>\n\
         <namespace name=\"X\"><procedure name=\"P\">&x;</procedure></namespace>\n",
    );
    let r = p.run(&["validate", &path_str(&p.ns())]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("xxe.xml:2:1: DOCTYPE is not allowed"),
        "{r:?}"
    );
    let zone = p.write("zone.yaml", "call: Probe/Zone\n");
    let r = p.refused(&zone, &["xxe.xml:2:1: DOCTYPE is not allowed"]);
    assert!(!r.stderr.contains("root:"), "{r:?}");
    assert!(!r.stderr.contains("error: error:"), "said once: {r:?}");
}

#[test]
fn yaml_alias_bomb_is_refused_fast() {
    let p = Probe::new();
    let mut bomb = String::from(
        "call: Probe/Zone\ndata:\n  a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n",
    );
    for i in 1..10 {
        let prev = format!("*a{}", i - 1);
        bomb.push_str(&format!("  a{i}: &a{i} [{}]\n", vec![prev; 10].join(", ")));
    }
    let f = p.write("bomb.yaml", &bomb);
    p.refused(
        &f,
        &[
            "bomb.yaml:",
            "expansion budget exceeded",
            "hint: YAML aliases expand to too much data",
        ],
    );
}

#[test]
fn deep_documents_are_refused_fast() {
    let p = Probe::new();
    let n = 100_000;
    let prefix = "<request namespace=\"Probe\" procedure=\"Zone\"><data>";
    let xml = p.write(
        "deep.xml",
        &format!(
            "{prefix}{}{}</data></request>",
            "<a>".repeat(n),
            "</a>".repeat(n)
        ),
    );
    // The 129th level: `<request>`, `<data>` and 126 `<a>` are 128.
    let column = prefix.len() + 3 * 126 + 1;
    p.refused(
        &xml,
        &[&format!(
            "deep.xml:1:{column}: elements are nested more than 128 deep"
        )],
    );
    let flow = p.write(
        "flow.yaml",
        &format!(
            "call: Probe/Zone\ndata: {}1{}\n",
            "{a: ".repeat(n),
            "}".repeat(n)
        ),
    );
    p.refused(
        &flow,
        &[
            "flow.yaml:2:515:",
            "the document nests deeper than 128 levels",
            "hint: nesting is limited to 128 levels",
        ],
    );
    // Block style: 2,000 levels of indentation (4 MB).
    let mut block = String::from("call: Probe/Zone\ndata:\n");
    for i in 1..=2000 {
        block.push_str(&"  ".repeat(i));
        block.push_str("a:\n");
    }
    let block = p.write("block.yaml", &block);
    p.refused(
        &block,
        &[
            "block.yaml:130:257:",
            "the document nests deeper than 128 levels",
        ],
    );
    let list = p.write(
        "list.yaml",
        &format!("call: Probe/Zone\ndata:\n  x:\n  {}1\n", "- ".repeat(n)),
    );
    p.refused(
        &list,
        &["list.yaml:4:257: the document nests deeper than 128 levels"],
    );
    let json = p.write(
        "deep.json",
        &format!(
            "{{\"call\": \"Probe/Zone\", \"data\": {{\"x\": {}{}}}}}",
            "[".repeat(n),
            "]".repeat(n)
        ),
    );
    p.refused(
        &json,
        &["deep.json:1:", "hint: nesting is limited to 128 levels"],
    );
}

#[test]
fn oversized_and_endless_request_files_are_refused_before_reading() {
    let p = Probe::new();
    // A sparse file just over the 64 MiB limit: refused from its size, nothing read.
    let big = p.sb.path("big.yaml");
    std::fs::File::create(&big)
        .and_then(|f| f.set_len(64 * 1024 * 1024 + 1))
        .expect("sparse file");
    p.refused(
        &path_str(&big),
        &["big.yaml: file is 67108865 bytes; the limit is 67108864"],
    );
    // A link to an endless device, and a named pipe nobody writes: never read.
    let zero = p.sb.path("zero.yaml");
    std::os::unix::fs::symlink("/dev/zero", &zero).expect("symlink");
    p.refused(
        &path_str(&zero),
        &["zero.yaml: not a regular file", "pipe it to `-`"],
    );
    let fifo = p.sb.path("fifo.yaml");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    p.refused(&path_str(&fifo), &["fifo.yaml: not a regular file"]);
    // Not UTF-8: the line and column of the first bad byte.
    let bad = p.sb.path("latin1.yaml");
    std::fs::write(
        &bad,
        b"call: Probe/Write\ndata: { path: caf\xe9, content: x }\n",
    )
    .expect("write");
    p.refused(
        &path_str(&bad),
        &[
            "latin1.yaml:2:18: not UTF-8",
            "hint: save the file as UTF-8",
        ],
    );
}

#[test]
fn malformed_documents_name_line_and_column() {
    let p = Probe::new();
    let cases: &[(&str, &[u8], &[&str])] = &[
        (
            "mismatched.xml",
            b"<request>\n  <data><a></b></data>\n</request>\n",
            &["mismatched.xml:2:12: expected </a>, found </b> (<a> was opened at line 2, column 9)"],
        ),
        (
            "nul.xml",
            b"<request namespace=\"Probe\" procedure=\"Write\">\n<data><path>a\0b</path></data></request>\n",
            &["nul.xml:2:14: character U+0000 is not allowed in XML"],
        ),
        (
            "unclosed.xml",
            b"<request namespace=\"Probe\" procedure=\"Zone\">\n  <data>\n",
            &["unclosed.xml:3:1: unexpected end of document: <data> at line 2, column 3 is not closed"],
        ),
        (
            "typo.yaml",
            b"call: Probe/Zone\ndatta: {}\n",
            &["typo.yaml:2:1: unknown field `datta`", "hint: did you mean `data`?"],
        ),
        (
            "tab.yaml",
            b"call: Probe/Zone\ndata:\n\tx: 1\n",
            &["tab.yaml:3:1: found character that cannot start any token", "replace the tab"],
        ),
    ];
    for (name, text, expect) in cases {
        let path = p.sb.path(name);
        std::fs::write(&path, text).expect("write");
        p.refused(&path_str(&path), expect);
    }
}

#[test]
fn files_with_a_byte_order_mark_are_read_as_what_they_are() {
    let p = Probe::new();
    p.write(
        "ns/bom.yaml",
        "\u{feff}namespace: Bom\nprocedures:\n  Make:\n    access: public\n    steps:\n      \
         mk: { call: Filesystem Provider/CreateFolder, with: { path: tenants/bom } }\n",
    );
    let r = p.run(&["validate", &path_str(&p.sb.path("ns/bom.yaml"))]);
    assert_eq!(r.code, 0, "a namespace, not a request: {r:?}");
    let request = p.write("bom.yaml", "\u{feff}call: Bom/Make\n");
    let (r, v) = p.run_json(&request);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(v["status"], "committed", "{r:?}");
    assert!(p.sb.data().join("files/tenants/bom").is_dir());
}

#[test]
fn integers_beyond_64_bits_become_floats() {
    let p = Probe::new();
    let request = p.write(
        "n.yaml",
        "call: Probe/Number\ndata: { n: 18446744073709551616 }\n",
    );
    let (r, v) = p.run_json(&request);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        v["data"]["n"].as_f64(),
        Some(18446744073709551616.0),
        "{r:?}"
    );
    let written = std::fs::read_to_string(p.sb.data().join("files/n.txt")).expect("n.txt");
    assert_eq!(
        written.parse::<f64>().ok(),
        Some(18446744073709551616.0),
        "{written}"
    );
}

#[test]
fn a_cycle_refuses_the_run_and_names_the_loop() {
    let p = Probe::new();
    p.write(
        "ns/cycle.yaml",
        "namespace: Cyclic\nprocedures:\n  Loop:\n    access: public\n    steps:\n      \
         a: { call: Filesystem Provider/CreateFolder, needs: [b], with: { path: tenants/a } }\n      \
         b: { call: Filesystem Provider/CreateFolder, needs: [a], with: { path: tenants/b } }\n",
    );
    let request = p.write("loop.yaml", "call: Cyclic/Loop\n");
    let r = p.refused(&request, &["cycle.yaml:"]);
    assert!(
        r.stderr.contains("a -> b -> a") || r.stderr.contains("b -> a -> b"),
        "{r:?}"
    );
}

#[test]
fn xml_requests_to_unknown_or_private_procedures_are_refused() {
    let p = Probe::new();
    let unknown = p.write(
        "unknown.xml",
        "<request namespace=\"Probe\" procedure=\"Zon\"><data/></request>\n",
    );
    p.refused(&unknown, &["did you mean `Zone`"]);
    let private = p.write(
        "private.xml",
        "<request namespace=\"Probe\" procedure=\"Hidden\"><data/></request>\n",
    );
    p.refused(&private, &["private"]);
    let provider = p.write(
        "provider.xml",
        "<request namespace=\"Filesystem Provider\" procedure=\"CreateFolder\"><data><path>tenants/x</path></data></request>\n",
    );
    p.refused(&provider, &["private"]);
}

/// The file outside the root every escape aims at, and its state.
fn outside(p: &Probe) -> (PathBuf, Vec<(String, Vec<u8>, u32)>) {
    use std::os::unix::fs::PermissionsExt;
    let dir = p.sb.path("outside");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let f = dir.join("target.txt");
    std::fs::write(&f, "outside").expect("write");
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    (dir.clone(), state_of(&dir))
}

fn state_of(dir: &Path) -> Vec<(String, Vec<u8>, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| {
            let path = e.expect("entry").path();
            let meta = std::fs::symlink_metadata(&path).expect("meta");
            (
                path.display().to_string(),
                std::fs::read(&path).unwrap_or_default(),
                meta.permissions().mode(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn paths_leaving_the_root_are_refused_and_the_run_rolls_back() {
    let p = Probe::new();
    let (out_dir, before) = outside(&p);
    let root = p.sb.data().join("files");
    std::fs::create_dir_all(&root).expect("root");
    std::os::unix::fs::symlink(&out_dir, root.join("link")).expect("symlink");
    std::fs::hard_link(out_dir.join("target.txt"), root.join("hard.txt")).expect("hard link");
    std::fs::create_dir_all(root.join("mine")).expect("mine");
    let cases: &[(&str, &str, &str)] = &[
        (
            "Write",
            "{ path: ../../outside/new.txt, content: x }",
            "input `path`: \"../../outside/new.txt\" contains `..`; paths may not leave their folder",
        ),
        (
            "Write",
            &format!("{{ path: {}, content: x }}", out_dir.join("new.txt").display()),
            "is absolute; paths are relative to the provider root",
        ),
        (
            "Write",
            "{ path: link/new.txt, content: x }",
            "input `path`: `link` is a symlink that leads outside the provider root",
        ),
        (
            "Mode",
            "{ path: hard.txt, mode: \"0644\" }",
            "input `path`: `hard.txt` has 2 hard links",
        ),
        (
            "Mode",
            "{ path: link/target.txt, mode: \"0644\" }",
            "input `path`: `link` is a symlink that leads outside the provider root",
        ),
        (
            "Mode",
            "{ path: mine, mode: \"4755\" }",
            "input `mode`: 4755 sets the setuid, setgid or sticky bit",
        ),
    ];
    for (i, (procedure, data, expect)) in cases.iter().enumerate() {
        let request = p.write(
            &format!("escape{i}.yaml"),
            &format!("call: Probe/{procedure}\ndata: {data}\n"),
        );
        let (r, v) = p.run_json(&request);
        assert_eq!(r.code, 1, "{data}: {r:?}");
        assert_eq!(v["status"], "rolled_back", "{data}: {r:?}");
        let description = v["error"]["description"].as_str().unwrap_or_default();
        assert!(
            description.contains(expect),
            "{data}: expected `{expect}` in {r:?}"
        );
        assert_eq!(v["undone"], 1, "the first step was undone: {r:?}");
        assert!(
            !root.join("tenants/first").exists(),
            "{data}: first step left"
        );
        assert_eq!(state_of(&out_dir), before, "{data}: the outside changed");
        assert!(!r.stderr.contains("panicked"), "{r:?}");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(root.join("mine"))
        .expect("mine")
        .permissions()
        .mode();
    assert_eq!(mode & 0o7000, 0, "no special bit was set");
    let list = p.run(&["tx", "list"]);
    assert_eq!(
        list.stdout.matches("rolled_back").count(),
        cases.len(),
        "{list:?}"
    );
    assert!(!list.stdout.contains(" committed"), "{list:?}");
}

#[test]
fn dns_injection_never_reaches_the_zone_file() {
    let p = Probe::new();
    let zone_request = p.write("zone.yaml", "call: Probe/Zone\n");
    let (r, _) = p.run_json(&zone_request);
    assert_eq!(r.code, 0, "{r:?}");
    let zone_file = p.sb.data().join("zones/probe.test.zone");
    let before = std::fs::read(&zone_file).expect("zone file");
    let names: &[(&str, &str)] = &[
        ("www\\nevil IN A 192.0.2.66", "contains a line break"),
        ("www\\revil", "line break"),
        ("a;b", "contains `;` (a zone-file comment)"),
        (
            "$INCLUDE /etc/passwd",
            "contains `$` (a zone-file directive)",
        ),
        ("$ORIGIN", "contains `$` (a zone-file directive)"),
        ("ex ample", "contains whitespace"),
        ("a..b", "a name has an empty label"),
        ("a\\\"b", "input `name`"),
        ("a(b", "input `name`"),
    ];
    for (i, (name, expect)) in names.iter().enumerate() {
        let request = p.write(
            &format!("name{i}.yaml"),
            &format!("call: Probe/Record\ndata: {{ name: \"{name}\", text: t }}\n"),
        );
        let (r, v) = p.run_json(&request);
        assert_eq!(r.code, 1, "{name}: {r:?}");
        assert_eq!(v["status"], "rolled_back", "{name}: {r:?}");
        let description = v["error"]["description"].as_str().unwrap_or_default();
        assert!(description.contains("input `name`"), "{name}: {r:?}");
        assert!(
            description.contains(expect),
            "{name}: expected `{expect}` in {r:?}"
        );
        assert_eq!(
            std::fs::read(&zone_file).expect("zone file"),
            before,
            "{name}: the zone file changed"
        );
    }
    // TXT text is data, not zone-file syntax: quoted and escaped, it reloads as one record.
    let texts = [
        "line\\nbreak IN A 192.0.2.66",
        "$INCLUDE /etc/passwd",
        "quote\\\" ; comment",
    ];
    for (i, text) in texts.iter().enumerate() {
        let request = p.write(
            &format!("text{i}.yaml"),
            &format!("call: Probe/Record\ndata: {{ name: t{i}, text: \"{text}\" }}\n"),
        );
        let (r, v) = p.run_json(&request);
        assert_eq!(r.code, 0, "{text}: {r:?}");
        assert_eq!(v["status"], "committed", "{text}: {r:?}");
    }
    let zone = std::fs::read_to_string(&zone_file).expect("zone file");
    let records: Vec<&str> = zone
        .lines()
        .filter(|l| !l.starts_with(';') && !l.starts_with('$') && !l.trim().is_empty())
        .collect();
    assert_eq!(
        records.len(),
        3 + texts.len(),
        "SOA, NS, its address and one line per TXT: {zone}"
    );
    assert!(!zone.contains("\n$INCLUDE"), "{zone}");
    assert!(
        !records
            .iter()
            .any(|l| l.contains("\tA\t") && l.contains("192.0.2.66")),
        "{zone}"
    );
    named_checkzone("probe.test", &zone_file);
}

#[test]
fn secrets_never_reach_output_logs_or_the_state_folder() {
    let p = Probe::new();
    p.write(
        "ns/secret.yaml",
        r#"namespace: Sec
procedures:
  Store:
    access: public
    parallel: false
    inputs:
      password: { type: string, secret: true }
    steps:
      made: { call: Filesystem Provider/CreateFolder, with: { path: tenants } }
      kept: { call: Filesystem Provider/WriteFile, with: { path: tenants/k.txt, content: { $expr: "upper(data.password) + \"!\"" } } }
      fails: { call: Filesystem Provider/WriteFile, with: { path: "nonexistent/{{ data.password }}/x.txt", content: hello } }
"#,
    );
    let secret = "Pw-hunter2-7c1e";
    let computed = secret.to_uppercase();
    let request = p.write(
        "s.yaml",
        &format!("call: Sec/Store\ndata: {{ password: {secret} }}\n"),
    );
    let run = p.run(&["-vv", "run", &request]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("nonexistent/"),
        "the failure is told: {run:?}"
    );
    let list = p.run(&["tx", "list"]);
    let id = list
        .stdout
        .split_whitespace()
        .next()
        .expect("a transaction")
        .to_string();
    let mut shown = vec![("run", run)];
    for args in [
        &["tx", "show", &id][..],
        &["tx", "log", &id][..],
        &["tx", "audit"][..],
    ] {
        let r = p.run(args);
        assert_eq!(r.code, 0, "{args:?}: {r:?}");
        shown.push((args[1], r));
    }
    for (what, r) in &shown {
        for text in [&r.stdout, &r.stderr] {
            assert!(!text.contains(secret), "{what} shows the secret: {r:?}");
            assert!(
                !text.contains(&computed),
                "{what} shows a value computed from it: {r:?}"
            );
        }
    }
    // Nor does any byte of the state folder (journal, markers, trash) hold it in clear.
    for (file, bytes) in p.sb.snapshot() {
        for needle in [secret.as_bytes(), computed.as_bytes()] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{file} holds the secret in clear"
            );
        }
    }
    p.nothing_committed();
}

const SPIN_NS: &str = r#"namespace: Spin
procedures:
  Loop:
    access: public
    parallel: false
    steps:
      first: { call: Filesystem Provider/CreateFolder, with: { path: tenants/first } }
      spin:
        script: |
          let n = 0;
          loop { n += 1; }
  Grow:
    access: public
    parallel: false
    steps:
      first: { call: Filesystem Provider/CreateFolder, with: { path: tenants/first } }
      grow:
        script: |
          let s = "x";
          loop { s += s; }
"#;

/// The 1-based line of the first line of `src` containing `needle`.
fn line_of(src: &str, needle: &str) -> usize {
    match src.lines().position(|l| l.contains(needle)) {
        Some(i) => i + 1,
        None => panic!("`{needle}` not in the source"),
    }
}

#[test]
fn runaway_scripts_stop_at_their_limit_and_roll_back() {
    let p = Probe::new();
    p.write("ns/spin.yaml", SPIN_NS);
    for (procedure, expect) in [
        ("Loop", format!("spin.yaml:{}:", line_of(SPIN_NS, "n += 1"))),
        ("Grow", format!("spin.yaml:{}:", line_of(SPIN_NS, "s += s"))),
    ] {
        let request = p.write(
            &format!("{procedure}.yaml"),
            &format!("call: Spin/{procedure}\n"),
        );
        let (r, v) = p.run_json(&request);
        assert_eq!(r.code, 1, "{r:?}");
        assert_eq!(v["status"], "rolled_back", "{r:?}");
        let description = v["error"]["description"].as_str().unwrap_or_default();
        assert!(
            description.contains(&expect),
            "expected `{expect}` in {r:?}"
        );
        assert!(description.contains("limit"), "names the limit: {r:?}");
        assert!(!r.stderr.contains("panicked"), "{r:?}");
    }
    p.nothing_committed();
}

#[test]
fn concurrent_runs_for_one_tenant_commit_once() {
    let p = Probe::new();
    let request = p.write(
        "race.yaml",
        "call: Probe/Write\ndata: { path: tenants/first/owner.txt, content: me }\n",
    );
    let runs: Vec<Run> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|_| {
                s.spawn(|| {
                    p.run(&[
                        "run",
                        &request,
                        "--quiet",
                        "--wait-lock",
                        "60s",
                        "--output",
                        "json",
                    ])
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("join"))
            .collect()
    });
    let committed = runs.iter().filter(|r| r.code == 0).count();
    assert_eq!(
        committed, 1,
        "exactly one run creates the tenant: {runs:#?}"
    );
    for r in runs.iter().filter(|r| r.code != 0) {
        assert_eq!(r.code, 1, "the others fail and roll back: {r:?}");
        assert!(r.stdout.contains("\"rolled_back\""), "{r:?}");
        assert!(!r.stderr.contains("panicked"), "{r:?}");
    }
    let owner = p.sb.data().join("files/tenants/first/owner.txt");
    assert_eq!(std::fs::read_to_string(owner).expect("owner.txt"), "me");
    let list = p.run(&["tx", "list"]);
    assert_eq!(list.stdout.matches(" committed").count(), 1, "{list:?}");
    assert_eq!(list.stdout.matches("rolled_back").count(), 5, "{list:?}");
}
