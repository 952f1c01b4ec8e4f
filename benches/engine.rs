//! Issue-2 benchmarks (engine core): per-step executor overhead with an in-process no-op
//! provider and no journal (1,000-step chain and 1,000-step fan-out), compiling a
//! 10,000-step procedure (built in code, and parsed from YAML), and parsing a 10 MB XML
//! request (`data::xml::parse`, `data::xml::parse_located`, `request::parse_request`).
//!
//! Also (formerly wall-clock tests): YAML and JSON namespace parsing at 5,000 and 20,000
//! steps (linear: the 20k figure should be ~4x the 5k one) and the refusal of YAML nested
//! 100,000 deep, a rhai condition over a small and a 2,000-user data tree, and a simple
//! data-path selection.
//!
//! `cargo bench --bench engine`; per-step figures are the reported time / 1,000.

#[path = "support/mod.rs"]
mod support;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use provisio_engine::data::xml;
use provisio_engine::data::Element;
use provisio_engine::model::{CallTarget, Format};
use provisio_engine::request::{parse_namespaces, parse_request};
use provisio_engine::TxnState;
use provisio_engine::{compile_procedure, compile_request, Limits};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

/// The binary's allocator, so the figures are what `provisio` does
/// (`--features system-alloc` measures the system allocator).
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("cannot start tokio: {e}");
            None
        }
    }
}

fn exec_overhead(c: &mut Criterion) {
    let Some(rt) = runtime() else { return };
    let procs = vec![
        support::noop_procedure("Seq1000", 1000, true),
        support::noop_procedure("Fan1000", 1000, false),
    ];
    let env = match support::env(vec![support::namespace(procs)], None) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("setup: {e:#}");
            return;
        }
    };
    let mut g = c.benchmark_group("exec_noop_1000_steps");
    g.sample_size(30).measurement_time(Duration::from_secs(8));
    g.throughput(Throughput::Elements(1000));
    for name in ["Seq1000", "Fan1000"] {
        let req = support::request(name, Element::new("data"));
        let program = match env.engine.compile(&req) {
            Ok(p) => Arc::new(p),
            Err(e) => {
                eprintln!("compile {name}: {e}");
                continue;
            }
        };
        // Execution only (compiled once): the executor's per-step cost.
        g.bench_function(BenchmarkId::new("run_program", name), |b| {
            b.to_async(&rt).iter(|| async {
                let r = env
                    .engine
                    .run_program(
                        program.clone(),
                        Element::new("data"),
                        Element::new("context"),
                    )
                    .await;
                if r.state != TxnState::Committed || r.calls != 1000 {
                    eprintln!("unexpected result: {:?} {:?}", r.state, r.failure);
                }
                black_box(r)
            })
        });
        // Compile + execute, as `provisio run` does.
        g.bench_function(BenchmarkId::new("run", name), |b| {
            b.to_async(&rt)
                .iter(|| async { black_box(env.engine.run(&req).await.map(|r| r.calls).ok()) })
        });
    }
    g.finish();
}

fn compile_10k(c: &mut Criterion) {
    let model = support::namespace(vec![
        support::noop_procedure("Seq10k", 10_000, true),
        support::noop_procedure("Fan10k", 10_000, false),
    ]);
    let env = match support::env(vec![model], None) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("setup: {e:#}");
            return;
        }
    };
    let limits = Limits::default();
    let mut g = c.benchmark_group("compile_10k_steps");
    g.sample_size(20).measurement_time(Duration::from_secs(8));
    for name in ["Seq10k", "Fan10k"] {
        let target = CallTarget {
            namespace: support::NS.into(),
            procedure: name.into(),
        };
        g.bench_function(BenchmarkId::new("compile_procedure", name), |b| {
            b.iter(|| black_box(compile_procedure(env.engine.catalog(), &target, &limits).is_ok()))
        });
        let req = support::request(name, Element::new("data"));
        g.bench_function(BenchmarkId::new("compile_request", name), |b| {
            b.iter(|| black_box(compile_request(env.engine.catalog(), &req, &limits).is_ok()))
        });
    }
    g.finish();

    // From YAML text: parse the namespace file, then compile. Only meaningful once the YAML
    // parser is linear; a slow run here is the parser, see `yaml_parse_only`.
    let yaml = support::noop_yaml("SeqYaml", 10_000, true);
    let mut g = c.benchmark_group("compile_10k_steps_yaml");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Bytes(yaml.len() as u64));
    g.bench_function("yaml_parse_only", |b| {
        b.iter(|| black_box(parse_namespaces(&yaml, "bench.yaml", Format::Yaml).is_ok()))
    });
    g.bench_function("yaml_parse_catalog_compile", |b| {
        b.iter(|| {
            let Ok(ns) = parse_namespaces(&yaml, "bench.yaml", Format::Yaml) else {
                return false;
            };
            let Ok(env) = support::env(ns, None) else {
                return false;
            };
            let target = CallTarget {
                namespace: support::NS.into(),
                procedure: "SeqYaml".into(),
            };
            black_box(compile_procedure(env.engine.catalog(), &target, &limits).is_ok())
        })
    });
    g.finish();
}

