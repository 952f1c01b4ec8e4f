//! The mail provider (Exchange 2007 Provider) end to end: the real binary mailbox-enables
//! directory users of the embedded directory; a real Dovecot (IMAP, LMTP, Pigeonhole) reads
//! the passwd-file and the Maildir++ folders it rendered; Python's smtplib.LMTP delivers and
//! imaplib reads the message back; out-of-office answers a sender of the same tenant and not
//! one of another tenant; a request that fails after its mailbox-enable leaves no user and
//! delivery to it is refused. Skips without Dovecot unless `PROVISIO_REQUIRE_MAIL=1`.

use crate::util::{Run, Sandbox};
use provisio_test_support::dovecot::Dovecot;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

const BASE: &str = "DC=provisio,DC=local";

fn ou(id: &str, container: &str, name: &str) -> String {
    format!(
        r#"<execute id="{id}" namespace="Active Directory Provider" procedure="Create Object"><executeData><container>LDAP://{container}</container><class>organizationalUnit</class><name>OU={name}</name></executeData></execute>"#
    )
}

fn user(id: &str, org: &str, cn: &str, upn: &str) -> String {
    format!(
        r#"<execute id="{id}" namespace="Active Directory Provider" procedure="Create Object"><executeData><container>LDAP://{org}</container><class>user</class><name>CN={cn}</name><properties><property name="userPrincipalName" mode="replace"><value>{upn}</value></property></properties></executeData></execute>"#
    )
}

fn domain(id: &str, org: &str, d: &str) -> String {
    format!(
        r#"<execute id="{id}" namespace="Exchange 2007 Provider" procedure="CreateSMTPDomain"><executeData><organization>LDAP://{org}</organization><domainName>{d}</domainName><domainType>Authoritative</domainType></executeData></execute>"#
    )
}

fn mailbox(id: &str, user_dn: &str, address: &str) -> String {
    format!(
        r#"<execute id="{id}" namespace="Exchange 2007 Provider" procedure="CreateMailbox"><executeData><user>LDAP://{user_dn}</user><emailAddresses><value>{address}</value></emailAddresses><quotaKB>10240</quotaKB><mailStore><serverName>ex1</serverName><mailStoreName>DB1</mailStoreName></mailStore></executeData></execute>"#
    )
}

fn request(steps: &[String]) -> String {
    format!(
        "<request><data/><procedure>{}</procedure></request>\n",
        steps.join("\n")
    )
}

/// Python's LMTP and IMAP clients: `deliver PORT FROM TO SUBJECT` prints `ok` or the refusal
/// (`550 …`); `fetch PORT LOGIN PASSWORD` prints each INBOX message's Subject header.
pub(crate) const CLIENT: &str = r#"
import imaplib, smtplib, sys
cmd = sys.argv[1]
if cmd == "deliver":
    port, frm, to, subject = int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    msg = "From: %s\r\nTo: %s\r\nSubject: %s\r\nMessage-ID: <%s.%s@provisio.test>\r\n\r\nHello.\r\n" % (frm, to, subject, subject.replace(" ", "-"), frm)
    l = smtplib.LMTP("127.0.0.1", port)
    try:
        l.sendmail(frm, [to], msg)
        print("ok")
    except smtplib.SMTPRecipientsRefused as e:
        code, text = e.recipients[to]
        print(code, text.decode())
    l.quit()
