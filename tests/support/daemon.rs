//! Shared helpers for the integration tests: a real daemon on port 0 with its own policy
//! directory, audit log and spool, a policy-protocol client and a milter client that plays
//! Postfix.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;

use super::read_audit;
use futures_util::{SinkExt, StreamExt};
use submitgate::config::Config;
use submitgate::daemon::Daemon;
use submitgate::milter::codec::{
    Command, MtaCodec, Reply, SMFIA_INET, SMFIC_CONNECT, SMFIC_DATA, SMFIC_HELO, SMFIC_MAIL,
    SMFIC_RCPT, SMFIP_HDR_LEADSPC, SMFI_CURR_ACTS, SMFI_CURR_PROT,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

/// A daemon under test with its files.
pub struct TestDaemon {
    pub daemon: Daemon,
    pub dir: tempfile::TempDir,
}

pub const CONTOSO: &str = "\
organization: contoso
domains: [contoso.com]
smtp_client_authentication_disabled: false
max_concurrent_sessions_per_mailbox: 3
mailboxes:
  blocked@contoso.com: { smtp_client_authentication_disabled: true }
  printer@contoso.com: { max_concurrent_sessions_per_mailbox: 5 }
";

pub const FABRIKAM: &str = "\
organization: fabrikam
domains: [fabrikam.com]
smtp_client_authentication_disabled: true
mailboxes:
  erp@fabrikam.com: { smtp_client_authentication_disabled: false }
";

impl TestDaemon {
    /// Starts a daemon with the given policy files and extra config lines (`{dir}` in them is
    /// replaced by the test's private directory).
    pub async fn start(policies: &[(&str, &str)], extra_config: &str) -> TestDaemon {
        Self::start_with("policy: [\"inet:127.0.0.1:0\"]\n", policies, extra_config).await
    }

    /// Starts a daemon with a milter listener on port 0 and its spool under the test dir.
    pub async fn start_milter(policies: &[(&str, &str)], extra_config: &str) -> TestDaemon {
        let front = "milter: [\"inet:127.0.0.1:0\"]\nsent_items: { spool: {dir}/spool }\n";
        Self::start_with(front, policies, extra_config).await
    }

    /// Starts a daemon whose config begins with `front_ends` (listener lines); `{dir}` in
    /// `front_ends` and `extra_config` stands for the test's directory.
    pub async fn start_with(
        front_ends: &str,
        policies: &[(&str, &str)],
        extra_config: &str,
    ) -> TestDaemon {
        let dir = tempfile::tempdir().unwrap();
        let extra_config = extra_config.replace("{dir}", &dir.path().display().to_string());
        let pdir = dir.path().join("policies");
        std::fs::create_dir(&pdir).unwrap();
        for (name, text) in policies {
            std::fs::write(pdir.join(name), text).unwrap();
        }
        let config_text = format!(
            "{front_ends}policies: {}\naudit: {{ path: {} }}\n{extra_config}",
            pdir.display(),
            dir.path().join("audit.log").display()
        )
        .replace("{dir}", &dir.path().display().to_string());
        let path = dir.path().join("submitgate.yaml");
        std::fs::write(&path, &config_text).unwrap();
        let config = Config::load(&path).unwrap();
        let daemon = Daemon::start(config).await.unwrap();
        TestDaemon { daemon, dir }
    }

    /// The milter listener's port.
    pub fn milter_port(&self) -> u16 {
        match &self.daemon.milter_endpoints()[0] {
            submitgate::endpoint::Endpoint::Inet { port, .. } => *port,
            other => panic!("not inet: {other}"),
        }
    }

    /// A new milter connection, not yet negotiated.
    pub async fn milter(&self) -> MilterClient {
        MilterClient::connect(self.milter_port()).await
    }

    /// The spool directory (for `start_milter`).
    pub fn spool_dir(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    /// Committed spool entries, oldest first: (file name, message bytes, metadata JSON).
    pub fn spool_entries(&self) -> Vec<(String, Vec<u8>, serde_json::Value)> {
        read_spool_entries(&self.spool_dir())
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("submitgate.yaml")
    }

    pub fn policies_dir(&self) -> PathBuf {
        self.dir.path().join("policies")
    }

    pub fn port(&self) -> u16 {
        match &self.daemon.policy_endpoints()[0] {
            submitgate::endpoint::Endpoint::Inet { port, .. } => *port,
            other => panic!("not inet: {other}"),
        }
    }

    /// The port of the first auth policy listener (configure `auth_policy: ["inet:127.0.0.1:0"]`).
    pub fn auth_policy_port(&self) -> u16 {
        match &self.daemon.auth_policy_endpoints()[0] {
            submitgate::endpoint::Endpoint::Inet { port, .. } => *port,
            other => panic!("not inet: {other}"),
        }
    }

    pub async fn client(&self) -> PolicyClient {
        PolicyClient::connect(self.port()).await
    }

    /// Every audit event written so far.
    pub async fn audit(&self) -> Vec<serde_json::Value> {
        self.daemon.context().audit.flush().await;
        read_audit(&self.dir.path().join("audit.log"))
    }

    pub async fn in_use(&self, mailbox: &str) -> u32 {
        self.daemon.context().limiter.in_use(mailbox).await
    }
}

/// One Postfix-like policy connection.
pub struct PolicyClient {
    pub stream: BufReader<TcpStream>,
}

impl PolicyClient {
    pub async fn connect(port: u16) -> PolicyClient {
        PolicyClient {
            stream: BufReader::new(TcpStream::connect(("127.0.0.1", port)).await.unwrap()),
        }
    }

    /// Sends one raw request (must end with an empty line) and returns the action text.
    pub async fn raw(&mut self, request: &[u8]) -> Option<String> {
        self.stream.get_mut().write_all(request).await.ok()?;
        let mut line = String::new();
        if self.stream.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let mut empty = String::new();
        self.stream.read_line(&mut empty).await.ok()?;
        assert_eq!(empty, "\n", "reply not ended by an empty line");
        Some(
            line.trim_end()
                .strip_prefix("action=")
                .expect("reply starts with action=")
                .to_string(),
        )
    }

    /// Sends a request built from a transaction description.
    pub async fn ask(&mut self, t: &Txn<'_>, state: &str) -> String {
        self.raw(t.request(state).as_bytes()).await.expect("reply")
    }

    /// Whether the server has closed the connection.
    pub async fn closed(&mut self) -> bool {
        let mut buf = String::new();
        matches!(self.stream.read_line(&mut buf).await, Ok(0) | Err(_))
    }
}

/// A mail transaction as Postfix describes it.
pub struct Txn<'a> {
    pub login: &'a str,
    pub client_port: u16,
    pub instance: &'a str,
}

impl Txn<'_> {
    pub fn request(&self, state: &str) -> String {
        format!(
            "request=smtpd_access_policy\nprotocol_state={state}\nprotocol_name=ESMTP\n\
client_address=192.0.2.10\nclient_name=client.example\nclient_port={}\n\
reverse_client_name=client.example\nserver_address=127.0.0.1\nserver_port=10587\n\
helo_name=client.example\nsender={}\nrecipient=rcpt@example.net\nrecipient_count=0\n\
queue_id={}\ninstance={}\nsize=1234\netrn_domain=\nstress=\nsasl_method=PLAIN\n\
sasl_username={}\nsasl_sender=\nccert_subject=\nccert_issuer=\nccert_fingerprint=\n\
ccert_pubkey_fingerprint=\nencryption_protocol=TLSv1.3\nencryption_cipher=TLS_AES_256_GCM_SHA384\n\
encryption_keysize=256\npolicy_context=\n\n",
            self.client_port,
            self.login,
            if state == "RCPT" { "" } else { "ABCDEF1234" },
            self.instance,
            self.login,
        )
    }
}

