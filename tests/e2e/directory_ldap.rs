//! The directory provider's ldap backend through the real binary against a private slapd:
//! a configuration file with `[providers.directory] backend = "ldap"`, requests that commit
//! (checked with ldapsearch and a bind as the new user), one that rolls back (nothing left
//! on the server), a server that is down (transient, retried, then failed naming the
//! server), and the password nowhere in the journal or in `tx show`.

use crate::util::{repo, Sandbox};
use provisio_test_support::slapd::{self, Slapd};

const PASSWORD: &str = "Secr3t-e2e-Passw0rd";

fn config(sb: &Sandbox, s: &Slapd) -> std::path::PathBuf {
    sb.write(
        "provisio.toml",
        &format!(
            r#"data_dir = "{data}"

[retry.calls]
initial = "10ms"
budget = "1s"

[providers.directory]
backend = "ldap"
base_dn = "{base}"

[providers.directory.ldap]
servers = ["{url}"]
bind_dn = "{admin}"
password_file = "{pw}"
tls = "ldaps"
tls_ca_file = "{ca}"
timeout_secs = 2
"#,
            data = sb.data().display(),
            base = slapd::SUFFIX,
            url = s.ldaps_url(),
            admin = slapd::ADMIN_DN,
            pw = s.password_file().display(),
            ca = s.ca_file().display(),
        ),
    )
}

fn run(sb: &Sandbox, cfg: &std::path::Path, args: &[&str]) -> crate::util::Run {
    let mut all = vec!["--config", cfg.to_str().unwrap()];
    all.extend_from_slice(args);
    sb.run_with(&all, &repo().join("namespaces"))
}

/// A request with these steps; its data holds the password marked `do-not-log` (as an MPS
/// request carries it), which steps read as `{{ data.password }}`.
fn request(steps: serde_json::Value) -> String {
    serde_json::to_string_pretty(&serde_json::json!({
        "procedure": {"type": "write", "parallel": false, "steps": steps},
        "data": {"password": {"@do-not-log": "1", "#text": PASSWORD}}
    }))
    .unwrap()
}

