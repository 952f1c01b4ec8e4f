//! A private Dovecot 2.3 (IMAP, LMTP, Pigeonhole Sieve) for the mail provider's end-to-end
//! tests, after the recipe of `real-services.md` §5: a minimal config of its own in a temp
//! dir (no `/etc/dovecot` include), 127.0.0.1 on free ports, run in the foreground (`-F`)
//! and stopped by PID on drop. Its userdb (and passdb) is the passwd-file the provider
//! renders (`<mail_root>/passwd`); users carry no password there, so the tests read mail as
//! a master user (`<user>*master`, password in [`Dovecot::master_password`]). Mail is
//! stored as the uid/gid the passwd-file names (65534 in the tests). `sendmail_path` is a
//! script that keeps every message Dovecot sends (Sieve vacation replies) in a folder
//! ([`Dovecot::sent`]).
//!
//! Without Dovecot installed, [`Dovecot::start`] prints a note and returns `None` so tests
//! skip, unless `PROVISIO_REQUIRE_MAIL=1` (set by `scripts/test`), which makes it a failure.

use crate::bind::which;
use crate::slapd::{free_tcp_port, random_password};
use std::fs;
use std::io::Read;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether the tests must fail instead of skipping when Dovecot cannot run
/// (`PROVISIO_REQUIRE_MAIL=1`, set by `scripts/test`).
pub fn required() -> bool {
    std::env::var("PROVISIO_REQUIRE_MAIL").is_ok_and(|v| v == "1")
}

/// A running Dovecot.
pub struct Dovecot {
    child: Child,
    dir: tempfile::TempDir,
    /// IMAP port on 127.0.0.1.
    pub imap_port: u16,
    /// LMTP port on 127.0.0.1.
    pub lmtp_port: u16,
    /// The master user's password (log in as `<user>*master`).
    pub master_password: String,
}

