//! A private Dovecot for the Sent Items tests (see shared/REAL-PEERS.md): its own config,
//! loopback port and mail directory under a temp dir; master user `submitgate`. Tests call
//! [`Dovecot::start`], which returns `None` (after printing a note) where Dovecot is not
//! installed, and fails the test instead under CI (`CI` set; see [`super::require`]).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use super::{is_ci, note, read_audit, require, Deadline};
use imap_client::client::tokio::Client;
use imap_client::imap_next::imap_types::fetch::{MessageDataItem, MessageDataItemName};
use imap_client::imap_next::imap_types::flag::{Flag, FlagFetch};
use imap_client::imap_next::imap_types::sequence::SequenceSet;
use submitgate::audit::Audit;
use submitgate::config::Config;
use submitgate::sent_items::spool::{EntryId, EntryMeta, Spool};
use submitgate::sent_items::store::Store;
use submitgate::sent_items::worker::{self, Delivery};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The master user's name and secret in every test Dovecot.
pub const MASTER: &str = "submitgate";
pub const SECRET: &str = "m4ster-secret";

/// Options for one Dovecot.
#[derive(Debug, Clone)]
pub struct Options {
    /// `Sent Items` exists for every user (`auto = subscribe`); otherwise APPEND gets TRYCREATE.
    pub auto_sent: bool,
    /// `mail_location`, where `{mail}` stands for the mail directory; default
    /// `maildir:{mail}/%u`.
    pub mail_location: Option<String>,
    /// Serve TLS (STARTTLS on the imap port, implicit on [`Dovecot::imaps_port`]) with a
    /// certificate for `localhost`/`127.0.0.1` from a test CA (`<dir>/ca.pem`).
    pub tls: bool,
    /// More configuration, appended as it is (e.g. `service` tuning for a benchmark).
    pub extra: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            auto_sent: true,
            mail_location: None,
            tls: false,
            extra: String::new(),
        }
    }
}

/// A running private Dovecot.
pub struct Dovecot {
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// Implicit TLS port (0 without [`Options::tls`]).
    pub imaps_port: u16,
    conf: PathBuf,
}