#[test]
fn ldap_backend_end_to_end_through_the_binary() {
    let Some(mut s) = Slapd::start() else { return };
    let sb = Sandbox::new();
    let cfg = config(&sb, &s);
    let ou = format!("OU=Contoso,{}", slapd::TESTS_OU);
    let user = format!("CN=John Smith,{ou}");
    let group = format!("CN=Staff,{ou}");
    let ns = "Active Directory Provider";
    let req = sb.write(
        "create.json",
        &request(serde_json::json!({
            "org": {"call": format!("{ns}/Create Object"), "with": {"container": slapd::TESTS_OU, "class": "organizationalUnit", "name": "OU=Contoso"}},
            "user": {"call": format!("{ns}/Create Object"), "with": {"container": ou, "class": "user", "name": "CN=John Smith", "properties": {"property": [
                {"@name": "userPrincipalName", "@mode": "replace", "value": ["john.smith@contoso.test"]},
                {"@name": "givenName", "@mode": "replace", "value": ["John"]}
            ]}}},
            "pw": {"call": format!("{ns}/User Set Password"), "with": {"path": format!("LDAP://{user}"), "newPassword": "{{ data.password }}"}},
            "enable": {"call": format!("{ns}/Enable User"), "with": {"path": format!("LDAP://{user}")}},
            "group": {"call": format!("{ns}/Create Object"), "with": {"container": ou, "class": "group", "name": "CN=Staff"}},
            "member": {"call": format!("{ns}/Group Add Member"), "with": {"group": format!("LDAP://{group}"), "member": format!("LDAP://{user}")}}
        })),
    );
    let r = run(&sb, &cfg, &["run", req.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    // Checked with ldapsearch and a bind, not with the provider.
    let found = s.search(
        &ou,
        "(cn=John Smith)",
        &[
            "sAMAccountName",
            "memberOf",
            "userAccountControl",
            "objectClass",
        ],
    );
    assert_eq!(found.len(), 1, "{found:?}");
    let get = |a: &str| -> Vec<String> {
        found[0]
            .1
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(a))
            .map(|(_, v)| v.clone())
            .collect()
    };
    assert_eq!(
        get("sAMAccountName"),
        vec!["john.smith_contoso.t"],
        "derived from the UPN (20 characters)"
    );
    assert_eq!(get("memberOf").len(), 1, "{found:?}");
    assert!(get("memberOf")[0].eq_ignore_ascii_case(&group), "{found:?}");
    assert_eq!(get("userAccountControl"), vec!["512"]);
    assert!(s.can_bind(&user, PASSWORD));
    // The password is nowhere in the journal, nor in `tx show`.
    let list = run(&sb, &cfg, &["tx", "list"]);
    let id = list
        .stdout
        .split_whitespace()
        .next()
        .expect("a transaction")
        .to_string();
    let show = run(&sb, &cfg, &["tx", "show", &id]);
    assert_eq!(show.code, 0, "{show:?}");
    assert!(show.stdout.contains("User Set Password"), "{show:?}");
    assert!(!show.stdout.contains(PASSWORD) && !show.stderr.contains(PASSWORD));
    for (path, bytes) in sb.snapshot() {
        assert!(
            !bytes
                .windows(PASSWORD.len())
                .any(|w| w == PASSWORD.as_bytes()),
            "the password is in {path}"
        );
    }
    // A failing last step rolls everything back on the server.
    let req = sb.write(
        "rollback.json",
        &request(serde_json::json!({
            "ann": {"call": format!("{ns}/Create Object"), "with": {"container": ou, "class": "user", "name": "CN=Ann Lee", "properties": {"property": [
                {"@name": "userPrincipalName", "@mode": "replace", "value": ["ann@contoso.test"]}]}}},
            "mail": {"call": format!("{ns}/Set Properties"), "with": {"path": format!("LDAP://{user}"), "properties": {"property": [
                {"@name": "mail", "@mode": "replace", "value": ["john@contoso.test"]}]}}},
            "bad": {"call": format!("{ns}/Create Object"), "with": {"container": format!("OU=Nowhere,{ou}"), "class": "user", "name": "CN=X"}}
        })),
    );
    let r = run(&sb, &cfg, &["run", req.to_str().unwrap()]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("OU=Nowhere") || r.stdout.contains("OU=Nowhere"),
        "the error names the missing container: {r:?}"
    );
    assert!(
        s.search(&ou, "(cn=Ann Lee)", &["cn"]).is_empty(),
        "Ann was removed again"
    );
    assert!(
        s.search(&user, "(mail=*)", &["mail"]).is_empty(),
        "the mail was restored (absent)"
    );
    // The server down: transient, retried, then failed naming the server; nothing left.
    s.stop();
    let req = sb.write(
        "down.json",
        &request(serde_json::json!({
            "bob": {"call": format!("{ns}/Create Object"), "with": {"container": ou, "class": "contact", "name": "CN=Bob"}}
        })),
    );
    let r = run(&sb, &cfg, &["run", req.to_str().unwrap()]);
    assert_ne!(r.code, 0, "{r:?}");
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(all.contains(&s.ldaps_url()), "names the server: {r:?}");
    s.restart().expect("restart");
    assert!(s.search(&ou, "(cn=Bob)", &["cn"]).is_empty());
}

#[test]
fn ldap_configuration_errors_name_the_file_and_key() {
    let sb = Sandbox::new();
    let cfg = sb.write(
        "provisio.toml",
        "[providers.directory]\nbackend = \"ldap\"\nbase_dn = \"DC=x\"\n\n[providers.directory.ldap]\nservers = [\"ldaps://dc1.example.test\"]\npassword_file = \"pw\"\n",
    );
    let r = run(&sb, &cfg, &["config", "show"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("provisio.toml") && r.stderr.contains("providers.directory.ldap.bind_dn"),
        "{r:?}"
    );
    let cfg = sb.write(
        "provisio.toml",
        "[providers.directory]\nbackend = \"ldap\"\nbase_dn = \"DC=x\"\n\n[providers.directory.ldap]\nservers = [\"http://dc1\"]\nbind_dn = \"CN=a\"\npassword_file = \"pw\"\n",
    );
    let r = run(&sb, &cfg, &["config", "show"]);
    assert!(
        r.stderr.contains("providers.directory.ldap.servers") && r.stderr.contains("http://dc1"),
        "{r:?}"
    );
    let cfg = sb.write(
        "provisio.toml",
        "[providers.directory]\nbackend = \"ldap\"\nbase_dn = \"DC=x\"\n\n[providers.directory.ldap]\nservers = [\"ldap://dc1\"]\nbind_dn = \"CN=a\"\npassword_file = \"pw\"\ntls = \"maybe\"\n",
    );
    let r = run(&sb, &cfg, &["config", "show"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("tls"), "{r:?}");
}