impl Dovecot {
    /// Starts Dovecot over the passwd-file `<mail_root>/passwd`, or `None` (with a note)
    /// when Dovecot with Pigeonhole is not installed and `PROVISIO_REQUIRE_MAIL` is not
    /// `1`. `mail_root` and its parents must be traversable by Dovecot's unprivileged users.
    pub fn start(mail_root: &Path) -> Option<Dovecot> {
        let sieve = Path::new("/usr/lib/dovecot/modules/lib90_sieve_plugin.so");
        let Some(dovecot) = which("dovecot").filter(|_| sieve.exists()) else {
            assert!(
                !required(),
                "PROVISIO_REQUIRE_MAIL=1 but Dovecot with Pigeonhole is not installed (scripts/ensure-tools installs dovecot-imapd, dovecot-lmtpd and dovecot-sieve)"
            );
            eprintln!("note: Dovecot (dovecot-imapd, dovecot-lmtpd, dovecot-sieve) not installed; skipping the mail test (run scripts/ensure-tools)");
            return None;
        };
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start(&dovecot, mail_root) {
                Ok(d) => return Some(d),
                // A port taken between choosing and binding: try other ports.
                Err(e) => last = e,
            }
        }
        panic!("dovecot did not start: {last}");
    }

    fn try_start(dovecot: &Path, mail_root: &Path) -> Result<Dovecot, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let d = dir.path();
        // The login and auth processes run as dovenull/dovecot and use sockets here.
        fs::set_permissions(d, fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
        fs::create_dir_all(d.join("run")).map_err(|e| e.to_string())?;
        let sent = d.join("sent");
        fs::create_dir_all(&sent).map_err(|e| e.to_string())?;
        // Vacation replies are sent as the mail user.
        fs::set_permissions(&sent, fs::Permissions::from_mode(0o777)).map_err(|e| e.to_string())?;
        let sendmail = d.join("sendmail");
        fs::write(
            &sendmail,
            format!(
                "#!/bin/sh\nout={}/$(date +%s%N)-$$\n{{ echo \"X-Sendmail-Args: $*\"; cat; }} > \"$out.tmp\" && mv \"$out.tmp\" \"$out.msg\"\n",
                sent.display()
            ),
        )
        .map_err(|e| e.to_string())?;
        fs::set_permissions(&sendmail, fs::Permissions::from_mode(0o755))
            .map_err(|e| e.to_string())?;
        let master_password = random_password();
        let masters = d.join("master-users");
        fs::write(&masters, format!("master:{{PLAIN}}{master_password}\n"))
            .map_err(|e| e.to_string())?;
        fs::set_permissions(&masters, fs::Permissions::from_mode(0o644))
            .map_err(|e| e.to_string())?;
        let passwd = mail_root.join("passwd");
        if !passwd.exists() {
            fs::create_dir_all(mail_root).map_err(|e| e.to_string())?;
            fs::write(&passwd, "").map_err(|e| e.to_string())?;
        }
        let (imap, lmtp) = (free_tcp_port(), free_tcp_port());
        let conf = d.join("dovecot.conf");
        fs::write(&conf, config(d, &passwd, &masters, &sendmail, imap, lmtp))
            .map_err(|e| e.to_string())?;
        let child = Command::new(dovecot)
            .args(["-F", "-c"])
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn dovecot: {e}"))?;
        let mut me = Dovecot {
            child,
            dir,
            imap_port: imap,
            lmtp_port: lmtp,
            master_password,
        };
        me.wait_ready()?;
        Ok(me)
    }

    /// Polls the IMAP greeting (`* OK`) for up to 10 s.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("dovecot exited ({status}): {}", self.log()));
            }
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.imap_port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 64];
                if let Ok(n) = s.read(&mut buf) {
                    if buf[..n].starts_with(b"* OK") {
                        return Ok(());
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!("dovecot not ready after 10 s: {}", self.log()))
    }

    /// The log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("dovecot.log")).unwrap_or_default()
    }

    /// The config file (for `doveadm -c`).
    pub fn config_file(&self) -> PathBuf {
        self.dir.path().join("dovecot.conf")
    }

    /// What `doveadm user USER` prints: the fields Dovecot's userdb gives the user.
    pub fn user(&self, user: &str) -> String {
        let out = Command::new("doveadm")
            .arg("-c")
            .arg(self.config_file())
            .args(["user", user])
            .output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// Waits up to 5 s until Dovecot's userdb answers `user` with a line containing
    /// `needle`, and returns whether it did. Dovecot re-reads a changed passwd-file at most
    /// once a second (it compares the file's mtime, in seconds, and size on lookups made in
    /// a later second), so a change rendered in the same second as an earlier lookup is seen
    /// only from the next second on: a test that delivers right after a change waits here.
    pub fn wait_for_user_field(&self, user: &str, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.user(user).contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }

    /// Every message Dovecot handed to sendmail so far (first line `X-Sendmail-Args: …`),
    /// oldest first.
    pub fn sent(&self) -> Vec<String> {
        let mut names: Vec<PathBuf> = fs::read_dir(self.dir.path().join("sent"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "msg"))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
            .iter()
            .filter_map(|p| fs::read_to_string(p).ok())
            .collect()
    }

    /// Stops it (SIGTERM, then waits for the master and its children).
    pub fn stop(&mut self) {
        crate::slapd::stop_child(&mut self.child);
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        self.stop();
    }
}

fn config(
    d: &Path,
    passwd: &Path,
    masters: &Path,
    sendmail: &Path,
    imap: u16,
    lmtp: u16,
) -> String {
    let d = d.display();
    let passwd = passwd.display();
    format!(
        "base_dir = {d}/run
instance_name = dovecot-provisio-{imap}
protocols = imap lmtp
listen = 127.0.0.1
log_path = {d}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_master_user_separator = *
mail_location = maildir:~/Maildir
first_valid_uid = 1
mail_plugins = quota
sendmail_path = {sendmail}
passdb {{
  driver = passwd-file
  master = yes
  args = scheme=PLAIN {masters}
}}
passdb {{
  driver = passwd-file
  args = username_format=%u {passwd}
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {passwd}
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {lmtp}
  }}
  unix_listener lmtp {{
    mode = 0600
  }}
}}
protocol lmtp {{
  mail_plugins = $mail_plugins sieve
  postmaster_address = postmaster@provisio.test
}}
plugin {{
  quota = maildir:User quota
}}
",
        sendmail = sendmail.display(),
        masters = masters.display(),
    )
}
