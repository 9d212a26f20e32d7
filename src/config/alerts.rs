//! `alerts:`: where alert events go (a webhook, a command, or both), which kinds, how often,
//! built into [`Settings`].

use std::time::Duration;

use super::check::Checker;
use super::raw::RawAlerts;
use crate::alerts::{AlertKind, Settings, DEFAULT_MIN_INTERVAL, DEFAULT_QUEUE, DEFAULT_TIMEOUT};

/// Checks the section; `None` when absent (no alerts).
pub(super) fn check(ck: &mut Checker, raw: Option<&RawAlerts>) -> Option<Settings> {
    let a = raw?;
    let webhook = a.webhook.as_ref().and_then(|url| {
        let ok = url
            .parse::<http::Uri>()
            .ok()
            .filter(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some());
        if ok.is_none() {
            ck.err(
                &["alerts", "webhook"],
                format!(
                    "{} is not an http:// or https:// URL",
                    crate::yaml::quote(url)
                ),
            );
        }
        ok.map(|_| url.clone())
    });
    let command = match &a.command {
        Some(argv) if argv.is_empty() || argv[0].trim().is_empty() => {
            ck.err(
                &["alerts", "command"],
                "must name a program: [\"/usr/local/bin/notify\", \"--flag\"]",
            );
            None
        }
        Some(argv) => Some(argv.clone()),
        None => None,
    };
    if a.webhook.is_none() && a.command.is_none() {
        ck.err(
            &["alerts"],
            "set a webhook (an http:// or https:// URL), a command (argv), or both",
        );
    }
    let kinds = match &a.kinds {
        None => AlertKind::ALL.to_vec(),
        Some(names) => names
            .iter()
            .filter_map(|n| match n.parse::<AlertKind>() {
                Ok(k) => Some(k),
                Err(e) => {
                    ck.err(&["alerts", "kinds"], e);
                    None
                }
            })
            .collect(),
    };
    let min_interval = ck.duration_at(
        &["alerts", "min_interval"],
        a.min_interval.as_deref(),
        DEFAULT_MIN_INTERVAL,
        Duration::ZERO,
        Some("5m, 0s"),
    );
    let timeout = ck.duration_at(
        &["alerts", "timeout"],
        a.timeout.as_deref(),
        DEFAULT_TIMEOUT,
        Duration::from_millis(100),
        Some("10s"),
    );
    let queue = ck.number_at(&["alerts", "queue"], a.queue, (1, 100_000), DEFAULT_QUEUE);
    Some(Settings {
        webhook,
        command,
        kinds,
        min_interval,
        timeout,
        queue,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use crate::alerts::AlertKind;
    use crate::config::Config;

    fn parse(text: &str) -> Result<Config, crate::config::ConfigErrors> {
        Config::parse(Path::new("sg.yaml"), text)
    }

    const BASE: &str = "policy: [\"inet:127.0.0.1:1\"]\n";

    #[test]
    fn absent_means_no_alerts_and_defaults_apply() {
        assert!(parse(BASE).unwrap().alerts.is_none());
        let c = parse(&format!(
            "{BASE}alerts: {{ webhook: \"http://127.0.0.1:9/hook\" }}\n"
        ))
        .unwrap();
        let a = c.alerts.unwrap();
        assert_eq!(a.webhook.as_deref(), Some("http://127.0.0.1:9/hook"));
        assert_eq!(a.kinds, AlertKind::ALL.to_vec());
        assert_eq!(a.min_interval, Duration::from_secs(300));
        assert_eq!(a.timeout, Duration::from_secs(10));
    }

    #[test]
    fn every_problem_is_reported_with_its_line() {
        let e = parse(&format!(
            "{BASE}alerts:\n  webhook: \"ftp://x\"\n  command: []\n  kinds: [sender_restricted, nope]\n  timeout: 1ms\n"
        ))
        .unwrap_err();
        let s = e.to_string();
        for (line, what) in [
            (3, "alerts.webhook"),
            (4, "alerts.command"),
            (5, "unknown alert kind \"nope\""),
            (6, "alerts.timeout"),
        ] {
            assert!(
                e.0.iter()
                    .any(|x| x.line == line && x.to_string().contains(what)),
                "line {line} {what}: {s}"
            );
        }
        let e = parse(&format!("{BASE}alerts: {{ kinds: [sender_restricted] }}\n")).unwrap_err();
        assert!(e.to_string().contains("set a webhook"), "{e}");
    }
}
