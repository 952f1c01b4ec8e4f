//! Property tests: no input makes the providers panic, accepted TXT text reloads exactly,
//! and no path input lands outside the filesystem root.

mod support;

use proptest::prelude::*;
use provisio_providers::dns::zonefile::parse_zone;
use provisio_providers::dns::{DnsProvider, RData};
use provisio_providers::filesystem::FilesystemProvider;
use std::fs;
use support::run;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
}

proptest! {
    // `PROPTEST_CASES` (a long run) overrides the default count.
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64)
    ))]

    #[test]
    fn dns_inputs_never_panic_and_txt_reloads(name in "\\PC{0,20}|[a-z_*.@-]{1,20}", text in any::<String>(), addr in "\\PC{0,16}") {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("zones");
        let p = DnsProvider::zonefile(dir.clone()).expect("provider");
        rt().block_on(async {
            run(&p, "CreateZone", &[("zoneName", "example.com")]).await.expect("zone");
            let _ = run(&p, "AddRecord", &[("zoneName", "example.com"), ("name", &name), ("rrType", "A"), ("address", &addr)]).await;
            let added = run(&p, "AddRecord", &[("zoneName", "example.com"), ("name", &name), ("rrType", "TXT"), ("text", &text)]).await;
            let zone = parse_zone(&fs::read_to_string(dir.join("example.com.zone")).expect("file"), "example.com").expect("file still parses");
            if added.is_ok() {
                prop_assert!(zone.records.iter().any(|r| r.data == RData::Txt(text.clone().into_bytes())));
            }
            Ok(())
        })?;
    }

    #[test]
    fn fs_paths_stay_inside_root(path in "[a-z./\\\\\0 -]{0,24}|\\PC{0,12}") {
        let tmp = tempfile::tempdir().expect("tempdir");
        let p = FilesystemProvider::new(tmp.path().join("root")).expect("provider");
        rt().block_on(async {
            let _ = run(&p, "CreateFolder", &[("path", &path)]).await;
            let _ = run(&p, "WriteFile", &[("path", &path), ("content", "x")]).await;
            let _ = run(&p, "GetUsage", &[("path", &path)]).await;
        });
        let entries: Vec<_> = fs::read_dir(tmp.path()).expect("dir").map(|e| e.expect("e").file_name()).collect();
        prop_assert_eq!(entries, vec![std::ffi::OsString::from("root")]);
    }
}
