//! The mail provider (Exchange 2007 Provider) through the real engine with a durable store:
//! mailboxes for directory users of the embedded directory, accepted domains between
//! tenants and resellers, groups, contacts, per-tenant address lists, out-of-office as
//! Sieve; the files (passwd-file, maps, Maildir++, Sieve) change only when a transaction
//! commits, and bad or hostile input fails with a clear error, leaving state and files as
//! they were.

use provisio_engine::model::Format;
use provisio_engine::{
    parse_request, Catalog, DurableJournal, Engine, EngineOptions, ProviderRegistry, RetryOptions,
    SledStore, Store, TxnResult, TxnState,
};
use provisio_providers::directory::{DirectoryProvider, Dn};
use provisio_providers::error::ErrorProvider;
use provisio_providers::exchange::{ExchangeConfig, ExchangeProvider, PROVIDER};
use provisio_providers::plans::PlansProvider;
use provisio_providers::resource_manager::ResourceManagerProvider;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const BASE: &str = "DC=provisio,DC=local";
const EX: &str = "Exchange 2007 Provider";
const AD: &str = "Active Directory Provider";

struct Env {
    _dir: tempfile::TempDir,
    engine: Engine,
    root: PathBuf,
}

fn env() -> Env {
    env_with(DirectoryProvider::embedded(Dn::parse(BASE).unwrap()).unwrap())
}

fn env_with(directory: DirectoryProvider) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("mail");
    let exchange =
        ExchangeProvider::new(ExchangeConfig::new(&root), directory.backend().clone()).unwrap();
    let mut registry = ProviderRegistry::new();
    registry.register(Arc::new(directory));
    registry.register(Arc::new(exchange));
    registry.register(Arc::new(ResourceManagerProvider::new()));
    registry.register(Arc::new(PlansProvider::new()));
    registry.register(Arc::new(ErrorProvider::new()));
    let catalog = Catalog::new(Vec::new(), &registry).unwrap();
    let options = EngineOptions {
        retry: RetryOptions::default()
            .with_intervals(Duration::from_millis(1), Duration::from_millis(1)),
        step_timeout: Duration::from_secs(60),
        ..EngineOptions::default()
    };
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&dir.path().join("db")).unwrap());
    let journal = Arc::new(DurableJournal::new(store, None, "test"));
    let engine = Engine::new(catalog, registry, options).with_journal(journal);
    Env {
        _dir: dir,
        engine,
        root,
    }
}

/// One transaction of `steps` (id, "Namespace/Procedure", inputs), in order; each step's
/// executeData lands in `data/<id>`.
async fn run(e: &Env, steps: &[(&str, &str, Value)]) -> TxnResult {
    let mut map = serde_json::Map::new();
    let mut prev: Option<&str> = None;
    for (id, call, with) in steps {
        let mut s = json!({
            "call": call,
            "with": with,
            "after": [{"source": "executeData", "destination": "data", "destinationPath": id, "mode": "insert"}],
        });
        if let Some(p) = prev {
            s["needs"] = json!([p]);
        }
        map.insert(id.to_string(), s);
        prev = Some(id);
    }
    let req =
        json!({"procedure": {"type": "write", "steps": Value::Object(map)}, "data": {"x": "1"}});
    let request = parse_request(&req.to_string(), "req.json", Format::Json).unwrap();
    e.engine.run(&request).await.unwrap()
}

async fn ok(e: &Env, steps: &[(&str, &str, Value)]) -> TxnResult {
    let r = run(e, steps).await;
    assert_eq!(r.state, TxnState::Committed, "{:?}", r.failure);
    r
}

/// The failure's message, after checking the transaction rolled back.
async fn fails(e: &Env, steps: &[(&str, &str, Value)]) -> String {
    let r = run(e, steps).await;
    assert_ne!(r.state, TxnState::Committed, "expected a failure");
    let f = r.failure.expect("a failure");
    format!("{:#x} {}", f.code, f.message)
}

fn out(r: &TxnResult, id: &str) -> provisio_engine::Element {
    r.data
        .as_ref()
        .unwrap()
        .child(id)
        .and_then(|s| s.child("executeData"))
        .unwrap_or_else(|| panic!("no {id}"))
        .clone()
}

fn ex(p: &str) -> String {
    format!("{EX}/{p}")
}

fn ad(p: &str) -> String {
    format!("{AD}/{p}")
}

fn org_dn(reseller: &str, org: &str) -> String {
    format!("OU={org},OU={reseller},{BASE}")
}

fn user_dn(reseller: &str, org: &str, cn: &str) -> String {
    format!("CN={cn},{}", org_dn(reseller, org))
}

