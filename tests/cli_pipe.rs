//! The operator CLI when its reader goes away (`submitgate report | head`): every subcommand
//! that writes to standard output stops quietly with exit status 141 (128 + SIGPIPE, what the
//! shell shows for other tools), without a panic or an error message.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, ExitStatus, Stdio};

use submitgate::milter::codec::Reply;
use support::daemon::{TestDaemon, CONTOSO};

const CONTROL: &str = "control: \"unix:{dir}/control.sock\"\n";

/// What a run left behind: its status and standard error.
struct Run {
    status: ExitStatus,
    stderr: String,
}

impl Run {
    fn assert_quiet_broken_pipe(&self, what: &str) {
        assert_eq!(self.status.code(), Some(141), "{what}: {}", self.stderr);
        assert!(!self.stderr.contains("panicked"), "{what}: {}", self.stderr);
        assert!(
            !self.stderr.to_lowercase().contains("broken pipe"),
            "{what}: {}",
            self.stderr
        );
        assert_eq!(self.stderr, "", "{what}");
    }
}

/// Runs the binary with standard output a stream whose reading end is already closed: its
/// first write (or its final flush) fails with EPIPE, whatever the timing. (A socket pair:
/// `std::io::pipe` is newer than the crate's MSRV; the errno is the same. The test below
/// uses a real pipe.)
fn with_closed_stdout(args: &[&str]) -> Run {
    let (reader, writer) = std::os::unix::net::UnixStream::pair().expect("socket pair");
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_submitgate"))
        .args(args)
        .env("SUBMITGATE_LOG", "warn")
        .stdout(std::os::fd::OwnedFd::from(writer))
        .stderr(Stdio::piped())
        .output()
        .expect("run submitgate");
    Run {
        status: out.status,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subcommand_that_prints_stops_quietly_on_a_closed_pipe() {
    let t = TestDaemon::start_milter(&[("contoso.yaml", CONTOSO)], CONTROL).await;
    // One spool entry and some audit lines, so that every listing has something to print.
    let mut m = t.milter().await;
    m.open().await;
    assert_eq!(m.mail(Some("bob@contoso.com")).await, Reply::Continue);
    let r = m
        .message("Q1", &["x@example.net"], &[("Subject", " s")], &[b"x\r\n"])
        .await;
    assert_eq!(r, Reply::Continue);
    let audit_log = t.dir.path().join("audit.log");
    t.audit().await;
    let config = t.config_path();
    let config = config.to_str().expect("UTF-8 path");
    let audit_log = audit_log.to_str().expect("UTF-8 path");
    let commands: &[&[&str]] = &[
        &["status", "--config", config],
        &["status", "--json", "--config", config],
        &["reload", "--config", config],
        &["spool", "list", "--config", config],
        &["spool", "list", "--json", "--config", config],
        &["check", "--config", config],
        &["org", "get", "--config", config],
        &["mailbox", "get", "bob@contoso.com", "--config", config],
        &["report", "--audit", audit_log],
        &["report", "--audit", audit_log, "--format", "csv"],
        &["report", "--audit", audit_log, "--format", "json"],
    ];
    for args in commands {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let (run, args) = tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            (with_closed_stdout(&refs), args)
        })
        .await
        .expect("run");
        run.assert_quiet_broken_pipe(&args.join(" "));
    }
    m.quit().await;
}

#[test]
fn report_piped_into_head_stops_quietly_after_the_first_line() {
    // 3 000 senders: far more output than a pipe holds, so the report is still writing when
    // the reader goes away after one line, as `head -n1` does.
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("audit.log");
    let mut f = std::fs::File::create(&log).expect("audit log");
    for i in 0..3000 {
        writeln!(
            f,
            r#"{{"ts":"2026-11-27T09:00:00.000Z","event":"submission_completed","mailbox":"sender{i}@contoso.com","tls":"TLSv1.3","sasl_method":"PLAIN"}}"#
        )
        .expect("write");
    }
    drop(f);
    let mut child = Command::new(env!("CARGO_BIN_EXE_submitgate"))
        .args(["report", "--audit"])
        .arg(&log)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run submitgate");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    stdout.read_line(&mut first).expect("first line");
    assert!(
        first.starts_with("SMTP AUTH clients report: 3000 sender(s)"),
        "{first}"
    );
    drop(stdout);
    let out = child.wait_with_output().expect("wait");
    Run {
        status: out.status,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
    .assert_quiet_broken_pipe("report | head -n1");
}