/// Pending spool entries, oldest first: (entry id, message bytes, metadata JSON). Read straight
/// from the segment files (docs/architecture.md, "Records"), not through the spool's own
/// code: every record must have its magic and its checksum right; entry records without a
/// later done record are pending. A record that ends past the end of its file is one a running
/// daemon is appending: the segment is read up to it.
pub fn read_spool_entries(dir: &Path) -> Vec<(String, Vec<u8>, serde_json::Value)> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("queue"))
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".seg"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let mut entries = Vec::new();
    for name in names {
        let bytes = std::fs::read(dir.join("queue").join(&name)).unwrap();
        // (offset, id, message, meta, done)
        let mut found: Vec<(usize, String, Vec<u8>, serde_json::Value, bool)> = Vec::new();
        let mut at = 0;
        while at + 48 <= bytes.len() {
            let h = &bytes[at..at + 48];
            if h.iter().all(|b| *b == 0) {
                // The zeros a segment is preallocated with: the end of its records.
                break;
            }
            assert_eq!(&h[..8], b"SGSPOOL2", "{name}@{at}: no magic");
            let be =
                |r: std::ops::Range<usize>| h[r].iter().fold(0u64, |n, b| n << 8 | u64::from(*b));
            let (kind, a, seq, pid) = (h[12], be(16..24), be(24..32), be(32..36));
            let (json_len, data_len) = (be(36..40) as usize, be(40..48) as usize);
            let end = at + 48 + data_len + json_len;
            if end > bytes.len() {
                break;
            }
            let mut crc = crc32fast::Hasher::new();
            crc.update(&bytes[at + 48..end]);
            crc.update(&h[12..48]);
            assert_eq!(crc.finalize(), be(8..12) as u32, "{name}@{at}: checksum");
            let data = &bytes[at + 48..at + 48 + data_len];
            let json = &bytes[at + 48 + data_len..end];
            match kind {
                1 => found.push((
                    at,
                    format!("{:010}.{:06}-{pid}-{seq}", a / 1_000_000, a % 1_000_000),
                    data.to_vec(),
                    serde_json::from_slice(json).unwrap(),
                    false,
                )),
                2 => {}
                3 => {
                    let entry = found.iter_mut().find(|e| e.0 as u64 == a);
                    entry.expect("done record of an entry in the file").4 = true;
                }
                k => panic!("{name}@{at}: record kind {k}"),
            }
            at = end;
        }
        entries.extend(
            found
                .into_iter()
                .filter(|e| !e.4)
                .map(|(_, id, data, meta, _)| (id, data, meta)),
        );
    }
    entries.sort_by(|x, y| x.0.cmp(&y.0));
    entries
}