/// Every file the mail server reads, by name, with its content (homes included).
fn snapshot(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    fn walk(base: &Path, at: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        let Ok(rd) = std::fs::read_dir(at) else {
            return;
        };
        let mut items: Vec<_> = rd.flatten().collect();
        items.sort_by_key(|e| e.path());
        for e in items {
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            if p.is_dir() {
                out.push((format!("{rel}/"), Vec::new()));
                walk(base, &p, out);
            } else {
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    walk(root, root, &mut out);
    out
}

fn read(root: &Path, name: &str) -> String {
    std::fs::read_to_string(root.join(name)).unwrap_or_default()
}

fn state(e: &Env, key: &str) -> Option<Value> {
    e.engine
        .state_value(PROVIDER, key.as_bytes())
        .unwrap()
        .map(|v| serde_json::from_slice(&v).unwrap())
}

/// Reseller `R` with organizations `A` and `B`, users ann and bob in A and carl in B,
/// fabrikam.test accepted for A, contoso.test for B, reseller.test for the reseller, and two
/// registered stores.
async fn tenants(e: &Env) {
    let ou = |container: String, name: &str| json!({"container": container, "class": "organizationalUnit", "name": format!("OU={name}")});
    let user = |container: String, cn: &str, upn: &str| {
        json!({"container": container, "class": "user", "name": format!("CN={cn}"),
               "properties": {"property": [{"@name": "userPrincipalName", "@mode": "replace", "value": [upn]}]}})
    };
    ok(
        e,
        &[
            ("r", &ad("Create Object"), ou(BASE.into(), "R")),
            ("a", &ad("Create Object"), ou(format!("OU=R,{BASE}"), "A")),
            ("b", &ad("Create Object"), ou(format!("OU=R,{BASE}"), "B")),
            ("ann", &ad("Create Object"), user(org_dn("R", "A"), "ann", "ann@fabrikam.test")),
            ("bob", &ad("Create Object"), user(org_dn("R", "A"), "bob", "bob@fabrikam.test")),
            ("carl", &ad("Create Object"), user(org_dn("R", "B"), "carl", "carl@contoso.test")),
            ("d1", &ex("CreateSMTPDomain"), json!({"organization": org_dn("R", "A"), "domainName": "fabrikam.test"})),
            ("d2", &ex("CreateSMTPDomain"), json!({"organization": org_dn("R", "B"), "domainName": "contoso.test"})),
            ("d3", &ex("CreateSMTPDomain"), json!({"organization": format!("OU=R,{BASE}"), "domainName": "reseller.test", "domainType": "InternalRelay"})),
            ("st", "Exchange 2007 Resource Manager/AddExchangeResources", json!({"mailStores": {"mailStore": [
                {"serverName": "ex1", "mailStoreName": "DB1", "megabytes": "100"},
                {"serverName": "ex1", "mailStoreName": "DB 2", "megabytes": "100"}]}})),
        ],
    )
    .await;
}

fn enable(user: &str, addresses: &[&str]) -> Value {
    json!({"user": user, "emailAddresses": {"value": addresses}, "quotaKB": "2048",
           "mailStore": {"serverName": "ex1", "mailStoreName": "DB1"}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailbox_reaches_the_files_only_when_its_transaction_commits() {
    let e = env();
    tenants(&e).await;
    let ann = user_dn("R", "A", "ann");
    let r = ok(
        &e,
        &[(
            "m",
            &ex("CreateMailbox"),
            enable(&ann, &["Ann@fabrikam.test", "ann.lee@fabrikam.test"]),
        )],
    )
    .await;
    let m = out(&r, "m");
    assert_eq!(
        m.child("primarySmtpAddress").unwrap().string_value(),
        "ann@fabrikam.test"
    );
    let home = PathBuf::from(m.child("homeDirectory").unwrap().string_value());
    assert_eq!(home, e.root.join("stores/ex1/db1/fabrikam.test/ann"));
    // The passwd-file userdb: no password, the quota rule as an extra field.
    let passwd = read(&e.root, "passwd");
    let uid = rustix_uid();
    assert_eq!(
        passwd,
        format!(
            "ann@fabrikam.test::{uid}:{uid}::{}::userdb_quota_rule=*:storage=2048K\n",
            home.display()
        )
        .replace(&format!("{uid}:{uid}"), &format!("{uid}:{}", rustix_gid()))
    );
    assert_eq!(
        read(&e.root, "virtual_mailbox_maps"),
        "ann@fabrikam.test\tstores/ex1/db1/fabrikam.test/ann/Maildir/\nann.lee@fabrikam.test\tstores/ex1/db1/fabrikam.test/ann/Maildir/\n"
    );
    assert_eq!(
        read(&e.root, "virtual_alias_maps"),
        "ann.lee@fabrikam.test\tann@fabrikam.test\n"
    );
    assert_eq!(
        read(&e.root, "virtual_mailbox_domains"),
        "contoso.test\tOK\nfabrikam.test\tOK\n"
    );
    assert_eq!(
        read(&e.root, "relay_domains"),
        "reseller.test\tInternalRelay\n"
    );
    for sub in ["cur", "new", "tmp"] {
        assert!(home.join("Maildir").join(sub).is_dir(), "{sub}");
    }
    assert_eq!(
        std::fs::read_to_string(home.join("Maildir/maildirsize")).unwrap(),
        format!("{}S\n0 0\n", 2048 * 1024)
    );

    // A transaction that mailbox-enables bob and then fails: files and state as before.
    let before = snapshot(&e.root);
    let bob = user_dn("R", "A", "bob");
    let msg = fails(
        &e,
        &[
            (
                "m",
                &ex("CreateMailbox"),
                enable(&bob, &["bob@fabrikam.test"]),
            ),
            (
                "fail",
                "Error Provider/SetError",
                json!({"hr": "0x80070057", "desc": "asked to fail"}),
            ),
        ],
    )
    .await;
    assert!(msg.contains("asked to fail"), "{msg}");
    assert_eq!(snapshot(&e.root), before);
    assert!(state(&e, "addr/bob@fabrikam.test").is_none());

    // Quota change rewrites maildirsize's definition; a move moves the folder.
    ok(
        &e,
        &[(
            "q",
            &ex("SetMailboxQuota"),
            json!({"user": &ann, "quotaKB": "4096"}),
        )],
    )
    .await;
    assert!(std::fs::read_to_string(home.join("Maildir/maildirsize"))
        .unwrap()
        .starts_with(&format!("{}S\n", 4096 * 1024)));
    std::fs::write(
        home.join("Maildir/new/1.msg"),
        b"Subject: x\r\n\r\nkept\r\n",
    )
    .unwrap();
    let r = ok(
        &e,
        &[("mv", &ex("MoveMailbox"), json!({"user": "ann@fabrikam.test", "mailStore": {"serverName": "EX1", "mailStoreName": "db 2"}}))],
    )
    .await;
    assert_eq!(out(&r, "mv").child("moved").unwrap().string_value(), "true");
    let moved = e.root.join("stores/ex1/db=202/fabrikam.test/ann");
    assert!(!home.exists());
    assert_eq!(
        std::fs::read(moved.join("Maildir/new/1.msg")).unwrap(),
        b"Subject: x\r\n\r\nkept\r\n"
    );
    assert!(read(&e.root, "passwd").contains(&format!("::{}::", moved.display())));

    // Disable keeps the mail on disk; the mail system forgets the addresses and the alias.
    ok(&e, &[("d", &ex("DisableMailbox"), json!({"user": &ann}))]).await;
    assert_eq!(read(&e.root, "passwd"), "");
    assert_eq!(read(&e.root, "virtual_mailbox_maps"), "");
    assert!(moved.join("Maildir/new/1.msg").exists());
    assert!(state(&e, "alias/ann").is_none());
    // Enabled again (a new alias), then deleted: the folder goes at commit.
    ok(&e, &[("m", &ex("CreateMailbox"), json!({"user": "ann@fabrikam.test", "emailAddresses": {"value": ["ann@fabrikam.test"]}, "alias": "ann2", "quotaKB": "1024", "mailStore": {"serverName": "ex1", "mailStoreName": "DB 2"}}))]).await;
    ok(
        &e,
        &[(
            "d",
            &ex("DeleteMailbox"),
            json!({"user": "ann@fabrikam.test"}),
        )],
    )
    .await;
    assert!(!moved.exists());
    assert_eq!(read(&e.root, "passwd"), "");
}

fn rustix_uid() -> u32 {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap()
}

fn rustix_gid() -> u32 {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::gid(&m))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domains_belong_to_one_tenant_unless_a_reseller_shares_them() {
    let e = env();
    tenants(&e).await;
    // Another tenant's domain.
    let msg = fails(
        &e,
        &[(
            "d",
            &ex("CreateSMTPDomain"),
            json!({"organization": org_dn("R", "B"), "domainName": "fabrikam.test"}),
        )],
    )
    .await;
    assert!(
        msg.contains("The SMTP Domain fabrikam.test is not available"),
        "{msg}"
    );
    // The reseller's domain, for both of its organizations.
    for o in ["A", "B"] {
        let r = ok(
            &e,
            &[(
                "d",
                &ex("CreateSMTPDomain"),
                json!({"organization": org_dn("R", o), "domainName": "reseller.test"}),
            )],
        )
        .await;
        assert_eq!(out(&r, "d").child("shared").unwrap().string_value(), "true");
    }
    // Not for an organization of another reseller.
    ok(&e, &[
        ("r", &ad("Create Object"), json!({"container": BASE, "class": "organizationalUnit", "name": "OU=S"})),
        ("c", &ad("Create Object"), json!({"container": format!("OU=S,{BASE}"), "class": "organizationalUnit", "name": "OU=C"})),
    ]).await;
    let msg = fails(
        &e,
        &[(
            "d",
            &ex("CreateSMTPDomain"),
            json!({"organization": org_dn("S", "C"), "domainName": "reseller.test"}),
        )],
    )
    .await;
    assert!(
        msg.contains("The SMTP Domain reseller.test is not available"),
        "{msg}"
    );
    // Mailboxes of A and B both in the shared domain.
    ok(
        &e,
        &[(
            "m",
            &ex("CreateMailbox"),
            enable(&user_dn("R", "A", "ann"), &["ann@reseller.test"]),
        )],
    )
    .await;
    ok(
        &e,
        &[(
            "m",
            &ex("CreateMailbox"),
            enable(
                &user_dn("R", "B", "carl"),
                &["carl@reseller.test", "carl@contoso.test"],
            ),
        )],
    )
    .await;
    // The domain types and the listing per organization.
    let r = ok(
        &e,
        &[(
            "l",
            &ex("GetOrganizationDomains"),
            json!({"organization": org_dn("R", "B")}),
        )],
    )
    .await;
    let list: Vec<String> = out(&r, "l")
        .child("SMTPDomains")
        .unwrap()
        .elements()
        .map(|d| {
            format!(
                "{} {} {}",
                d.child("domainName").unwrap().string_value(),
                d.child("domainTypeName").unwrap().string_value(),
                d.child("shared").unwrap().string_value()
            )
        })
        .collect();
    assert_eq!(
        list,
        [
            "contoso.test Authoritative false",
            "reseller.test InternalRelay true"
        ]
    );
    // A domain still holding addresses stays; the share of an organization without
    // addresses there goes; the undo of a creation is the engine's.
    let msg = fails(
        &e,
        &[(
            "d",
            &ex("DeleteSMTPDomain"),
            json!({"organization": org_dn("R", "B"), "domainName": "contoso.test"}),
        )],
    )
    .await;
    assert!(msg.contains("still holds 1 e-mail addresses"), "{msg}");
    let msg = fails(&e, &[
        ("d", &ex("CreateSMTPDomain"), json!({"organization": org_dn("R", "A"), "domainName": "new.test", "domainType": "ExternalRelay"})),
        ("f", "Error Provider/SetError", json!({"hr": "0x80004005", "desc": "no"})),
    ]).await;
    assert!(msg.contains("no"), "{msg}");
    assert!(state(&e, "domain/new.test").is_none());
    assert!(!read(&e.root, "relay_domains").contains("new.test"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_lists_groups_and_out_of_office_stay_within_the_tenant() {
    let e = env();
    tenants(&e).await;
    let ann = user_dn("R", "A", "ann");
    ok(&e, &[
        ("m1", &ex("CreateMailbox"), enable(&ann, &["ann@fabrikam.test"])),
        ("m2", &ex("CreateMailbox"), enable(&user_dn("R", "A", "bob"), &["bob@fabrikam.test"])),
        ("m3", &ex("CreateMailbox"), json!({"user": user_dn("R", "B", "carl"), "emailAddresses": {"value": ["carl@contoso.test"]}, "quotaKB": "2048", "database": "EX1\\db 2"})),
        ("g", &ex("CreateDistributionList"), json!({"organization": org_dn("R", "A"), "name": "Sales", "emailAddress": "sales@fabrikam.test", "members": {"member": ["ann@fabrikam.test", "bob@fabrikam.test"]}})),
        ("c", &ex("CreateContact"), json!({"organization": org_dn("R", "A"), "name": "Partner", "externalEmailAddress": "pat@partner.example", "displayName": "Pat Partner"})),
    ]).await;
    assert!(read(&e.root, "virtual_alias_maps")
        .contains("sales@fabrikam.test\tann@fabrikam.test,bob@fabrikam.test\n"));
    // Another tenant's mailbox cannot join A's group.
    let msg = fails(&e, &[("a", &ex("AddDistributionListMember"), json!({"organization": org_dn("R", "A"), "name": "Sales", "member": "carl@contoso.test"}))]).await;
    assert!(msg.contains("is no mailbox or group of"), "{msg}");
    // Address lists hold only their own organization's objects.
    let list = |r: &TxnResult| -> Vec<String> {
        out(r, "l")
            .child("addressList")
            .unwrap()
            .elements()
            .map(|x| {
                format!(
                    "{}:{}",
                    x.child("type").unwrap().string_value(),
                    x.child("emailAddress").unwrap().string_value()
                )
            })
            .collect()
    };
    let a = ok(
        &e,
        &[(
            "l",
            &ex("GetAddressList"),
            json!({"organization": org_dn("R", "A")}),
        )],
    )
    .await;
    assert_eq!(
        list(&a),
        [
            "mailbox:ann@fabrikam.test",
            "mailbox:bob@fabrikam.test",
            "contact:pat@partner.example",
            "group:sales@fabrikam.test"
        ]
    );
    let b = ok(
        &e,
        &[(
            "l",
            &ex("GetAddressList"),
            json!({"organization": org_dn("R", "B")}),
        )],
    )
    .await;
    assert_eq!(list(&b), ["mailbox:carl@contoso.test"]);
    // `database` named the store as HMC does; the output uses the registered spelling.
    let g = ok(
        &e,
        &[("g", &ex("GetMailbox"), json!({"user": "carl@contoso.test"}))],
    )
    .await;
    let ms = out(&g, "g")
        .child("mailbox")
        .unwrap()
        .child("mailStore")
        .unwrap()
        .clone();
    assert_eq!(ms.child("mailStoreName").unwrap().string_value(), "DB 2");
    // Out-of-office answers A's senders only; the text cannot break out of its string.
    ok(&e, &[("o", &ex("SetOutOfOffice"), json!({"user": &ann, "subject": "Away \"now\"", "message": "Back Monday.\";\ndiscard;\nkeep \\ \"x\"", "days": "2"}))]).await;
    let home = e.root.join("stores/ex1/db1/fabrikam.test/ann");
    let script = std::fs::read_to_string(home.join("sieve/oof.sieve")).unwrap();
    assert!(
        script
            .contains("if envelope :is \"from\" [\"ann@fabrikam.test\", \"bob@fabrikam.test\"] {"),
        "{script}"
    );
    assert!(!script.contains("contoso"), "{script}");
    assert!(script.contains(":subject \"Away \\\"now\\\"\""), "{script}");
    assert!(
        script.contains("\"Back Monday.\\\";\ndiscard;\nkeep \\\\ \\\"x\\\"\";"),
        "{script}"
    );
    assert!(read(&e.root, "passwd").contains(&format!(
        " userdb_sieve=file:{}\n",
        home.join("sieve/oof.sieve").display()
    )));
    // A new mailbox in A joins the senders of A's scripts; cleared, the script goes.
    ok(
        &e,
        &[
            (
                "u",
                &ad("Create Object"),
                json!({"container": org_dn("R", "A"), "class": "user", "name": "CN=dan"}),
            ),
            (
                "m",
                &ex("CreateMailbox"),
                enable(&user_dn("R", "A", "dan"), &["dan@fabrikam.test"]),
            ),
        ],
    )
    .await;
    let script = std::fs::read_to_string(home.join("sieve/oof.sieve")).unwrap();
    assert!(script.contains("\"dan@fabrikam.test\""), "{script}");
    ok(
        &e,
        &[(
            "o",
            &ex("SetOutOfOffice"),
            json!({"user": &ann, "enabled": "false"}),
        )],
    )
    .await;
    assert!(!home.join("sieve/oof.sieve").exists());
    assert!(!read(&e.root, "passwd").contains("userdb_sieve"));
    // Disabling a member takes it out of the group.
    ok(
        &e,
        &[(
            "d",
            &ex("DisableMailbox"),
            json!({"user": "bob@fabrikam.test"}),
        )],
    )
    .await;
    assert!(
        read(&e.root, "virtual_alias_maps").contains("sales@fabrikam.test\tann@fabrikam.test\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_a_clear_error_and_nothing_left_behind() {
    let e = env();
    tenants(&e).await;
    ok(&e, &[
        ("p", "Managed Plans/CreatePlan", json!({"planName": "Small", "limits": {"mailboxQuotaKB": "1024"}})),
        ("m", &ex("CreateMailbox"), json!({"user": user_dn("R", "A", "bob"), "emailAddresses": {"value": ["bob@fabrikam.test"]}, "alias": "bob", "quotaKB": "512"})),
    ]).await;
    let before = snapshot(&e.root);
    let ann = user_dn("R", "A", "ann");
    let with = |extra: Value| {
        let mut v = json!({"user": &ann, "emailAddresses": {"value": ["ann@fabrikam.test"]}, "quotaKB": "512"});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    };
    let cases: Vec<(Value, &str)> = vec![
        (
            with(json!({"emailAddresses": {"value": ["ann at fabrikam.test"]}})),
            "input `emailAddresses/value[1]` is not an e-mail address",
        ),
        (
            with(json!({"emailAddresses": {"value": ["ann@fabrikam..test"]}})),
            "is not an e-mail address",
        ),
        (
            with(json!({"emailAddresses": {"value": ["ann\n@fabrikam.test"]}})),
            "is not an e-mail address",
        ),
        (
            with(json!({"emailAddresses": {"value": ["a:b@fabrikam.test"]}})),
            "is not an e-mail address",
        ),
        (
            with(json!({"emailAddresses": {"value": ["\"ann\"@fabrikam.test"]}})),
            "is not an e-mail address",
        ),
        (
            with(
                json!({"emailAddresses": {"value": ["ann@fabrikam.test", "x@fabrikam.test\nroot::0:0::/:"]}}),
            ),
            "input `emailAddresses/value[2]` is not an e-mail address",
        ),
        (with(json!({"alias": "ann\nroot"})), "input `alias` must be"),
        (with(json!({"alias": "a:b"})), "input `alias` must be"),
        (
            with(json!({"alias": "bob"})),
            "the alias bob is already taken",
        ),
        (
            with(json!({"emailAddresses": {"value": ["bob@fabrikam.test"]}, "alias": "ann"})),
            "the e-mail address bob@fabrikam.test is already in use",
        ),
        (
            with(json!({"emailAddresses": {"value": ["ann@contoso.test"]}})),
            "The SMTP Domain contoso.test is not available",
        ),
        (
            with(json!({"emailAddresses": {"value": ["ann@nowhere.test"]}})),
            "nowhere.test is not an accepted domain",
        ),
        (
            with(json!({"quotaKB": "4096", "planName": "Small"})),
            "a quota of 4096 KB is beyond plan Small: its mailboxQuotaKB is 1024",
        ),
        (
            with(json!({"planName": "Gold"})),
            "plan Gold does not exist",
        ),
        (
            with(json!({"quotaKB": "0"})),
            "input `quotaKB` must be a whole number",
        ),
        (
            with(json!({"mailStore": {"serverName": "ex9", "mailStoreName": "DB1"}})),
            "mail store ex9/DB1 does not exist",
        ),
        (
            with(json!({"mailStore": {"serverName": "ex1"}})),
            "go together",
        ),
        (with(json!({"database": "DB1"})), "input `database` must be"),
        (
            with(json!({"database": "ex9\\DB1"})),
            "mail store ex9/DB1 does not exist",
        ),
        (
            with(json!({"user": user_dn("R", "A", "nobody")})),
            "is not in the directory",
        ),
        (
            with(json!({"user": "ghost@fabrikam.test"})),
            "is not in the directory",
        ),
        (
            with(json!({"user": format!("OU=A,OU=R,{BASE}")})),
            "is not a user",
        ),
        (
            with(
                json!({"user": user_dn("R", "A", "bob"), "emailAddresses": {"value": ["bob2@fabrikam.test"]}, "alias": "bob2"}),
            ),
            "already has a mailbox (bob@fabrikam.test)",
        ),
    ];
    for (input, expect) in cases {
        let msg = fails(&e, &[("m", &ex("CreateMailbox"), input.clone())]).await;
        assert!(
            msg.contains(expect),
            "{input}: expected {expect:?}, got {msg}"
        );
        assert_eq!(snapshot(&e.root), before, "{input}");
        assert!(state(&e, "user/cn=ann,ou=a,ou=r,dc=provisio,dc=local").is_none());
    }
    // The plan's ceiling is the default quota.
    let r = ok(&e, &[("m", &ex("CreateMailbox"), json!({"user": &ann, "emailAddresses": {"value": ["ann@fabrikam.test"]}, "planName": "small"}))]).await;
    assert_eq!(
        out(&r, "m").child("quotaKB").unwrap().string_value(),
        "1024"
    );
    // Other procedures.
    for (proc_, input, expect) in [
        (
            "CreateSMTPDomain",
            json!({"organization": org_dn("R", "A"), "domainName": "bad_domain.test"}),
            "is not a domain name",
        ),
        (
            "CreateSMTPDomain",
            json!({"organization": org_dn("R", "A"), "domainName": "x.test", "domainType": "Open"}),
            "must be one of Authoritative, InternalRelay, ExternalRelay",
        ),
        (
            "CreateSMTPDomain",
            json!({"organization": "not a dn", "domainName": "x.test"}),
            "input `organization` is not an LDAP path or DN",
        ),
        (
            "SetOutOfOffice",
            json!({"user": &ann, "message": "x\u{7}y"}),
            "input `message` holds the control character",
        ),
        (
            "SetOutOfOffice",
            json!({"user": &ann, "message": "x", "days": "99"}),
            "input `days` must be",
        ),
        (
            "MoveMailbox",
            json!({"user": &ann, "mailStore": {"serverName": "ex1", "mailStoreName": "Nope"}}),
            "mail store ex1/Nope does not exist",
        ),
        (
            "SetMailboxQuota",
            json!({"user": &ann, "quotaKB": "2048"}),
            "beyond plan Small",
        ),
        (
            "DisableMailbox",
            json!({"user": user_dn("R", "B", "carl")}),
            "has no mailbox",
        ),
        (
            "CreateContact",
            json!({"organization": org_dn("R", "A"), "name": "X", "externalEmailAddress": "x@y.test\r\nBcc: z@w.test"}),
            "is not an e-mail address",
        ),
        (
            "CreateDistributionList",
            json!({"organization": org_dn("R", "B"), "name": "All", "emailAddress": "all@fabrikam.test"}),
            "The SMTP Domain fabrikam.test is not available",
        ),
    ] {
        let before = snapshot(&e.root);
        let msg = fails(&e, &[("x", &ex(proc_), input.clone())]).await;
        assert!(
            msg.contains(expect),
            "{proc_} {input}: expected {expect:?}, got {msg}"
        );
        assert_eq!(snapshot(&e.root), before, "{proc_}");
    }
    // Two mailboxes in the passwd-file, one line each.
    assert_eq!(read(&e.root, "passwd").lines().count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preview_says_what_would_happen_and_writes_nothing() {
    let e = env();
    tenants(&e).await;
    let before = snapshot(&e.root);
    let req = json!({"procedure": {"type": "write", "steps": {
        "m": {"call": ex("CreateMailbox"), "with": enable(&user_dn("R", "A", "ann"), &["ann@fabrikam.test"])},
        "n": {"call": ex("CreateMailbox"), "with": enable(&user_dn("R", "A", "zed"), &["zed@fabrikam.test"])},
    }}});
    let request = parse_request(&req.to_string(), "req.json", Format::Json).unwrap();
    let plan = e.engine.plan(&request).await.unwrap();
    let shown = format!("{plan:?}");
    assert!(shown.contains("mailbox-enable CN=ann"), "{shown}");
    assert!(shown.contains("is not in the directory"), "{shown}");
    assert_eq!(snapshot(&e.root), before);
    assert!(state(&e, "addr/ann@fabrikam.test").is_none());
}

/// The same check against a real directory server: the ldap backend of the directory
/// provider (a private OpenLDAP slapd), whose users the mail provider reads over LDAP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_of_a_real_ldap_directory_gets_a_mailbox() {
    use provisio_providers::directory::ldap::{LdapBackend, LdapSettings, TlsMode};
    use provisio_test_support::slapd::{self, Slapd};
    let Some(s) = Slapd::start() else {
        return;
    };
    let mut settings = LdapSettings::new(
        s.ldaps_url(),
        slapd::ADMIN_DN,
        s.password_file(),
        slapd::SUFFIX,
    );
    settings.tls = TlsMode::Ldaps;
    settings.tls_ca_file = Some(s.ca_file());
    let e = env_with(DirectoryProvider::with_backend(Arc::new(
        LdapBackend::new(settings).unwrap(),
    )));
    let org = format!("ou=Mail,{}", slapd::TESTS_OU);
    ok(&e, &[
        ("ou", &ad("Create Object"), json!({"container": slapd::TESTS_OU, "class": "organizationalUnit", "name": "ou=Mail"})),
        ("u", &ad("Create Object"), json!({"container": &org, "class": "user", "name": "cn=ann",
            "properties": {"property": [{"@name": "userPrincipalName", "@mode": "replace", "value": ["ann@fabrikam.test"]}]}})),
        ("d", &ex("CreateSMTPDomain"), json!({"organization": &org, "domainName": "fabrikam.test"})),
    ]).await;
    // By UPN (an LDAP search) and by DN (an LDAP read).
    let r = ok(&e, &[("m", &ex("CreateMailbox"), json!({"user": "ann@fabrikam.test", "emailAddresses": {"value": ["ann@fabrikam.test"]}, "quotaKB": "1024"}))]).await;
    assert_eq!(
        out(&r, "m")
            .child("primarySmtpAddress")
            .unwrap()
            .string_value(),
        "ann@fabrikam.test"
    );
    assert!(read(&e.root, "passwd").starts_with("ann@fabrikam.test::"));
    let msg = fails(&e, &[("m", &ex("CreateMailbox"), json!({"user": format!("cn=nobody,{org}"), "emailAddresses": {"value": ["nobody@fabrikam.test"]}, "quotaKB": "1024"}))]).await;
    assert!(msg.contains("is not in the directory"), "{msg}");
    let msg = fails(&e, &[("m", &ex("CreateMailbox"), json!({"user": "ghost@fabrikam.test", "emailAddresses": {"value": ["ghost@fabrikam.test"]}, "quotaKB": "1024"}))]).await;
    assert!(msg.contains("is not in the directory"), "{msg}");
}

/// Concurrent transactions, every third one failing after its mailbox-enable: the files list
/// exactly the committed mailboxes (renders of commits that overlap are grouped, none lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_and_rollbacks_leave_exactly_the_committed_mailboxes() {
    let e = Arc::new(env());
    tenants(&e).await;
    let mut users = Vec::new();
    for i in 0..30 {
        users.push((
            format!("u{i}"),
            ad("Create Object"),
            json!({"container": org_dn("R", "A"), "class": "user", "name": format!("CN=user{i}")}),
        ));
    }
    let steps: Vec<(&str, &str, Value)> = users
        .iter()
        .map(|(a, b, c)| (a.as_str(), b.as_str(), c.clone()))
        .collect();
    ok(&e, &steps).await;
    let mut tasks = Vec::new();
    for i in 0..30 {
        let e = e.clone();
        tasks.push(tokio::spawn(async move {
            let m = enable(
                &user_dn("R", "A", &format!("user{i}")),
                &[&format!("user{i}@fabrikam.test")],
            );
            let mbx = ex("CreateMailbox");
            let mut steps = vec![("m", mbx.as_str(), m)];
            if i % 3 == 0 {
                steps.push((
                    "f",
                    "Error Provider/SetError",
                    json!({"hr": "0x80004005", "desc": "no"}),
                ));
            }
            run(&e, &steps).await.state
        }));
    }
    let mut committed = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        let state = t.await.unwrap();
        assert_eq!(
            state == TxnState::Committed,
            i % 3 != 0,
            "user{i}: {state:?}"
        );
        if i % 3 != 0 {
            committed.push(format!("user{i}@fabrikam.test"));
        }
    }
    committed.sort();
    let mut listed: Vec<String> = read(&e.root, "passwd")
        .lines()
        .map(|l| l.split(':').next().unwrap().to_string())
        .collect();
    listed.sort();
    assert_eq!(listed, committed);
    for i in 0..30 {
        let home = e.root.join(format!("stores/ex1/db1/fabrikam.test/user{i}"));
        assert_eq!(
            home.join("Maildir/maildirsize").exists(),
            i % 3 != 0,
            "user{i}"
        );
    }
}

/// A room and a piece of equipment: disabled directory users mailbox-enabled as resources,
/// with their type and capacity in GetMailbox and in their organization's address list (not
/// in another's), files like any mailbox's; a rolled-back one leaves nothing; calendar
/// processing and bad input are refused naming the input; the allocation and plan charge a
/// caller records come back from GetMailbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_mailboxes_are_rooms_and_equipment_in_their_tenants_list() {
    let e = env();
    tenants(&e).await;
    let user = |cn: &str, upn: &str| {
        json!({"container": org_dn("R", "A"), "class": "user", "name": format!("CN={cn}"),
               "properties": {"property": [{"@name": "userPrincipalName", "@mode": "replace", "value": [upn]}]}})
    };
    let room = user_dn("R", "A", "room1@fabrikam.test");
    let beamer = user_dn("R", "A", "beamer@fabrikam.test");
    let mut room_in = enable(&room, &["room1@fabrikam.test"]);
    room_in["resourceType"] = json!("room");
    room_in["resourceCapacity"] = json!("12");
    room_in["allocation"] =
        json!({"organization": org_dn("R", "A"), "mailbox": "room1@fabrikam.test"});
    room_in["planCharge"] = json!({"customerName": org_dn("R", "A"), "limit": "maxMailboxes"});
    let mut beamer_in = enable(&beamer, &["beamer@fabrikam.test"]);
    beamer_in["resourceType"] = json!("Equipment");

    // Rolled back: nothing of it in state or files.
    let before = snapshot(&e.root);
    let r = run(
        &e,
        &[
            (
                "u",
                &ad("Create Object"),
                user("room1@fabrikam.test", "room1@fabrikam.test"),
            ),
            ("m", &ex("CreateResourceMailbox"), room_in.clone()),
            (
                "x",
                "Error Provider/SetError",
                json!({"hr": "0x80004005", "desc": "later failure"}),
            ),
        ],
    )
    .await;
    assert_ne!(r.state, provisio_engine::TxnState::Committed);
    assert_eq!(snapshot(&e.root), before);
    assert!(state(&e, "addr/room1@fabrikam.test").is_none());

    ok(
        &e,
        &[
            (
                "u",
                &ad("Create Object"),
                user("room1@fabrikam.test", "room1@fabrikam.test"),
            ),
            (
                "v",
                &ad("Create Object"),
                user("beamer@fabrikam.test", "beamer@fabrikam.test"),
            ),
            ("m", &ex("CreateResourceMailbox"), room_in),
            ("n", &ex("CreateResourceMailbox"), beamer_in),
        ],
    )
    .await;
    let r = ok(
        &e,
        &[
            (
                "g",
                &ex("GetMailbox"),
                json!({"user": "room1@fabrikam.test"}),
            ),
            (
                "l",
                &ex("GetAddressList"),
                json!({"organization": org_dn("R", "A")}),
            ),
            (
                "k",
                &ex("GetAddressList"),
                json!({"organization": org_dn("R", "B")}),
            ),
        ],
    )
    .await;
    let g = out(&r, "g");
    let m = g.child("mailbox").unwrap();
    assert_eq!(m.child("resourceType").unwrap().string_value(), "Room");
    assert_eq!(m.child("resourceCapacity").unwrap().string_value(), "12");
    let a = m.child("allocation").unwrap();
    assert_eq!(
        a.child("organization").unwrap().string_value(),
        org_dn("R", "A")
    );
    assert_eq!(
        a.child("mailbox").unwrap().string_value(),
        "room1@fabrikam.test"
    );
    let c = m.child("planCharge").unwrap();
    assert_eq!(c.child("limit").unwrap().string_value(), "maxMailboxes");
    assert_eq!(c.child("amount").unwrap().string_value(), "1");
    let list = out(&r, "l");
    let entries: Vec<String> = list
        .child("addressList")
        .unwrap()
        .elements()
        .map(|x| {
            format!(
                "{} {} {}",
                x.child("emailAddress").unwrap().string_value(),
                x.child("resourceType")
                    .map(|t| t.string_value())
                    .unwrap_or_default(),
                x.child("resourceCapacity")
                    .map(|t| t.string_value())
                    .unwrap_or_default()
            )
        })
        .collect();
    assert!(
        entries.contains(&"room1@fabrikam.test Room 12".to_string()),
        "{entries:?}"
    );
    assert!(
        entries.contains(&"beamer@fabrikam.test Equipment ".to_string()),
        "{entries:?}"
    );
    let other = format!("{:?}", out(&r, "k"));
    assert!(!other.contains("room1"), "{other}");
    // A mailbox like any other for the mail server.
    let passwd = read(&e.root, "passwd");
    assert!(passwd.contains("room1@fabrikam.test::"), "{passwd}");
    assert!(passwd.contains("beamer@fabrikam.test::"), "{passwd}");
    // The directory user stays disabled (userAccountControl 514).
    let r = ok(
        &e,
        &[(
            "p",
            &ad("Get Properties"),
            json!({"path": room, "attributes": "userAccountControl"}),
        )],
    )
    .await;
    assert!(format!("{:?}", out(&r, "p")).contains("514"));

    // Refused, naming the input, nothing written.
    let before = snapshot(&e.root);
    ok(
        &e,
        &[(
            "w",
            &ad("Create Object"),
            user("hall@fabrikam.test", "hall@fabrikam.test"),
        )],
    )
    .await;
    let hall = user_dn("R", "A", "hall@fabrikam.test");
    for (field, value, want) in [
        (
            "resourceType",
            json!(null),
            "input `resourceType` is required (Room or Equipment)",
        ),
        (
            "resourceType",
            json!("Desk"),
            "input `resourceType` must be one of Room, Equipment",
        ),
        (
            "resourceCapacity",
            json!("-1"),
            "input `resourceCapacity` must be a whole number",
        ),
        (
            "automateProcessing",
            json!("AutoAccept"),
            "input `automateProcessing` is not implemented",
        ),
        (
            "planCharge",
            json!({"customerName": "x", "limit": "mailboxQuotaKB"}),
            "input `planCharge/limit` must be a counted limit",
        ),
        (
            "allocation",
            json!({"organization": "x"}),
            "input `allocation/mailbox` is required",
        ),
    ] {
        let mut v = enable(&hall, &["hall@fabrikam.test"]);
        v["resourceType"] = json!("Room");
        if value.is_null() {
            v.as_object_mut().unwrap().remove(field);
        } else {
            v[field] = value;
        }
        let msg = fails(&e, &[("m", &ex("CreateResourceMailbox"), v)]).await;
        assert!(msg.contains(want), "{field}: {msg}");
    }
    assert_eq!(snapshot(&e.root), before);
    // A user mailbox with a capacity but no type: refused too.
    let mut v = enable(&hall, &["hall@fabrikam.test"]);
    v["resourceCapacity"] = json!("3");
    let msg = fails(&e, &[("m", &ex("CreateMailbox"), v)]).await;
    assert!(
        msg.contains("input `resourceCapacity` needs `resourceType`"),
        "{msg}"
    );
}
