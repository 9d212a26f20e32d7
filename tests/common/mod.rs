//! Shared helpers for the integration tests: a real daemon on port 0 with its own policy
//! directory and audit log, and a policy-protocol client.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use submitgate::config::Config;
use submitgate::daemon::Daemon;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

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
        let dir = tempfile::tempdir().unwrap();
        let extra_config = extra_config.replace("{dir}", &dir.path().display().to_string());
        let pdir = dir.path().join("policies");
        std::fs::create_dir(&pdir).unwrap();
        for (name, text) in policies {
            std::fs::write(pdir.join(name), text).unwrap();
        }
        let config_text = format!(
            "policy: [\"inet:127.0.0.1:0\"]\npolicies: {}\naudit: {{ path: {} }}\n{extra_config}",
            pdir.display(),
            dir.path().join("audit.log").display()
        );
        let path = dir.path().join("submitgate.yaml");
        std::fs::write(&path, &config_text).unwrap();
        let config = Config::load(&path).unwrap();
        let daemon = Daemon::start(config).await.unwrap();
        TestDaemon { daemon, dir }
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

pub fn read_audit(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
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
