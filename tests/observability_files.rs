//! The monitoring files shipped in `examples/`: the Prometheus rules pass `promtool check
//! rules` and their unit tests (`promtool test rules`), and the Grafana dashboard and the rules
//! query only metrics the daemon exports — and every submitgate metric is on the dashboard or
//! in a rule.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use submitgate::audit::{FrontEnd, Outcome};
use submitgate::metrics::{self, Connections, DeliveryResult, Observed, SpoolDepth};
use submitgate::reason::Reason;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

#[test]
fn prometheus_rules_pass_promtool_check_and_their_unit_tests() {
    let Some(promtool) = support::require("promtool") else {
        return;
    };
    let dir = examples().join("prometheus");
    for args in [
        vec!["check", "rules", "alerts.yml"],
        vec!["test", "rules", "alerts_test.yml"],
    ] {
        let out = Command::new(&promtool)
            .args(&args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Every series name the daemon exports once each family has a value.
fn exported() -> BTreeSet<String> {
    metrics::decision(
        FrontEnd::Policy,
        Outcome::Defer,
        Some(Reason::ConcurrencyLimit),
    );
    drop(metrics::DecisionTimer::start(FrontEnd::Policy));
    metrics::delivery("imap", DeliveryResult::Retry);
    metrics::delivery_lag(SystemTime::now() - Duration::from_secs(1));
    metrics::policy_reload(true);
    metrics::limiter_error("redis");
    metrics::alert("sender_restricted", "sent");
    let text = metrics::global().render(Observed {
        sessions_in_use: 1,
        mailboxes_at_limit: 1,
        spool: Some(SpoolDepth::default()),
        policy_version: Some("v".into()),
        last_reload_ok: Some(true),
        connections: vec![Connections {
            front_end: "policy",
            open: 1,
            refused: 0,
        }],
        unauthenticated: 1,
    });
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

/// The metric names a PromQL expression mentions (`submitgate_*`, `process_*`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut word = String::new();
    let mut in_string = false;
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c == '"' {
            in_string = !in_string;
        }
        if !in_string && (c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            word.push(c);
        } else {
            if word.starts_with("submitgate_") || word.starts_with("process_") {
                names.insert(word.clone());
            }
            word.clear();
        }
    }
    names
}

/// Every `expr` (and variable query) of the dashboard.
fn dashboard_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "definition", Value::String(s)) => out.push(s.clone()),
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

#[test]
fn dashboard_and_rules_query_only_exported_metrics_and_cover_them_all() {
    let exported = exported();
    let text =
        std::fs::read_to_string(examples().join("grafana/submitgate-dashboard.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(dashboard["uid"], "submitgate");
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() > 20, "{exprs:?}");
    let rules: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(examples().join("prometheus/alerts.yml")).unwrap(),
    )
    .unwrap();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            exprs.push(rule["expr"].as_str().unwrap().to_string());
        }
    }
    let mut used = BTreeSet::new();
    for expr in &exprs {
        for name in metric_names(expr) {
            assert!(
                exported.contains(&name),
                "{name} (in {expr:?}) is not exported; the daemon exports: {exported:#?}"
            );
            used.insert(name);
        }
    }
    // Each submitgate family is shown or alerted on (a histogram through its buckets).
    let families: BTreeSet<String> = exported
        .iter()
        .filter(|n| n.starts_with("submitgate_"))
        .map(|n| {
            n.trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count")
                .to_string()
        })
        .collect();
    for family in families {
        assert!(
            used.iter().any(|u| u.starts_with(&family)),
            "{family} is neither on the dashboard nor in a rule"
        );
    }
    // Panels read the data source variable, not a fixed one.
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["type"] != "row" {
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{}",
                panel["title"]
            );
        }
    }
}
