//! The report's default inputs: the audit log the configuration names, with the siblings
//! logrotate leaves beside it (`audit.log.1`, `audit.log.2.gz`, …), oldest first.

use std::path::{Path, PathBuf};

/// How many rotated generations are looked for at most (logrotate's `rotate` is rarely more
/// than a year of days).
const MAX_GENERATIONS: u32 = 1000;

/// `log` and its rotated siblings that exist, oldest first (the highest number first, `log`
/// itself last): `log.N` or `log.N.gz` for N = 1, 2, … up to the first number with neither.
/// `log` is listed even when missing, so that the report says it cannot open it.
pub fn rotated_logs(log: &Path) -> Vec<PathBuf> {
    let mut older = Vec::new();
    for n in 1..=MAX_GENERATIONS {
        let plain = sibling(log, &format!(".{n}"));
        let gz = sibling(log, &format!(".{n}.gz"));
        match (plain.exists(), gz.exists()) {
            (true, _) => older.push(plain),
            (false, true) => older.push(gz),
            (false, false) => break,
        }
    }
    older.reverse();
    older.push(log.to_path_buf());
    older
}

fn sibling(log: &Path, suffix: &str) -> PathBuf {
    let mut name = log.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_first_plain_or_gzip_until_a_gap() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.log");
        for name in [
            "audit.log",
            "audit.log.1",
            "audit.log.2.gz",
            "audit.log.3.gz",
            "audit.log.5.gz",
        ] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        let names: Vec<String> = rotated_logs(&log)
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "audit.log.3.gz",
                "audit.log.2.gz",
                "audit.log.1",
                "audit.log"
            ]
        );
        let alone = dir.path().join("other.log");
        assert_eq!(rotated_logs(&alone), vec![alone.clone()]);
    }
}
