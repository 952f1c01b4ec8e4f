//! The directory provider through the binary, on the embedded backend (no server): the
//! example workflow creates an OU and two users that a later process finds; a request
//! whose last step fails leaves nothing behind; passwords never appear in clear in the
//! response, `provisio tx show` or the raw journal.

use crate::util::{repo, Sandbox};

/// Creates OU=Fabrikam and two users with passwords, adds one to a group, then fails on a
/// duplicate: everything is rolled back.
const FAILING: &str = r#"<request>
  <data><password do-not-log="1">Fabrikam-S3cret-pw</password></data>
  <procedure>
    <execute id="ou" namespace="Active Directory Provider" procedure="Create Object">
      <executeData><container>LDAP://DC=provisio,DC=local</container><class>organizationalUnit</class><name>OU=Fabrikam</name></executeData>
    </execute>
    <execute id="group" namespace="Active Directory Provider" procedure="Create Object">
      <executeData><container>LDAP://OU=Fabrikam,DC=provisio,DC=local</container><class>group</class><name>CN=Admins</name></executeData>
    </execute>
    <execute id="u1" namespace="Active Directory Provider" procedure="Create Object">
      <executeData><container>LDAP://OU=Fabrikam,DC=provisio,DC=local</container><class>user</class><name>CN=Smith\, John</name>
        <properties><property name="userPrincipalName" mode="replace"><value>john@fabrikam.test</value></property></properties>
      </executeData>
    </execute>
    <execute id="u2" namespace="Active Directory Provider" procedure="Create Object">
      <executeData><container>LDAP://OU=Fabrikam,DC=provisio,DC=local</container><class>user</class><name>CN=Ann Lee</name>
        <properties><property name="userPrincipalName"><value>ann.lee@contoso.test</value></property></properties>
      </executeData>
    </execute>
    <execute id="pw" namespace="Active Directory Provider" procedure="User Set Password">
      <executeData><path>LDAP://CN=Smith\, John,OU=Fabrikam,DC=provisio,DC=local</path></executeData>
      <before source="data" sourcePath="password" destination="executeData" destinationPath="newPassword"/>
    </execute>
    <execute id="member" namespace="Active Directory Provider" procedure="Group Add Member">
      <executeData><group>LDAP://CN=Admins,OU=Fabrikam,DC=provisio,DC=local</group><member>LDAP://CN=Smith\, John,OU=Fabrikam,DC=provisio,DC=local</member></executeData>
    </execute>
    <execute id="clash" namespace="Active Directory Provider" procedure="Create Object">
      <executeData><container>LDAP://OU=Fabrikam,DC=provisio,DC=local</container><class>user</class><name>CN=Ann Lee</name></executeData>
    </execute>
  </procedure>
</request>
"#;

/// Searches the whole directory for users and OUs.
const SEARCH: &str = r#"<request>
  <data/>
  <procedure type="read">
    <execute id="find" namespace="Active Directory Provider" procedure="Search">
      <executeData><base>LDAP://DC=provisio,DC=local</base><scope>subtree</scope><filter>(|(objectClass=user)(objectClass=organizationalUnit))</filter><attributes>sAMAccountName,memberOf</attributes></executeData>
      <after source="executeData" destination="data" destinationPath="result"/>
    </execute>
  </procedure>
</request>
"#;