fn xml_parse(c: &mut Criterion) {
    let doc = support::xml_request(10 * 1024 * 1024);
    let limits = xml::Limits::default();
    match (
        xml::parse(&doc, &limits),
        parse_request(&doc, "bench.xml", Format::Xml),
    ) {
        (Ok(_), Ok(_)) => {}
        (a, b) => {
            eprintln!(
                "the generated document does not parse: {:?} {:?}",
                a.err(),
                b.err()
            );
            return;
        }
    }
    let mut g = c.benchmark_group("xml_10MB");
    g.sample_size(20).measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Bytes(doc.len() as u64));
    g.bench_function("data_xml_parse", |b| {
        b.iter(|| black_box(xml::parse(black_box(&doc), &limits).is_ok()))
    });
    g.bench_function("data_xml_parse_located", |b| {
        b.iter(|| black_box(xml::parse_located(black_box(&doc), &limits).is_ok()))
    });
    g.bench_function("request_parse_request", |b| {
        b.iter(|| black_box(parse_request(black_box(&doc), "bench.xml", Format::Xml).is_ok()))
    });
    // Baseline: quick-xml's event reader alone (no tree), the floor for any tree builder.
    g.bench_function("quick_xml_events_only", |b| {
        b.iter(|| {
            let mut r = quick_xml::Reader::from_str(black_box(&doc));
            let mut n = 0usize;
            loop {
                match r.read_event() {
                    Ok(quick_xml::events::Event::Eof) | Err(_) => break,
                    Ok(_) => n += 1,
                }
            }
            black_box(n)
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    exec_overhead,
    compile_10k,
    xml_parse,
    foreach_filter,
    parse_growth,
    script_condition,
    path_select
);
criterion_main!(benches);

/// Issue 5: a 1,000-iteration forEach with a rhai filter (half the items pass) against the
/// same forEach without a filter; the difference is what the filter adds (target < 5 ms).
fn foreach_filter(c: &mut Criterion) {
    let Some(rt) = runtime() else { return };
    let yaml = r#"namespace: Filter Bench
procedures:
  Plain:
    access: public
    steps:
      each:
        forEach: [{ name: user, path: user }]
        executeData: { touched: 1 }
  Filtered:
    access: public
    steps:
      each:
        forEach: [{ name: user, path: user, filter: "item.enabled == \"true\"" }]
        executeData: { touched: 1 }
"#;
    let namespaces = match provisio_engine::request::parse_namespaces(
        yaml,
        "bench.yaml",
        provisio_engine::model::Format::Yaml,
    ) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("setup: {e:?}");
            return;
        }
    };
    let env = match support::env(namespaces, None) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("setup: {e:#}");
            return;
        }
    };
    let mut data = Element::new("data");
    for i in 0..1000 {
        let mut u = Element::new("user");
        u.push(Element::with_text("name", format!("u{i}")));
        u.push(Element::with_text(
            "enabled",
            if i % 2 == 0 { "true" } else { "false" },
        ));
        data.push(u);
    }
    let mut g = c.benchmark_group("foreach_1000");
    g.sample_size(20).measurement_time(Duration::from_secs(6));
    for name in ["Plain", "Filtered"] {
        let req = provisio_engine::model::Request {
            target: provisio_engine::model::RequestTarget::Call(
                provisio_engine::model::CallTarget {
                    namespace: "Filter Bench".into(),
                    procedure: name.into(),
                },
            ),
            data: data.clone(),
            context: Element::new("context"),
            format: provisio_engine::model::Format::Yaml,
            source_ref: provisio_engine::model::SourceRef::default(),
        };
        let program = match env.engine.compile(&req) {
            Ok(p) => Arc::new(p),
            Err(e) => {
                eprintln!("compile {name}: {e}");
                continue;
            }
        };
        g.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                let r = env
                    .engine
                    .run_program(program.clone(), data.clone(), Element::new("context"))
                    .await;
                if r.state != TxnState::Committed {
                    eprintln!("unexpected: {:?}", r.failure);
                }
                black_box(r.state)
            })
        });
    }
    g.finish();
}

