//! `support::require`, the one check for an external program (redis-server, dovecot,
//! miltertest, openssl) that the real-peer suites make: a missing program fails the test when
//! `CI` is set and is a visible skip otherwise. The decision is tested on its own
//! (`require_in`), and end to end by running this test binary again with the program hidden
//! from `PATH`, with and without `CI=true`.

mod support;

use std::ffi::OsStr;
use std::process::Command;

use support::{find_program, is_ci, require_in};

/// A directory holding one executable `name` (and a non-executable `plain`), for `PATH`.
fn bin_dir(name: &str) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join(name);
    std::fs::write(&exe, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(dir.path().join("plain"), "").unwrap();
    dir
}

#[test]
fn ci_is_any_value_but_empty_zero_or_false() {
    for yes in ["true", "1", "yes", "TRUE", "github"] {
        assert!(is_ci(Some(OsStr::new(yes))), "{yes}");
    }
    for no in ["", "0", "false", "False", " false "] {
        assert!(!is_ci(Some(OsStr::new(no))), "{no:?}");
    }
    assert!(!is_ci(None));
}

#[test]
fn a_program_is_found_only_as_an_executable_file_on_path() {
    let dir = bin_dir("fake-server");
    let path = std::env::join_paths(["/nonexistent-dir", dir.path().to_str().unwrap()]).unwrap();
    assert_eq!(
        find_program("fake-server", Some(&path)),
        Some(dir.path().join("fake-server"))
    );
    assert_eq!(find_program("plain", Some(&path)), None, "not executable");
    assert_eq!(find_program("absent", Some(&path)), None);
    assert_eq!(find_program("fake-server", None), None, "PATH unset");
}

#[test]
fn missing_program_fails_under_ci_and_skips_elsewhere() {
    let dir = bin_dir("fake-server");
    let path = dir.path().as_os_str();
    let ci = Some(OsStr::new("true"));
    // Present: the same answer with and without CI.
    for ci in [None, ci] {
        assert_eq!(
            require_in("fake-server", Some(path), ci),
            Ok(Some(dir.path().join("fake-server")))
        );
    }
    // Missing, not CI: skip.
    assert_eq!(require_in("redis-server", Some(path), None), Ok(None));
    assert_eq!(
        require_in("redis-server", Some(path), Some(OsStr::new("false"))),
        Ok(None)
    );
    // Missing under CI: an error naming the program, the PATH searched and the package.
    let err = require_in("redis-server", Some(path), ci).unwrap_err();
    assert!(err.contains("redis-server is required"), "{err}");
    assert!(err.contains(&path.to_string_lossy().into_owned()), "{err}");
    assert!(err.contains("apt-get install redis-server"), "{err}");
    let err = require_in("dovecot", None, ci).unwrap_err();
    assert!(err.contains("PATH (unset)"), "{err}");
    assert!(err.contains("apt-get install dovecot-imapd"), "{err}");
}

/// What the re-run below executes: a test that needs a program nobody has.
#[test]
#[ignore = "run by hidden_program_fails_under_ci_and_is_a_visible_skip_otherwise"]
fn needs_a_program_that_is_missing() {
    if support::require("redis-server").is_none() {
        return;
    }
    panic!("redis-server was found on a PATH that cannot hold it");
}

/// Runs [`needs_a_program_that_is_missing`] in a child copy of this test binary with `PATH`
/// pointing nowhere: with `CI=true` it must fail and say why; without `CI` it must pass and
/// print the note.
#[test]
fn hidden_program_fails_under_ci_and_is_a_visible_skip_otherwise() {
    let run = |ci: Option<&str>| {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "--ignored",
            "--exact",
            "needs_a_program_that_is_missing",
            "--test-threads=1",
        ])
        .env("PATH", "/nonexistent-dir-for-require-test")
        .env_remove("CI");
        if let Some(ci) = ci {
            cmd.env("CI", ci);
        }
        let out = cmd.output().expect("the test binary runs again");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };

    let (ok, text) = run(Some("true"));
    assert!(
        !ok,
        "with CI=true a missing redis-server must fail:\n{text}"
    );
    assert!(
        text.contains("redis-server is required but not on PATH"),
        "{text}"
    );
    assert!(text.contains("1 failed"), "{text}");

    let (ok, text) = run(None);
    assert!(ok, "without CI a missing redis-server is a skip:\n{text}");
    assert!(
        text.contains("needs_a_program_that_is_missing: SKIPPED: redis-server is not installed"),
        "{text}"
    );
    assert!(text.contains("1 passed"), "{text}");
}
