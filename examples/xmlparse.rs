//! Parses the 10 MB XML request of `benches/engine.rs` (xml_10MB) a given number of times,
//! for profilers that cannot run criterion (callgrind instruction counts are repeatable on a
//! loaded machine):
//! `valgrind --tool=callgrind target/release/examples/xmlparse parse|located|request|events|none [MB] [reps]`.
//! Uses mimalloc like the binary; build with `--features system-alloc` for the system allocator.
//! `none` only builds the document, so its count is the baseline to subtract.

#[path = "../benches/support/mod.rs"]
mod support;

use provisio_engine::data::xml;
use provisio_engine::model::Format;
use provisio_engine::request::parse_request;
use std::hint::black_box;
use std::process::ExitCode;
use std::time::Instant;

/// The binary's allocator (`--features system-alloc` for the system one).
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map_or("parse", String::as_str);
    let mb: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10);
    let reps: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1);
    let doc = support::xml_request(mb * 1024 * 1024);
    let limits = xml::Limits::default();
    let start = Instant::now();
    for _ in 0..reps {
        let ok = match mode {
            "parse" => xml::parse(black_box(&doc), &limits).is_ok(),
            "located" => xml::parse_located(black_box(&doc), &limits).is_ok(),
            "request" => parse_request(black_box(&doc), "bench.xml", Format::Xml).is_ok(),
            "events" => {
                let mut r = quick_xml::Reader::from_str(black_box(&doc));
                loop {
                    match r.read_event() {
                        Ok(quick_xml::events::Event::Eof) => break true,
                        Err(_) => break false,
                        Ok(e) => drop(black_box(e)),
                    }
                }
            }
            "none" => true,
            other => {
                eprintln!("unknown mode `{other}`: parse|located|request|events|none");
                return ExitCode::FAILURE;
            }
        };
        if !ok {
            eprintln!("{mode}: the document does not parse");
            return ExitCode::FAILURE;
        }
    }
    let per = start.elapsed().as_secs_f64() / reps.max(1) as f64;
    println!(
        "{mode}: {} bytes, {:.2} ms per parse, {:.1} MB/s",
        doc.len(),
        per * 1e3,
        doc.len() as f64 / per / 1e6
    );
    ExitCode::SUCCESS
}