/// A namespace of `n` steps in block YAML.
fn steps_yaml(n: usize) -> String {
    let mut s =
        String::from("namespace: Big\nprocedures:\n  Many:\n    access: public\n    steps:\n");
    for i in 0..n {
        s.push_str(&format!(
            "      s{i}:\n        call: A/B\n        with: {{ x: \"{{{{ data.v{i} }}}}\" }}\n"
        ));
    }
    s
}

/// A namespace of `n` steps in JSON, minified or pretty.
fn steps_json(n: usize, pretty: bool) -> String {
    let steps: serde_json::Map<String, serde_json::Value> = (0..n)
        .map(|i| {
            (
                format!("s-{i}"),
                serde_json::json!({ "call": "A/B", "with": { "x": format!("{{{{ data.v{i} }}}}") } }),
            )
        })
        .collect();
    let j = serde_json::json!({ "namespace": "N", "procedures": { "P": { "steps": steps } } });
    let r = if pretty {
        serde_json::to_string_pretty(&j)
    } else {
        serde_json::to_string(&j)
    };
    r.unwrap_or_default()
}

/// Parse time against the step count (it must grow linearly), and the refusal of a YAML
/// document nested 100,000 deep (it must be refused before serde_yaml recurses into it).
fn parse_growth(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse_growth");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    for n in [5_000usize, 20_000] {
        let docs = [
            ("yaml", steps_yaml(n), Format::Yaml),
            ("json_min", steps_json(n, false), Format::Json),
            ("json_pretty", steps_json(n, true), Format::Json),
        ];
        for (what, doc, format) in docs {
            g.bench_function(BenchmarkId::new(what, n), |b| {
                b.iter(|| black_box(parse_namespaces(black_box(&doc), "big", format).is_ok()))
            });
        }
    }
    let flow = format!(
        "namespace: A\nx: {}1{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let mut block = String::from("namespace: A\nx:\n");
    for i in 0..100_000usize {
        block.push_str(&" ".repeat(i % 200));
        block.push_str("- \n");
    }
    for (what, doc) in [
        ("yaml_deep_flow_100k", flow),
        ("yaml_deep_block_100k", block),
    ] {
        g.bench_function(what, |b| {
            b.iter(|| {
                black_box(parse_namespaces(black_box(&doc), "deep.yaml", Format::Yaml).is_err())
            })
        });
    }
    g.finish();
}

/// A compiled rhai condition evaluated over a small and a 2,000-user data tree.
fn script_condition(c: &mut Criterion) {
    use provisio_engine::{ScriptEngine, ScriptOrigin, Vars};
    use serde_json::json;
    let e = ScriptEngine::default();
    let users: Vec<serde_json::Value> = (0..2000)
        .map(|i| json!({"name": format!("user{i}"), "enabled": i % 2 == 0, "groups": ["a", "b"]}))
        .collect();
    let user = json!({"name": "ann", "enabled": true, "groups": ["staff"]});
    let big = Vars::new().with("data", &json!({"user": user, "all": users}));
    let small = Vars::new().with("data", &json!({ "user": user }));
    let src = r#"data.user.enabled && data.user.groups.contains("staff")"#;
    let Ok(script) = e.compile(src, &ScriptOrigin::new("bench.yaml", 1, 1)) else {
        eprintln!("the condition does not compile");
        return;
    };
    let mut g = c.benchmark_group("script_condition");
    for (what, vars) in [("small", &small), ("2000_users", &big)] {
        g.bench_function(what, |b| {
            b.iter(|| black_box(e.eval_condition(&script, vars).unwrap_or(false)))
        });
    }
    g.finish();
}

/// A simple path (`organization/dc`) selected from a small tree.
fn path_select(c: &mut Criterion) {
    use provisio_engine::data::Path;
    let mut org = Element::new("organization");
    for i in 0..4 {
        org.push(Element::with_text("dc", format!("dc{i}")));
    }
    org.push(Element::new("users"));
    let mut root = Element::new("data");
    root.push(org);
    let Ok(p) = Path::parse("organization/dc") else {
        return;
    };
    c.bench_function("path_select_simple", |b| {
        b.iter(|| black_box(p.select(black_box(&root)).len()))
    });
}