#[test]
fn users_are_created_found_and_rolled_back_without_a_password_in_clear() {
    let sb = Sandbox::new();
    let none = sb.path("none");
    std::fs::create_dir_all(&none).expect("mkdir");
    let wf = repo().join("workflows/directory-users.yaml");
    let r = sb.run_with(&["run", wf.to_str().unwrap()], &none);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("status: committed"), "{r:?}");
    assert!(!r.stdout.contains("Welcome-2026!"), "{r:?}");

    // Another process finds them (the directory is in the store, not in memory).
    let search = sb.write("search.xml", SEARCH);
    let found = sb.run_with(&["run", search.to_str().unwrap()], &none);
    assert_eq!(found.code, 0, "{found:?}");
    for want in [
        "CN=Ann Lee,OU=Contoso,DC=provisio,DC=local",
        "CN=John Smith,OU=Contoso,DC=provisio,DC=local",
        "ann.lee_contoso.test",
        "john.smith_contoso.t",
    ] {
        assert!(found.stdout.contains(want), "{want}: {found:?}");
    }

    // The failing request: rolled back, nothing of it left.
    let req = sb.write("fabrikam.xml", FAILING);
    let failed = sb.run_with(&["run", req.to_str().unwrap()], &none);
    assert_eq!(failed.code, 1, "{failed:?}");
    assert!(
        failed.stdout.contains("status=\"rolled_back\""),
        "{failed:?}"
    );
    assert!(
        failed
            .stdout
            .contains("CN=Ann Lee,OU=Fabrikam,DC=provisio,DC=local already exists"),
        "{failed:?}"
    );
    assert!(failed.stdout.contains("0x80071392"), "{failed:?}");
    let after = sb.run_with(&["run", search.to_str().unwrap()], &none);
    assert_eq!(after.code, 0, "{after:?}");
    assert!(!after.stdout.contains("Fabrikam"), "{after:?}");
    assert!(!after.stdout.contains("CN=Admins"), "{after:?}");
    // Ann Lee of Contoso kept her name; the rolled-back Ann Lee's reservation is gone.
    assert!(after.stdout.contains("ann.lee_contoso.test"), "{after:?}");
    assert!(!after.stdout.contains("ann.lee_contoso.te1"), "{after:?}");
    assert!(!after.stdout.contains("john_fabrikam.test"), "{after:?}");

    // The journal never shows a password in clear.
    let list = sb.run_with(&["tx", "list"], &none);
    let ids: Vec<String> = list
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    assert!(ids.len() >= 4, "{list:?}");
    for id in &ids {
        let show = sb.run_with(&["tx", "show", id], &none);
        assert_eq!(show.code, 0, "{show:?}");
        let log = sb.run_with(&["tx", "log", id], &none);
        for text in [&show.stdout, &show.stderr, &log.stdout] {
            assert!(!text.contains("Fabrikam-S3cret-pw"), "{id}: {text}");
            assert!(!text.contains("Welcome-2026!"), "{id}: {text}");
        }
    }
    let rolled = ids
        .iter()
        .find(|id| {
            sb.run_with(&["tx", "show", id], &none)
                .stdout
                .contains("rolled_back")
        })
        .expect("the rolled-back transaction");
    let show = sb.run_with(&["tx", "show", rolled], &none);
    assert!(show.stdout.contains("User Set Password"), "{show:?}");
    assert!(show.stdout.contains("********"), "{show:?}");
}

#[test]
fn a_bad_directory_configuration_is_refused_with_its_key() {
    let sb = Sandbox::new();
    let none = sb.path("none");
    std::fs::create_dir_all(&none).expect("mkdir");
    let cfg = sb.write(
        "provisio.toml",
        "[providers.directory]\nbackend = \"embedded\"\nbase_dn = \"DC=ok,DC=\"\n",
    );
    let wf = repo().join("workflows/directory-users.yaml");
    let r = sb.run_with(
        &[
            "--config",
            cfg.to_str().unwrap(),
            "run",
            wf.to_str().unwrap(),
        ],
        &none,
    );
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("providers.directory.base_dn"), "{r:?}");
    let r = sb.run_env(
        &["run", wf.to_str().unwrap()],
        &none,
        &[("PROVISIO_DIRECTORY_BACKEND", "ldapx".to_string())],
    );
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("PROVISIO_DIRECTORY_BACKEND"), "{r:?}");
}

/// A password written literally into a trusted request's step (not passed through data
/// marked `do-not-log`): the step's journal records mask it as a secret input, and the
/// request's own procedure, pinned for recovery, is kept sealed — nothing under the data
/// folder holds it in clear.
const LITERAL_PASSWORD: &str = r#"<request>
  <data/>
  <procedure>
    <execute id="ou" namespace="Active Directory Provider" procedure="Create Object">
      <executeData><container>LDAP://DC=provisio,DC=local</container><class>organizationalUnit</class><name>OU=Literal</name></executeData>
    </execute>
    <execute id="user" namespace="Active Directory Provider" procedure="Create Object">
      <executeData><container>LDAP://OU=Literal,DC=provisio,DC=local</container><class>user</class><name>CN=Lit User</name></executeData>
    </execute>
    <execute id="pw" namespace="Active Directory Provider" procedure="User Set Password">
      <executeData><path>LDAP://CN=Lit User,OU=Literal,DC=provisio,DC=local</path><newPassword>Literal-S3cret-9</newPassword></executeData>
    </execute>
  </procedure>
</request>
"#;

#[test]
fn a_literal_password_in_a_trusted_request_is_nowhere_in_clear() {
    let sb = Sandbox::new();
    let none = sb.path("none");
    std::fs::create_dir_all(&none).expect("mkdir");
    let req = sb.write("literal.xml", LITERAL_PASSWORD);
    let r = sb.run_with(&["run", req.to_str().unwrap()], &none);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(!r.stdout.contains("Literal-S3cret-9"), "{r:?}");
    assert!(!r.stderr.contains("Literal-S3cret-9"), "{r:?}");
    let needle = b"Literal-S3cret-9";
    for (name, bytes) in sb.snapshot() {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "{name} holds the password in clear"
        );
    }
}
