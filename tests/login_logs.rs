//! The log lines of a refused login carry it escaped: no newline, ESC or bidi control from a
//! peer reaches standard error. Its own test binary, with one test: a `tracing` subscriber set
//! for one thread races with other threads registering the same callsites.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use submitgate::admission::{self, Facts, Hold, LoginCheck, LoginFacts, Outcome, Scope};
use submitgate::audit::{self, Audit, FrontEnd};
use submitgate::context::{Context, Stats};
use submitgate::limiter::Limiter;
use submitgate::policy::reload::PolicyHandle;
use submitgate::policy::{load_files, LoadOptions};
use submitgate::reply::Replies;

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn refused_logins_reach_the_log_only_escaped() {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let dir = tempfile::tempdir().expect("tempdir");
    let (audit, _writer) = Audit::start(&audit::Settings {
        target: audit::Target::File(dir.path().join("audit.log")),
        queue: 16,
        mode: audit::DEFAULT_MODE,
    })
    .expect("audit log");
    let files = [(
        PathBuf::from("contoso.yaml"),
        "organization: contoso\ndomains: [contoso.com]\n".to_string(),
    )];
    let policy = PolicyHandle::new(load_files(&files, &LoadOptions::default()).expect("policy"));
    let snapshot = policy.load_full();
    let ctx = Context {
        policy,
        limiter: Limiter::memory(),
        audit,
        replies: Arc::new(Replies::default()),
        stats: Arc::new(Stats::default()),
    };

    let bad = "bob\n2026-12-04 INFO fake line\u{1b}[2J\u{202e}@contoso.com";
    let facts = Facts {
        front_end: FrontEnd::Milter,
        peer: "127.0.0.1:4000",
        login: bad,
        client_address: Some("192.0.2.7"),
        tls: None,
        sasl_mechanism: Some("PLAIN"),
        sender: Some(""),
        recipients: &[],
        queue_id: None,
    };
    let mut hold = Hold::new(Scope::Session);
    assert!(matches!(
        admission::admit(&ctx, &snapshot, &facts, &mut hold).await,
        Outcome::Refused(_)
    ));
    let login_facts = LoginFacts {
        login: bad,
        remote: Some("192.0.2.7"),
        protocol: Some("smtp"),
        sasl_mechanism: None,
        secured: None,
    };
    assert!(matches!(
        admission::check_login(&ctx, &snapshot, &login_facts),
        LoginCheck::Refused { .. }
    ));

    let text = String::from_utf8(logs.0.lock().expect("log buffer").clone()).expect("UTF-8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].contains("submission refused: invalid login"),
        "{text}"
    );
    assert!(lines[1].contains("login refused at AUTH"), "{text}");
    for line in lines {
        assert!(
            line.contains(r"bob\n2026-12-04 INFO fake line\u{1b}[2J\u{202e}@contoso.com"),
            "{line}"
        );
        assert!(
            line.contains("control character U+000A at byte 3"),
            "{line}"
        );
        assert!(!line.chars().any(submitgate::text::is_control), "{line:?}");
    }
}