/// Files in the spool's `tmp/` (messages being written).
pub fn spool_temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("tmp"))
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// How long a test waits for a reply before failing.
pub const REPLY_WAIT: Duration = Duration::from_secs(10);

/// Bytes from a string.
pub fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// One Postfix-like milter connection.
pub struct MilterClient {
    pub framed: Framed<TcpStream, MtaCodec>,
    /// The protocol flags the filter chose at negotiation.
    pub protocol: u32,
}

impl MilterClient {
    pub async fn connect(port: u16) -> MilterClient {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        MilterClient {
            framed: Framed::new(stream, MtaCodec::default()),
            protocol: 0,
        }
    }

    /// Sends one command.
    pub async fn send(&mut self, command: Command) {
        self.framed.send(command).await.unwrap();
    }

    /// The next reply; `None` when the filter closed the connection.
    pub async fn recv(&mut self) -> Option<Reply> {
        match tokio::time::timeout(REPLY_WAIT, self.framed.next()).await {
            Ok(Some(Ok(r))) => Some(r),
            Ok(Some(Err(e))) => panic!("bad reply: {e}"),
            Ok(None) => None,
            Err(_) => panic!("no reply within {REPLY_WAIT:?}"),
        }
    }

    /// Sends a command and, if the negotiated flags say the filter answers it, returns the
    /// answer (`Some(None)` would mean the filter closed instead).
    pub async fn ask(&mut self, command: Command) -> Option<Reply> {
        let wants = command.expects_reply(self.protocol);
        self.send(command).await;
        if wants {
            Some(self.recv().await.expect("filter closed the connection"))
        } else {
            None
        }
    }

    /// Negotiates with Postfix 3.7's offer (or `protocol` instead of its protocol word).
    pub async fn negotiate_with(&mut self, protocol: u32) -> Reply {
        let reply = self
            .ask(Command::OptNeg {
                version: 6,
                actions: SMFI_CURR_ACTS,
                protocol,
            })
            .await
            .unwrap();
        if let Reply::OptNeg { protocol, .. } = reply {
            self.protocol = protocol;
        }
        reply
    }

    /// Negotiation, CONNECT and HELO, as Postfix does them.
    pub async fn open(&mut self) {
        self.open_with(SMFI_CURR_PROT).await;
    }

