//! Runs `tests/miltertest/run.sh` (the Lua scripts driven by miltertest, a milter client that
//! is not ours) against the binary cargo built for this test run. Skips with a note when
//! miltertest is not installed (Debian package `miltertest`), and fails then under CI
//! (`support::require`).

mod support;

use std::path::Path;
use std::process::Command;

#[test]
fn miltertest_scripts_pass() {
    if support::require("miltertest").is_none() {
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/miltertest/run.sh");
    let out = Command::new("bash")
        .arg(&script)
        .env("SUBMITGATE_BIN", env!("CARGO_BIN_EXE_submitgate"))
        .output()
        .expect("run.sh starts");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "miltertest scripts failed:\n{stdout}");
    assert!(stdout.contains(" 0 failed"), "{stdout}");
}
