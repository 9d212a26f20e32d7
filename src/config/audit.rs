//! `audit:`: the JSON-lines audit log's target and queue, built into [`Settings`].

use std::path::PathBuf;

use super::check::Checker;
use super::raw::RawAudit;
use crate::audit::{Settings, Target, DEFAULT_QUEUE};

/// Checks the section; `./audit.log` when absent.
pub(super) fn check(ck: &mut Checker, raw: Option<&RawAudit>) -> Settings {
    let Some(a) = raw else {
        return Settings::default();
    };
    let target = match a.path.as_str() {
        "-" => Target::Stdout,
        "" => {
            ck.err(&["audit", "path"], "must be a file path or \"-\" (stdout)");
            Target::Stdout
        }
        p => Target::File(PathBuf::from(p)),
    };
    let queue = ck.number_at(&["audit", "queue"], a.queue, (1, 1_000_000), DEFAULT_QUEUE);
    Settings { target, queue }
}