    pub async fn open_with(&mut self, offer: u32) {
        self.negotiate_with(offer).await;
        self.macros(SMFIC_CONNECT, &[("j", "mx.test"), ("{daemon_name}", "mx")])
            .await;
        let r = self
            .ask(Command::Connect {
                hostname: b("client.example"),
                family: SMFIA_INET,
                port: Some(40000),
                address: b("192.0.2.10"),
            })
            .await;
        assert!(matches!(r, None | Some(Reply::Continue)), "{r:?}");
        self.macros(SMFIC_HELO, &[("{tls_version}", "TLSv1.3")])
            .await;
        let r = self.ask(Command::Helo(b("client.example"))).await;
        assert!(matches!(r, None | Some(Reply::Continue)), "{r:?}");
    }

    pub async fn macros(&mut self, stage: u8, pairs: &[(&str, &str)]) {
        self.send(Command::Macro {
            stage,
            macros: pairs.iter().map(|(n, v)| (b(n), b(v))).collect(),
        })
        .await;
    }

    /// MAIL FROM with `{auth_authen}` = `login` (no macro when `None`); returns the reply.
    pub async fn mail(&mut self, login: Option<&str>) -> Reply {
        let mut pairs = vec![("{mail_addr}", login.unwrap_or("anon@example.net"))];
        if let Some(login) = login {
            pairs.push(("{auth_type}", "PLAIN"));
            pairs.push(("{auth_authen}", login));
        }
        self.macros(SMFIC_MAIL, &pairs).await;
        let sender = format!("<{}>", login.unwrap_or("anon@example.net"));
        self.ask(Command::Mail {
            args: vec![b(&sender), b("size=100")],
        })
        .await
        .expect("MAIL is always answered")
    }

    /// RCPT, DATA, headers, body chunks and EOM; returns the EOM reply. Header values are
    /// given as the client wrote them after the colon (with their leading space); the client
    /// strips it when `SMFIP_HDR_LEADSPC` was not negotiated, as Postfix does.
    pub async fn message(
        &mut self,
        queue_id: &str,
        rcpts: &[&str],
        headers: &[(&str, &str)],
        body: &[&[u8]],
    ) -> Reply {
        for rcpt in rcpts {
            self.macros(SMFIC_RCPT, &[("{rcpt_addr}", rcpt)]).await;
            let r = self
                .ask(Command::Rcpt {
                    args: vec![b(&format!("<{rcpt}>"))],
                })
                .await;
            assert!(matches!(r, None | Some(Reply::Continue)), "{r:?}");
        }
        self.macros(SMFIC_DATA, &[("i", queue_id)]).await;
        let r = self.ask(Command::Data).await;
        assert!(matches!(r, None | Some(Reply::Continue)), "{r:?}");
        for (name, value) in headers {
            let value = if self.protocol & SMFIP_HDR_LEADSPC != 0 {
                value.to_string()
            } else {
                value.strip_prefix(' ').unwrap_or(value).to_string()
            };
            let r = self
                .ask(Command::Header {
                    name: b(name),
                    value: b(&value),
                })
                .await;
            assert!(matches!(r, None | Some(Reply::Continue)), "{r:?}");
        }
        let r = self.ask(Command::EndOfHeaders).await;
        assert!(matches!(r, None | Some(Reply::Continue)), "{r:?}");
        for chunk in body {
            let r = self.ask(Command::Body(Bytes::copy_from_slice(chunk))).await;
            assert!(matches!(r, None | Some(Reply::Continue)), "{r:?}");
        }
        self.ask(Command::EndOfMessage(Bytes::new())).await.unwrap()
    }

    /// ABORT, as Postfix sends after each message.
    pub async fn abort(&mut self) {
        self.send(Command::Abort).await;
    }

    /// QUIT, then waits for the filter to close.
    pub async fn quit(mut self) {
        self.send(Command::Quit).await;
        assert!(self.closed().await);
    }

    /// Whether the filter has closed the connection (waits up to [`REPLY_WAIT`]).
    pub async fn closed(&mut self) -> bool {
        matches!(
            tokio::time::timeout(REPLY_WAIT, self.framed.next()).await,
            Ok(None) | Ok(Some(Err(_)))
        )
    }
}