/// True (after a note on stderr) when the tests that need Dovecot must be skipped:
/// `SUBMITGATE_SKIP_DOVECOT` is set (refused under CI), or `dovecot`/`doveadm` is not
/// installed, which [`require`] turns into a failure under CI.
pub fn skip(test: &str) -> bool {
    if std::env::var_os("SUBMITGATE_SKIP_DOVECOT").is_some() {
        assert!(
            !is_ci(std::env::var_os("CI").as_deref()),
            "{test}: SUBMITGATE_SKIP_DOVECOT is set, but CI is set too: CI runs every Dovecot test"
        );
        note(&format!("{test}: SUBMITGATE_SKIP_DOVECOT is set; skipped"));
        return true;
    }
    require("dovecot").is_none() || require("doveadm").is_none()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl Dovecot {
    /// Starts Dovecot, or returns `None` when it is not installed.
    pub fn start(test: &str, options: Options) -> Option<Dovecot> {
        if skip(test) {
            return None;
        }
        if options.tls && require("openssl").is_none() {
            return None;
        }
        ensure_vmail();
        let dir = tempfile::Builder::new()
            .prefix("sgd")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let root = dir.path();
        chmod(root, 0o755);
        let mail = root.join("mail");
        std::fs::create_dir_all(&mail).expect("mail dir");
        chown_vmail(&mail);
        let port = free_port();
        let mail_location = options
            .mail_location
            .as_deref()
            .map(|m| m.replace("{mail}", &mail.display().to_string()))
            .unwrap_or_else(|| format!("maildir:{}/%u", mail.display()));
        std::fs::write(
            root.join("master.passwd"),
            format!("{MASTER}:{{PLAIN}}{SECRET}\n"),
        )
        .expect("master passwd");
        let (ssl, imaps_port) = if options.tls {
            make_certificates(root);
            (
                format!(
                    "ssl = yes\nssl_cert = <{root}/server.pem\nssl_key = <{root}/server.key\n",
                    root = root.display()
                ),
                free_port(),
            )
        } else {
            ("ssl = no\n".to_string(), 0)
        };
        let sent = if options.auto_sent {
            "mailbox \"Sent Items\" {\n    special_use = \\Sent\n    auto = subscribe\n  }"
        } else {
            ""
        };
        let conf = root.join("dovecot.conf");
        let text = format!(
            r#"base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
info_log_path = {root}/dovecot.log
protocols = imap
listen = 127.0.0.1
{ssl}disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
auth_master_user_separator = *
default_login_user = dovenull
default_internal_user = dovecot
mail_uid = vmail
mail_gid = vmail
first_valid_uid = 1
first_valid_gid = 1
mail_location = {mail_location}
passdb {{
  driver = passwd-file
  args = {root}/master.passwd
  master = yes
  result_success = continue
}}
passdb {{
  driver = static
  args = password=user-secret
}}
userdb {{
  driver = static
  args = uid=vmail gid=vmail home={mail}/%u
}}
namespace inbox {{
  inbox = yes
  separator = /
  {sent}
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps_port}
  }}
}}
service stats {{
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
{extra}
"#,
            extra = options.extra,
            root = root.display(),
            mail = mail.display(),
        );
        std::fs::write(&conf, text).expect("dovecot.conf");
        let d = Dovecot {
            dir,
            port,
            imaps_port,
            conf,
        };
        d.run_master();
        Some(d)
    }

    fn run_master(&self) {
        // The daemon keeps inherited descriptors open: give it none to wait on.
        let errors = self.dir.path().join("dovecot.stderr");
        let status = Command::new("dovecot")
            .arg("-c")
            .arg(&self.conf)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&errors).expect("stderr file"))
            .status()
            .expect("run dovecot");
        assert!(
            status.success(),
            "dovecot failed to start: {}\n{}",
            std::fs::read_to_string(&errors).unwrap_or_default(),
            self.log()
        );
        let deadline = Deadline::new(Duration::from_secs(10), "dovecot to listen");
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(!deadline.passed(), "dovecot not listening:\n{}", self.log());
            deadline.tick_sync();
        }
    }

    /// Stops the server (the mail stays).
    pub fn stop(&self) {
        let _ = Command::new("doveadm")
            .arg("-c")
            .arg(&self.conf)
            .arg("stop")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        // A Dovecot that does not stop in time is left to the next start, which fails loudly.
        let deadline = Deadline::new(Duration::from_secs(10), "dovecot to stop");
        while (std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            || self.dir.path().join("run/master.pid").exists())
            && !deadline.passed()
        {
            deadline.tick_sync();
        }
    }

    /// Ends `user`'s IMAP sessions (`doveadm kick`: each gets `* BYE` and is closed), as an
    /// administrator or a crashing `imap` process would.
    pub fn kick(&self, user: &str) {
        let out = self.doveadm(&["kick", user]);
        assert!(
            out.status.success(),
            "doveadm kick {user}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts it again after [`Dovecot::stop`].
    pub fn restart(&self) {
        self.run_master();
    }

    /// The directory that holds the mail (owned by `vmail`).
    pub fn mail_dir(&self) -> PathBuf {
        self.dir.path().join("mail")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dovecot.log")).unwrap_or_default()
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Writes the master secret (or any text) to a file and returns its path.
    pub fn secret_file(&self, secret: &str) -> PathBuf {
        let path = self.dir.path().join(format!("secret-{}", secret.len()));
        std::fs::write(&path, format!("{secret}\n")).expect("secret file");
        path
    }

    /// A `sent_items.store` YAML flow mapping for this server.
    pub fn store_yaml(&self, login: &str, secret_file: &Path) -> String {
        format!(
            "{{ backend: imap, address: \"{}\", tls: none, login: {login}, master_user: {MASTER}, master_password_file: \"{}\", timeout: 10s }}",
            self.address(),
            secret_file.display()
        )
    }

    /// Every message in `folder` of `user`, fetched over IMAP as the master user: body and
    /// whether it is `\Seen`, in UID order.
    pub async fn fetch(&self, user: &str, folder: &str) -> Vec<(Vec<u8>, bool)> {
        fetch(self.port, user, folder).await
    }

    /// Runs `doveadm ARGS` against this instance and returns what it printed and its status.
    fn doveadm(&self, args: &[&str]) -> std::process::Output {
        Command::new("doveadm")
            .arg("-c")
            .arg(&self.conf)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run doveadm {args:?}: {e}"))
    }

    /// Whether `folder` is subscribed for `user`.
    pub fn subscribed(&self, user: &str, folder: &str) -> bool {
        let out = self.doveadm(&["mailbox", "list", "-s", "-u", user]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.trim() == folder)
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Fetches every message of a folder over IMAP (master user login).
pub async fn fetch(port: u16, user: &str, folder: &str) -> Vec<(Vec<u8>, bool)> {
    let mut client = Client::insecure("127.0.0.1", port).await.expect("connect");
    client
        .login(format!("{user}*{MASTER}"), SECRET)
        .await
        .expect("login");
    let selected = client.examine(folder).await;
    if selected.is_err() {
        return Vec::new();
    }
    let items = vec![
        MessageDataItemName::BodyExt {
            section: None,
            partial: None,
            peek: true,
        },
        MessageDataItemName::Flags,
    ];
    let set = SequenceSet::try_from("1:*").expect("sequence set");
    let mut found: Vec<_> = client
        .uid_fetch(set, items.into())
        .await
        .unwrap_or_default()
        .into_iter()
        .collect();
    found.sort_by_key(|(uid, _)| *uid);
    found
        .into_iter()
        .map(|(_, items)| {
            let mut body = Vec::new();
            let mut seen = false;
            for item in items.into_iter() {
                match item {
                    MessageDataItem::BodyExt { data, .. } => {
                        if let Some(s) = data.0 {
                            body = s.as_ref().to_vec();
                        }
                    }
                    MessageDataItem::Flags(flags) => {
                        seen = flags
                            .iter()
                            .any(|f| matches!(f, FlagFetch::Flag(Flag::Seen)));
                    }
                    _ => {}
                }
            }
            (body, seen)
        })
        .collect()
}

/// Creates the `vmail` system user Dovecot's mail processes run as, when missing.
fn ensure_vmail() {
    let known = Command::new("getent")
        .args(["passwd", "vmail"])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !known {
        let _ = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "vmail",
            ])
            .status();
    }
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Gives a directory tree to the `vmail` user Dovecot's mail processes run as.
pub fn chown_vmail(path: &Path) {
    let status = Command::new("chown")
        .args(["-R", "vmail:vmail"])
        .arg(path)
        .status()
        .expect("chown");
    assert!(status.success(), "chown vmail {}", path.display());
}

/// A test message of about `size` bytes with a unique Message-ID.
pub fn message(n: usize, size: usize) -> (Vec<u8>, String) {
    let message_id = format!("<test-{n}-{}@contoso.com>", std::process::id());
    let mut m = format!(
        "From: alice@contoso.com\r\nTo: bob@example.org\r\nSubject: copy {n}\r\nMessage-ID: {message_id}\r\nDate: Mon, 10 Jun 2024 12:34:56 +0000\r\n\r\n"
    )
    .into_bytes();
    let mut line = 0;
    while m.len() + 2 < size {
        let text =
            format!("line {line} of message {n}: caf\u{e9} 8-bit body text ............\r\n");
        m.extend_from_slice(text.as_bytes());
        line += 1;
    }
    (m, message_id)
}

/// Commits one message for `mailbox` to the spool.
pub async fn commit(spool: &Spool, mailbox: &str, body: &[u8], message_id: &str) -> EntryId {
    let mut w = spool.begin();
    w.write(body).await.expect("spool write");
    w.commit(EntryMeta {
        mailbox: mailbox.into(),
        organization: "contoso".into(),
        folder: "Sent Items".into(),
        queue_id: "4TestQ1".into(),
        message_id: Some(message_id.into()),
        sender: mailbox.into(),
        recipients: vec!["bob@example.org".into()],
        submitted_at: SystemTime::now(),
        size: 0,
    })
    .await
    .expect("spool commit")
}

/// Delivery workers running in the test process over a fresh spool.
pub struct Rig {
    pub dir: tempfile::TempDir,
    pub spool: Spool,
    pub delivery: Delivery,
    pub audit: Audit,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    writer: Option<submitgate::audit::AuditWriter>,
    /// Every entry the workers were given: found at start, committed through the rig, or seen
    /// pending while draining. [`Rig::drained`] waits for a final audit event of each.
    entries: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl Rig {
    /// Starts workers for a `sent_items` YAML body (without `spool:`, which the rig sets).
    pub fn start(sent_items: &str) -> Rig {
        Rig::start_in(tempfile::tempdir().expect("tempdir"), sent_items)
    }

    /// Like [`Rig::start`], with the spool at `<dir>/spool` (which may already hold entries).
    pub fn start_in(dir: tempfile::TempDir, sent_items: &str) -> Rig {
        let spool_dir = dir.path().join("spool");
        let text = format!(
            "policy: [\"inet:127.0.0.1:0\"]\naudit: {{ path: \"{}\" }}\nsent_items:\n  spool: \"{}\"\n{sent_items}",
            dir.path().join("audit.log").display(),
            spool_dir.display()
        );
        let config = Config::parse(&dir.path().join("submitgate.yaml"), &text)
            .unwrap_or_else(|e| panic!("config: {e}\n{text}"));
        let spool = Spool::open(&spool_dir).expect("spool");
        // Entries already queued.
        let entries = super::daemon::read_spool_entries(&spool_dir)
            .into_iter()
            .map(|(id, ..)| id)
            .collect();
        let store = Store::from_settings(&config.sent_items.store).expect("store");
        let (audit, writer) = Audit::start(&config.audit).expect("audit");
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let delivery = worker::start(
            spool.clone(),
            std::sync::Arc::new(store),
            audit.clone(),
            config.sent_items.worker.clone(),
            shutdown.clone(),
            &tracker,
        );
        Rig {
            dir,
            spool,
            delivery,
            audit,
            shutdown,
            tracker,
            writer: Some(writer),
            entries: std::sync::Mutex::new(entries),
        }
    }

    fn expect(&self, id: &EntryId) {
        self.entries
            .lock()
            .expect("entries lock")
            .insert(id.to_string());
    }

    /// Commits a message and wakes the workers.
    pub async fn commit(&self, mailbox: &str, body: &[u8], message_id: &str) -> EntryId {
        let id = self.commit_quietly(mailbox, body, message_id).await;
        self.delivery.wake();
        id
    }

    /// Commits a message without waking the workers, as the milter does.
    pub async fn commit_quietly(&self, mailbox: &str, body: &[u8], message_id: &str) -> EntryId {
        let id = commit(&self.spool, mailbox, body, message_id).await;
        self.expect(&id);
        id
    }

    /// Waits until the queue is empty and each entry's final audit event (`sent_copy_stored`
    /// or `sent_copy_failed`) is written: a worker moves the entry before it audits.
    pub async fn drained(&self, limit: Duration) {
        let deadline = Deadline::new(limit, "the spool to drain");
        loop {
            match self.spool.pending().await {
                Ok(pending) if pending.is_empty() => break,
                Ok(pending) => pending.iter().for_each(|id| self.expect(id)),
                Err(_) => {}
            }
            deadline.tick().await;
        }
        let deadline = Deadline::new(limit, "a final audit event for every entry");
        loop {
            let events = self.events().await;
            let done: std::collections::BTreeSet<&str> = events
                .iter()
                .filter(|e| e["event"] == "sent_copy_stored" || e["event"] == "sent_copy_failed")
                .filter_map(|e| e["spool_entry"].as_str())
                .collect();
            let entries = self.entries.lock().expect("entries lock").clone();
            if entries.iter().all(|id| done.contains(id.as_str())) {
                return;
            }
            deadline.tick().await;
        }
    }

    /// Audit events so far.
    pub async fn events(&self) -> Vec<serde_json::Value> {
        self.audit.flush().await;
        read_audit(&self.dir.path().join("audit.log"))
    }

    /// Stops the workers and the audit writer; returns the directory (spool, audit log) for a
    /// test that starts again over it.
    pub async fn stop(mut self) -> tempfile::TempDir {
        self.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        let writer = self.writer.take();
        drop(self.delivery);
        drop(self.audit);
        if let Some(w) = writer {
            w.finish().await;
        }
        self.dir
    }
}

/// A test CA and a server certificate for `localhost` and `127.0.0.1`, made with openssl.
fn make_certificates(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n",
    )
    .expect("ext.cnf");
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=submitgate-test-ca",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
}
