//! Runs `tests/miltertest/run.sh` (the Lua scripts driven by miltertest, a milter client that
//! is not ours) against the binary cargo built for this test run. Skips with a note when
//! miltertest is not installed (Debian package `miltertest`).

use std::path::Path;
use std::process::Command;

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

#[test]
fn miltertest_scripts_pass() {
    if !on_path("miltertest") {
        eprintln!("note: miltertest is not installed (apt-get install miltertest); skipping");
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