elif cmd == "fetch":
    port, login, password = int(sys.argv[2]), sys.argv[3], sys.argv[4]
    m = imaplib.IMAP4("127.0.0.1", port)
    m.login(login, password)
    m.select("INBOX")
    typ, data = m.search(None, "ALL")
    for n in data[0].split():
        typ, parts = m.fetch(n, "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        print(parts[0][1].decode().strip())
    m.logout()
"#;

pub(crate) fn python(script: &Path, args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg(script)
        .args(args)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "python3 {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn run(sb: &Sandbox, cfg: &Path, name: &str, xml: &str) -> Run {
    let req = sb.write(name, xml);
    sb.run(&[
        "--config",
        cfg.to_str().unwrap(),
        "run",
        req.to_str().unwrap(),
    ])
}

/// Waits up to 5 s for `n` messages in the sendmail capture.
fn sent(d: &Dovecot, n: usize) -> Vec<String> {
    for _ in 0..50 {
        let s = d.sent();
        if s.len() >= n {
            return s;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    d.sent()
}

#[test]
fn a_mailbox_receives_over_lmtp_answers_its_tenant_when_away_and_a_rollback_refuses_delivery() {
    let sb = Sandbox::new();
    // Dovecot's unprivileged processes walk down to the passwd-file and the homes.
    std::fs::set_permissions(sb.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = sb.path("mail");
    let cfg = sb.write(
        "provisio.toml",
        &format!(
            "[providers.exchange]\nmail_root = \"{}\"\nmail_uid = 65534\nmail_gid = 65534\n",
            root.display()
        ),
    );
    let fab = format!("OU=Fabrikam,{BASE}");
    let con = format!("OU=Contoso,{BASE}");
    let setup = request(&[
        ou("o1", BASE, "Fabrikam"),
        ou("o2", BASE, "Contoso"),
        user("u1", &fab, "ann", "ann@fabrikam.test"),
        user("u2", &fab, "bob", "bob@fabrikam.test"),
        user("u3", &con, "carl", "carl@contoso.test"),
        domain("d1", &fab, "fabrikam.test"),
        domain("d2", &con, "contoso.test"),
        r#"<execute id="st" namespace="Exchange 2007 Resource Manager" procedure="AddExchangeResources"><executeData><mailStores><mailStore><serverName>ex1</serverName><mailStoreName>DB1</mailStoreName><megabytes>1000</megabytes></mailStore></mailStores></executeData></execute>"#.to_string(),
        mailbox("m1", &format!("CN=ann,{fab}"), "ann@fabrikam.test"),
        mailbox("m2", &format!("CN=bob,{fab}"), "bob@fabrikam.test"),
        mailbox("m3", &format!("CN=carl,{con}"), "carl@contoso.test"),
    ]);
    let r = run(&sb, &cfg, "setup.xml", &setup);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("status=\"committed\""), "{r:?}");
    let passwd = std::fs::read_to_string(root.join("passwd")).unwrap();
    assert_eq!(passwd.lines().count(), 3, "{passwd}");
    assert!(
        passwd.contains("ann@fabrikam.test::65534:65534::"),
        "{passwd}"
    );

    let Some(d) = Dovecot::start(&root) else {
        return;
    };
    let client = sb.write("client.py", CLIENT);
    let lmtp = d.lmtp_port.to_string();
    let imap = d.imap_port.to_string();
    let master = |u: &str| format!("{u}*master");

    // Delivered over LMTP, read back over IMAP by an independent client.
    assert_eq!(
        python(
            &client,
            &[
                "deliver",
                &lmtp,
                "carl@contoso.test",
                "ann@fabrikam.test",
                "first message"
            ]
        ),
        "ok",
        "{}",
        d.log()
    );
    let subjects = python(
        &client,
        &[
            "fetch",
            &imap,
            &master("ann@fabrikam.test"),
            &d.master_password,
        ],
    );
    assert_eq!(subjects, "Subject: first message", "{}", d.log());
    // The quota reached Dovecot through the passwd-file's extra field.
    let who = Command::new("doveadm")
        .arg("-c")
        .arg(d.config_file())
        .args(["user", "ann@fabrikam.test"])
        .output()
        .unwrap();
    let who = String::from_utf8_lossy(&who.stdout);
    assert!(who.contains("quota_rule\t*:storage=10240K"), "{who}");

    // Out-of-office: a reply to the same tenant's sender only.
    let oof = request(&[r#"<execute id="oof" namespace="Exchange 2007 Provider" procedure="SetOutOfOffice"><executeData><user>ann@fabrikam.test</user><subject>Away until Monday</subject><message>I am out of the office.</message></executeData></execute>"#.to_string()]);
    let r = run(&sb, &cfg, "oof.xml", &oof);
    assert_eq!(r.code, 0, "{r:?}");
    // The passwd-file now names the Sieve script; Dovecot sees it from its next re-read.
    assert!(
        d.wait_for_user_field("ann@fabrikam.test", "sieve"),
        "{}",
        d.user("ann@fabrikam.test")
    );
    for from in ["carl@contoso.test", "bob@fabrikam.test"] {
        let subject = format!("question from {from}");
        assert_eq!(
            python(
                &client,
                &["deliver", &lmtp, from, "ann@fabrikam.test", &subject]
            ),
            "ok"
        );
    }
    let replies = sent(&d, 1);
    // Give a wrong second reply the time to appear.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let replies = if d.sent().len() > replies.len() {
        d.sent()
    } else {
        replies
    };
    assert_eq!(replies.len(), 1, "{replies:?}\n{}", d.log());
    let reply = &replies[0];
    assert!(reply.contains("-- bob@fabrikam.test"), "{reply}");
    assert!(reply.contains("Subject: Away until Monday"), "{reply}");
    assert!(reply.contains("I am out of the office."), "{reply}");
    assert!(
        reply.contains("Auto-Submitted: auto-replied (vacation)"),
        "{reply}"
    );
    let subjects = python(
        &client,
        &[
            "fetch",
            &imap,
            &master("ann@fabrikam.test"),
            &d.master_password,
        ],
    );
    assert_eq!(subjects.lines().count(), 3, "{subjects}");

    // A request that fails after its mailbox-enable: no mailbox, delivery refused.
    let before = std::fs::read(root.join("passwd")).unwrap();
    let failing = request(&[
        user("u4", &fab, "dan", "dan@fabrikam.test"),
        mailbox("m4", &format!("CN=dan,{fab}"), "dan@fabrikam.test"),
        r#"<execute id="fail" namespace="Error Provider" procedure="SetError"><executeData><hr>0x80070057</hr><desc>the provisioning system said no</desc></executeData></execute>"#.to_string(),
    ]);
    let r = run(&sb, &cfg, "failing.xml", &failing);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("the provisioning system said no")
            || r.stderr.contains("the provisioning system said no"),
        "{r:?}"
    );
    assert_eq!(std::fs::read(root.join("passwd")).unwrap(), before);
    assert!(!root.join("stores/ex1/db1/fabrikam.test/dan").exists());
    let refused = python(
        &client,
        &[
            "deliver",
            &lmtp,
            "bob@fabrikam.test",
            "dan@fabrikam.test",
            "to dan",
        ],
    );
    assert!(refused.starts_with("550"), "{refused}");
    // And the directory has no dan: a later mailbox-enable says so.
    let later = request(&[mailbox("m5", &format!("CN=dan,{fab}"), "dan@fabrikam.test")]);
    let r = run(&sb, &cfg, "later.xml", &later);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(
        format!("{}{}", r.stdout, r.stderr).contains("is not in the directory"),
        "{r:?}"
    );
}

/// The passwd-file and the maps after `provisio recover` following a crash at every journal
/// write of a request that mailbox-enables three users: all three or none, and never what
/// the provider state does not hold (a crash after the commit's file writes but before the
/// transaction's end rolls the state back; recovery renders the files again).
#[test]
fn after_a_crash_at_any_journal_write_the_files_match_the_recovered_state() {
    let fab = format!("OU=Fabrikam,{BASE}");
    let setup = request(&[
        ou("o1", BASE, "Fabrikam"),
        user("u1", &fab, "ann", "ann@fabrikam.test"),
        user("u2", &fab, "bob", "bob@fabrikam.test"),
        user("u3", &fab, "cy", "cy@fabrikam.test"),
        domain("d1", &fab, "fabrikam.test"),
        r#"<execute id="st" namespace="Exchange 2007 Resource Manager" procedure="AddExchangeResources"><executeData><mailStores><mailStore><serverName>ex1</serverName><mailStoreName>DB1</mailStoreName><megabytes>1000</megabytes></mailStore></mailStores></executeData></execute>"#.to_string(),
    ]);
    let enable = request(&[
        mailbox("m1", &format!("CN=ann,{fab}"), "ann@fabrikam.test"),
        mailbox("m2", &format!("CN=bob,{fab}"), "bob@fabrikam.test"),
        mailbox("m3", &format!("CN=cy,{fab}"), "cy@fabrikam.test"),
    ]);
    let mut crashes = 0;
    for when in ["before", "after"] {
        let mut n = 1u32;
        loop {
            let sb = Sandbox::new();
            let root = sb.path("mail");
            let cfg = sb.write(
                "provisio.toml",
                &format!("[providers.exchange]\nmail_root = \"{}\"\n", root.display()),
            );
            let r = run(&sb, &cfg, "setup.xml", &setup);
            assert_eq!(r.code, 0, "{r:?}");
            let req = sb.write("enable.xml", &enable);
            let env = [
                ("PROVISIO_CRASH_AT", n.to_string()),
                ("PROVISIO_CRASH_WHEN", when.to_string()),
            ];
            let crashed = sb.run_env(
                &[
                    "--config",
                    cfg.to_str().unwrap(),
                    "run",
                    req.to_str().unwrap(),
                    "--quiet",
                ],
                &crate::util::repo().join("namespaces"),
                &env,
            );
            let lines = |sb: &Sandbox| {
                let _ = sb;
                std::fs::read_to_string(root.join("passwd"))
                    .unwrap_or_default()
                    .lines()
                    .map(|l| l.split(':').next().unwrap_or_default().to_string())
                    .collect::<Vec<_>>()
            };
            if crashed.code == 0 {
                assert_eq!(lines(&sb).len(), 3, "{crashed:?}");
                assert!(n > 5, "suspiciously few journal writes ({n}) for {when}");
                break;
            }
            assert_eq!(crashed.code, -1, "crash at write {n} ({when}): {crashed:?}");
            crashes += 1;
            let rec = sb.run(&["--config", cfg.to_str().unwrap(), "recover"]);
            assert_eq!(
                rec.code, 0,
                "recover after a crash at {n} ({when}): {rec:?}"
            );
            let list = sb.run(&["--config", cfg.to_str().unwrap(), "tx", "list"]);
            let committed = list.stdout.matches("committed").count() >= 2;
            let got = lines(&sb);
            if committed {
                assert_eq!(
                    got,
                    ["ann@fabrikam.test", "bob@fabrikam.test", "cy@fabrikam.test"],
                    "crash at {n} ({when})"
                );
            } else {
                assert!(
                    got.is_empty(),
                    "crash at {n} ({when}) left {got:?}\n{list:?}"
                );
                assert_eq!(
                    std::fs::read_to_string(root.join("virtual_mailbox_maps")).unwrap_or_default(),
                    "",
                    "crash at {n} ({when})"
                );
            }
            n += 1;
            assert!(n < 100, "runaway crash loop");
        }
    }
    assert!(crashes >= 6, "only {crashes} crash points exercised");
}

#[test]
fn an_ephemeral_run_never_renders_over_the_durable_mail_files() {
    let store = r#"<execute id="st" namespace="Exchange 2007 Resource Manager" procedure="AddExchangeResources"><executeData><mailStores><mailStore><serverName>ex1</serverName><mailStoreName>DB1</mailStoreName><megabytes>1000</megabytes></mailStore></mailStores></executeData></execute>"#.to_string();
    let tenant = |org: &str, who: &str| {
        let dn = format!("OU={org},{BASE}");
        let mail = format!("{who}@{}.test", org.to_lowercase());
        request(&[
            ou("o1", BASE, org),
            user("u1", &dn, who, &mail),
            domain("d1", &dn, &format!("{}.test", org.to_lowercase())),
            store.clone(),
            mailbox("m1", &format!("CN={who},{dn}"), &mail),
        ])
    };
    let sb = Sandbox::new();
    let cfg = sb.write("provisio.toml", "");
    let durable = run(&sb, &cfg, "fabrikam.xml", &tenant("Fabrikam", "ann"));
    assert_eq!(durable.code, 0, "{durable:?}");
    let passwd = sb.data().join("mail").join("passwd");
    let users = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    assert!(
        users(&passwd).starts_with("ann@fabrikam.test:"),
        "{}",
        users(&passwd)
    );

    // Another tenant in memory: its state starts empty (no ann), and so would the files it
    // renders — into a root of its own, not the durable one.
    let req = sb.write("contoso.xml", &tenant("Contoso", "bob"));
    let ephemeral = sb.run(&[
        "--config",
        cfg.to_str().unwrap(),
        "run",
        "--ephemeral",
        req.to_str().unwrap(),
    ]);
    assert_eq!(ephemeral.code, 0, "{ephemeral:?}");
    assert!(
        users(&passwd).starts_with("ann@fabrikam.test:"),
        "durable files rewritten: {}",
        users(&passwd)
    );
    let own = sb.data().join("mail-ephemeral").join("passwd");
    assert!(
        users(&own).starts_with("bob@contoso.test:"),
        "{}",
        users(&own)
    );
}
