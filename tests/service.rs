//! The real binary as systemd runs it: the sd_notify protocol on a `NOTIFY_SOCKET` the test
//! binds (`READY=1` only once the listeners accept, `RELOADING=1` + `MONOTONIC_USEC` and
//! `READY=1` around a SIGHUP reload, `STOPPING=1` on SIGTERM), and the `log:` section: JSON
//! lines, RFC 3164 syslog datagrams to a socket the test binds, the level from the file and
//! from `RUST_LOG` (which wins), and the log file reopened on SIGUSR1.

mod support;

use std::io::{BufRead, BufReader};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::daemon::CONTOSO;

/// The daemon as a child process, killed if a failing test leaves it running.
struct Running {
    child: Child,
    stderr: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Running {
    fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    }

    /// SIGTERM, then the exit status (within 20 s).
    fn stop(mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        let deadline = support::Deadline::new(Duration::from_secs(20), "the daemon to exit");
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            deadline.tick_sync();
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

/// A private directory with the example policy and a configuration ending in `extra`.
fn setup(extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let pdir = dir.path().join("policies");
    std::fs::create_dir(&pdir).unwrap();
    std::fs::write(pdir.join("contoso.yaml"), CONTOSO).unwrap();
    std::fs::write(
        dir.path().join("submitgate.yaml"),
        format!(
            "policy: [\"inet:127.0.0.1:0\"]\nmilter: [\"unix:milter.sock\"]\nsent_items: {{ spool: spool }}\n\
             policies: policies\naudit: {{ path: audit.log }}\nwatch_policies: false\n{extra}"
        ),
    )
    .unwrap();
    dir
}

/// Starts `submitgate serve` on the directory's configuration with `env` (and nothing of the
/// caller's log or systemd variables).
fn start(dir: &Path, env: &[(&str, &str)]) -> Running {
    let stderr = dir.join("stderr.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_submitgate"));
    cmd.arg("serve")
        .arg("--config")
        .arg(dir.join("submitgate.yaml"))
        .env_remove("RUST_LOG")
        .env_remove("SUBMITGATE_LOG")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Running {
        child: cmd.spawn().unwrap(),
        stderr,
    }
}

/// The next datagram on `sock` as text (20 s at most).
fn recv(sock: &UnixDatagram) -> String {
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let n = sock.recv(&mut buf).expect("a datagram within 20 s");
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

#[test]
fn sd_notify_ready_after_binding_reloading_on_hup_stopping_on_term() {
    let dir = setup("");
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let daemon = start(
        dir.path(),
        &[("NOTIFY_SOCKET", notify_path.to_str().unwrap())],
    );

    let ready = recv(&notify);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    // READY=1 means serving: the milter socket accepts at once, and the log says so.
    UnixStream::connect(dir.path().join("milter.sock"))
        .expect("the milter socket accepts when READY=1 arrives");
    let log = daemon.stderr();
    assert!(log.contains("milter front end listening"), "{log}");
    assert!(log.contains("policy front end listening"), "{log}");

    daemon.signal(libc::SIGHUP);
    let reloading = recv(&notify);
    let lines: Vec<&str> = reloading.lines().collect();
    assert_eq!(lines.first(), Some(&"RELOADING=1"), "{reloading:?}");
    let usec = lines
        .iter()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .expect("MONOTONIC_USEC with RELOADING=1");
    assert!(usec.parse::<u64>().unwrap() > 0);
    let ready = recv(&notify);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");

    let stopping = recv_after_term(daemon, &notify);
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
}

/// SIGTERM, the next notification, and a clean exit.
fn recv_after_term(daemon: Running, notify: &UnixDatagram) -> String {
    daemon.signal(libc::SIGTERM);
    let msg = recv(notify);
    assert!(daemon.stop().success());
    msg
}

#[test]
fn without_notify_socket_the_daemon_serves_as_before() {
    let dir = setup("");
    let daemon = start(dir.path(), &[]);
    let deadline = support::Deadline::new(Duration::from_secs(20), "ready in the log");
    while !daemon.stderr().contains("ready") {
        deadline.tick_sync();
    }
    assert!(
        !daemon.stderr().contains("sd_notify"),
        "{}",
        daemon.stderr()
    );
    assert!(daemon.stop().success());
}

#[test]
fn json_lines_on_stderr_with_the_configured_level() {
    let dir = setup("log: { format: json, target: stderr, level: debug }\n");
    let daemon = start(dir.path(), &[]);
    let deadline = support::Deadline::new(Duration::from_secs(20), "ready in the log");
    while !daemon.stderr().contains("ready") {
        deadline.tick_sync();
    }
    let text = daemon.stderr();
    assert!(daemon.stop().success());
    let mut levels = std::collections::BTreeSet::new();
    let mut saw_listener = false;
    for line in BufReader::new(text.as_bytes()).lines() {
        let line = line.unwrap();
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"));
        assert!(v["timestamp"].is_string(), "{line}");
        assert!(v["message"].is_string(), "{line}");
        levels.insert(v["level"].as_str().unwrap().to_string());
        if v["message"] == "milter front end listening" {
            assert!(
                v["listener"].as_str().unwrap().ends_with("milter.sock"),
                "{line}"
            );
            saw_listener = true;
        }
    }
    assert!(saw_listener, "{text}");
    assert!(levels.contains("INFO"), "{levels:?}");
}

#[test]
fn syslog_datagrams_to_the_configured_socket() {
    // A relative syslog_socket is relative to the configuration's directory.
    let dir = setup("log: { target: syslog, syslog_socket: log.sock }\n");
    let syslog = UnixDatagram::bind(dir.path().join("log.sock")).unwrap();
    let daemon = start(dir.path(), &[]);
    let pid = daemon.child.id();
    let mut seen = Vec::new();
    loop {
        let msg = recv(&syslog);
        let ready = msg.ends_with(&format!("submitgate {} ready", env!("CARGO_PKG_VERSION")));
        seen.push(msg);
        if ready {
            break;
        }
    }
    for msg in &seen {
        assert!(msg.contains(&format!(" submitgate[{pid}]: ")), "{msg:?}");
        assert!(!msg.contains('\n'), "{msg:?}");
    }
    // Facility daemon (3): <30> = 3 * 8 + info (6); the spool without a store is a warning,
    // <28> = 3 * 8 + warning (4).
    let with = |prefix: &str, text: &str| {
        seen.iter()
            .any(|m| m.starts_with(prefix) && m.contains(text))
    };
    assert!(with("<30>", "milter front end listening"), "{seen:?}");
    assert!(
        with("<28>", "copies are spooled but not delivered"),
        "{seen:?}"
    );
    // Nothing went to stderr.
    assert_eq!(daemon.stderr(), "");
    assert!(daemon.stop().success());
}

#[test]
fn rust_log_wins_over_the_configured_level() {
    let dir = setup("log: { level: warn }\n");
    let daemon = start(dir.path(), &[]);
    // The configured level hides the info lines; the milter socket shows it started.
    let sock = dir.path().join("milter.sock");
    let deadline = support::Deadline::new(Duration::from_secs(20), "the milter socket");
    while UnixStream::connect(&sock).is_err() {
        deadline.tick_sync();
    }
    assert!(daemon.stop().success());
    let quiet = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    assert!(!quiet.contains("ready"), "{quiet}");

    let daemon = start(dir.path(), &[("RUST_LOG", "info")]);
    let deadline = support::Deadline::new(Duration::from_secs(20), "ready in the log");
    while !daemon.stderr().contains("ready") {
        deadline.tick_sync();
    }
    assert!(daemon.stop().success());
}

#[test]
fn sigusr1_reopens_the_log_file() {
    let dir = setup("log: { target: file, path: submitgate.log }\n");
    let log = dir.path().join("submitgate.log");
    let daemon = start(dir.path(), &[]);
    let deadline = support::Deadline::new(Duration::from_secs(20), "ready in the log file");
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("ready")
    {
        deadline.tick_sync();
    }
    // What logrotate does: move the file away, then SIGUSR1 (postrotate).
    let rotated = dir.path().join("submitgate.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    daemon.signal(libc::SIGUSR1);
    let deadline = support::Deadline::new(Duration::from_secs(20), "a new log file");
    while !log.exists() {
        deadline.tick_sync();
    }
    // The next line goes to the new file, not to the rotated one.
    daemon.signal(libc::SIGHUP);
    let deadline = support::Deadline::new(Duration::from_secs(20), "the reload in the new file");
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("SIGHUP")
    {
        deadline.tick_sync();
    }
    assert!(daemon.stop().success());
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(old.contains("ready") && !old.contains("SIGHUP"), "{old}");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
    // The audit log was reopened too (it was not moved: still one file, still written).
    assert!(dir.path().join("audit.log").exists());
}

#[test]
fn generate_writes_a_man_page_per_command_and_the_completions() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_submitgate"))
        .arg("generate")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // Every subcommand `--help` lists has its page (the hidden `generate` has none).
    let help = Command::new(env!("CARGO_BIN_EXE_submitgate"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(
        commands.contains(&"serve") && commands.contains(&"report"),
        "{help}"
    );
    for c in &commands {
        let page = dir.path().join(format!("man/submitgate-{c}.1"));
        let text = std::fs::read_to_string(&page).unwrap_or_else(|e| panic!("{page:?}: {e}"));
        assert!(text.contains(".TH submitgate-"), "{page:?}");
    }
    assert!(dir.path().join("man/submitgate.1").exists());
    assert!(!dir.path().join("man/submitgate-generate.1").exists());
    for (file, needle) in [
        ("submitgate.bash", "complete -F"),
        ("_submitgate", "#compdef submitgate"),
        ("submitgate.fish", "complete -c submitgate"),
    ] {
        let text = std::fs::read_to_string(dir.path().join("completions").join(file)).unwrap();
        assert!(text.contains(needle), "{file}");
        for c in &commands {
            assert!(text.contains(c), "{file} lacks {c}");
        }
    }
}
