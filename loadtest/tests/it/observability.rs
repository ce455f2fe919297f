//! The dashboards and alert rules under `deploy/observability/` against the real tools:
//! `promtool check rules` and `promtool test rules` (every alert fires in one case and stays
//! quiet in another), the dashboards' provisioning shape, and a real Prometheus scraping
//! a running fleet after a mention that asks for approval, runs a tool and writes a file —
//! every PromQL expression of the dashboards and the alert rules must evaluate without
//! error and return data, and every metric name they use must exist.
//!
//! Prometheus and promtool are Debian's (`deploy/local/prometheus-install` unpacks them
//! into the cache); `CCFLEET_PROMETHEUS_BIN` names another `prometheus` (promtool beside
//! it). Without them the tests skip with a reason, except in CI (`CI=true`): they fail.
//!
//! JetStream: prometheus-nats-exporter is a Go program that cannot be built here, so
//! `loadtest::nats_exporter`, a stand-in serving the exporter's names from nats-server's
//! own `/jsz` and `/varz`, is scraped in its place (the shared nats-server runs with
//! monitoring: `NATS_MONITOR_URL` in the services file, else `http://127.0.0.1:18222`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::config::RuntimeKind;
use common::testsupport::TestEnv;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::e2e::support::*;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/observability");
const TURN: Duration = Duration::from_secs(60);

/// Metric names a dashboard or rule uses before the code renders them (a contract agreed
/// ahead of the code, as for issue #16's metrics). Expressions using them must still
/// evaluate without error, but need not return data. The test fails once a listed name
/// exists: then delete it here.
const NOT_YET_RENDERED: &[&str] = &[];

struct Tools {
    prometheus: PathBuf,
    promtool: PathBuf,
}

fn tools() -> Option<Tools> {
    let prometheus = match std::env::var_os("CCFLEET_PROMETHEUS_BIN") {
        Some(path) => PathBuf::from(path),
        None => {
            let cache = std::env::var_os("CCFLEET_CACHE_DIR")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/ccfleet")))
                .expect("HOME or CCFLEET_CACHE_DIR is set");
            cache.join("prometheus/usr/bin/prometheus")
        }
    };
    let promtool = prometheus.with_file_name("promtool");
    if prometheus.is_file() && promtool.is_file() {
        return Some(Tools {
            prometheus,
            promtool,
        });
    }
    let reason = format!(
        "no prometheus and promtool at {} (set CCFLEET_PROMETHEUS_BIN, or run deploy/local/prometheus-install)",
        prometheus.display()
    );
    crate::e2e::support::skip_unless_ci("check the dashboards and alert rules", &reason);
    None
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn dashboards() -> Vec<(PathBuf, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(Path::new(DIR).join("dashboards"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    files
        .into_iter()
        .map(|p| (p.clone(), read_json(&p)))
        .collect()
}

/// Panels, including those nested in collapsed rows.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        out.push(panel);
        out.extend(panel["panels"].as_array().into_iter().flatten());
    }
    out
}

fn alert_rules() -> Vec<serde_yaml_ng::Value> {
    let text = std::fs::read_to_string(Path::new(DIR).join("alerts.yaml")).unwrap();
    let rules: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    rules["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules").clone())
        .collect()
}

fn yaml_str<'a>(value: &'a serde_yaml_ng::Value, key: &str) -> &'a str {
    value[key].as_str().unwrap_or_default()
}

/// An expression where it was found, with Grafana's interval variables replaced by what
/// Grafana would send for a short range.
#[derive(Debug, Clone)]
struct Expr {
    origin: String,
    promql: String,
}

fn grafana_to_promql(expr: &str) -> String {
    let promql = expr
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "1h");
    assert!(
        !promql.contains('$'),
        "a dashboard variable this test does not substitute: {expr}"
    );
    promql
}

fn dashboard_exprs() -> Vec<Expr> {
    let mut out = Vec::new();
    for (path, dashboard) in dashboards() {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        for panel in panels(&dashboard) {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().expect("every target has an expr");
                out.push(Expr {
                    origin: format!("{file}: {}", panel["title"].as_str().unwrap_or("?")),
                    promql: grafana_to_promql(expr),
                });
            }
        }
    }
    out
}

fn alert_exprs() -> Vec<Expr> {
    alert_rules()
        .iter()
        .map(|rule| Expr {
            origin: format!("alerts.yaml: {}", yaml_str(rule, "alert")),
            promql: yaml_str(rule, "expr").to_owned(),
        })
        .collect()
}

/// Splits `expr` at its top-level set operators (`and`, `or`, `unless`): outside
/// parentheses, braces, brackets and strings.
fn top_level_operands(expr: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let (mut depth, mut quote, mut start) = (0i32, None::<char>, 0);
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < expr.len() {
        let c = bytes[i] as char;
        match (quote, c) {
            (Some(q), _) if c == q && bytes[i.saturating_sub(1)] != b'\\' => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'' | '`') => quote = Some(c),
            (None, '(' | '{' | '[') => depth += 1,
            (None, ')' | '}' | ']') => depth -= 1,
            (None, _) if depth == 0 && expr.is_char_boundary(i) => {
                let rest = &expr[i..];
                let boundary = i == 0 || bytes[i - 1].is_ascii_whitespace();
                if let Some(op) = ["and", "or", "unless"].iter().find(|op| {
                    boundary
                        && rest.starts_with(*op)
                        && rest[op.len()..].starts_with(|ch: char| ch.is_ascii_whitespace())
                }) {
                    parts.push(expr[start..i].trim().to_owned());
                    i += op.len();
                    start = i;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    parts.push(expr[start..].trim().to_owned());
    parts
}

/// The signal behind an alert: each operand of its top-level `and`/`or`/`unless`, with a
/// trailing comparison against a number removed (`x > 0.2` → `x`) and `absent(x)` read
/// as `x`. These must return data while the fleet runs, whether the alert fires or not;
/// the comparison itself only filters.
fn signals(expr: &str) -> Vec<String> {
    top_level_operands(expr)
        .into_iter()
        .map(|operand| {
            if let Some(inner) = operand
                .strip_prefix("absent(")
                .and_then(|s| s.strip_suffix(')'))
            {
                return inner.trim().to_owned();
            }
            let trimmed = operand.trim_end();
            let number_start = trimmed
                .rfind(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == 'e'))
                .map_or(0, |i| i + 1);
            if number_start == trimmed.len() {
                return operand;
            }
            let head = trimmed[..number_start].trim_end();
            let head = head.strip_suffix("bool").map_or(head, str::trim_end);
            for op in ["==", "!=", ">=", "<=", ">", "<"] {
                if let Some(left) = head.strip_suffix(op) {
                    return left.trim().to_owned();
                }
            }
            operand
        })
        .collect()
}

/// Metric names in `promql`: identifiers with the fleet's, JetStream's or the NATS
/// server's prefix (label names and values never start with one).
fn metric_names(promql: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = promql.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    for prefix in ["ccfleet_", "jetstream_", "gnatsd_"] {
        for (i, _) in promql.match_indices(prefix) {
            if i > 0 && ident(bytes[i - 1]) {
                continue;
            }
            let end = promql[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .map_or(promql.len(), |n| i + n);
            names.insert(promql[i..end].to_owned());
        }
    }
    names
}

#[test]
fn signals_strip_thresholds_and_absent() {
    assert_eq!(
        signals("max(deriv(a[10m])) > 0\nand max(a) > 0 and sum(b{x=\"and y\"}) == 0"),
        vec!["max(deriv(a[10m]))", "max(a)", "sum(b{x=\"and y\"})"]
    );
    assert_eq!(signals("sum(l) == 0 or absent(l)"), vec!["sum(l)", "l"]);
    assert_eq!(
        signals("sum(rate(t{o=\"failed\"}[15m])) / sum(rate(t[15m])) > 0.2"),
        vec!["sum(rate(t{o=\"failed\"}[15m])) / sum(rate(t[15m]))"]
    );
    assert_eq!(signals("sum(x) * 3600"), vec!["sum(x) * 3600"]);
    assert_eq!(
        metric_names(
            "histogram_quantile(0.9, sum by (le) (rate(ccfleet_a_bucket[1m]))) + jetstream_b{consumer_name=\"claim\"}"
        ),
        BTreeSet::from(["ccfleet_a_bucket".to_owned(), "jetstream_b".to_owned()])
    );
}

#[test]
fn dashboards_are_provisionable_with_a_datasource_variable() {
    let mut uids = BTreeSet::new();
    for (path, dashboard) in dashboards() {
        let file = path.display();
        let uid = dashboard["uid"].as_str().expect("a uid");
        assert_eq!(
            Some(uid),
            path.file_stem().and_then(|s| s.to_str()),
            "{file}: the file is named after its stable uid"
        );
        assert!(uids.insert(uid.to_owned()), "{file}: uid {uid} is unique");
        assert!(
            dashboard.get("__inputs").is_none(),
            "{file}: provisioned, no __inputs"
        );
        assert!(dashboard["id"].is_null(), "{file}: no database id");
        assert!(
            dashboard["schemaVersion"].as_u64().unwrap_or(0) >= 36,
            "{file}"
        );
        let variables = dashboard["templating"]["list"]
            .as_array()
            .expect("templating");
        let datasource = variables
            .iter()
            .find(|v| v["name"] == "datasource")
            .unwrap_or_else(|| panic!("{file}: a datasource variable"));
        assert_eq!(datasource["type"], "datasource", "{file}");
        assert_eq!(datasource["query"], "prometheus", "{file}");
        let panels = panels(&dashboard);
        assert!(!panels.is_empty(), "{file}");
        let mut ids = BTreeSet::new();
        for panel in panels {
            let title = panel["title"].as_str().unwrap_or("?");
            assert!(
                ids.insert(panel["id"].as_u64().expect("a panel id")),
                "{file}: {title}"
            );
            if panel["type"] == "row" {
                continue;
            }
            let uses_variable = |v: &Value| {
                v["datasource"]["type"] == "prometheus" && v["datasource"]["uid"] == "${datasource}"
            };
            assert!(uses_variable(panel), "{file}: {title} uses the variable");
            let unit = panel["fieldConfig"]["defaults"]["unit"].as_str();
            assert!(
                unit.is_some_and(|u| !u.is_empty()),
                "{file}: {title} has a unit"
            );
            let targets = panel["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "{file}: {title}");
            let mut refs = BTreeSet::new();
            for target in targets {
                assert!(uses_variable(target), "{file}: {title}: every target too");
                assert!(refs.insert(target["refId"].as_str().expect("refId")));
                assert!(target["expr"].as_str().is_some_and(|e| !e.is_empty()));
            }
        }
    }
}

#[test]
fn alert_rules_pass_promtool_and_each_alert_is_tested_firing_and_quiet() {
    let rules = alert_rules();
    let mut names = BTreeSet::new();
    for rule in &rules {
        let name = yaml_str(rule, "alert");
        assert!(!name.is_empty(), "only alerting rules: {rule:?}");
        assert!(names.insert(name.to_owned()), "{name} is defined once");
        assert!(
            ["critical", "warning", "info"].contains(&yaml_str(&rule["labels"], "severity")),
            "{name} has a severity"
        );
        for key in ["summary", "description", "runbook"] {
            assert!(
                !yaml_str(&rule["annotations"], key).is_empty(),
                "{name} has a {key}"
            );
        }
        let runbook = yaml_str(&rule["annotations"], "runbook");
        let anchor = format!("#{}", name.to_ascii_lowercase());
        assert!(runbook.contains(&anchor), "{name}: {runbook}");
        let book = std::fs::read_to_string(Path::new(DIR).join("runbook.md")).unwrap();
        assert!(
            book.lines()
                .any(|l| l.starts_with("## ") && l.contains(name)),
            "runbook.md has a section for {name}"
        );
    }

    // Each alert has a case where it fires and one where it does not.
    let text = std::fs::read_to_string(Path::new(DIR).join("alerts.test.yaml")).unwrap();
    let tests: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    let mut fired = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for test in tests["tests"].as_sequence().expect("tests") {
        for case in test["alert_rule_test"].as_sequence().into_iter().flatten() {
            let name = yaml_str(case, "alertname").to_owned();
            match case["exp_alerts"].as_sequence() {
                Some(alerts) if !alerts.is_empty() => fired.insert(name),
                _ => quiet.insert(name),
            };
        }
    }
    let untested = |seen: &BTreeSet<String>| names.difference(seen).cloned().collect::<Vec<_>>();
    assert!(
        untested(&fired).is_empty(),
        "never fire in a test: {:?}",
        untested(&fired)
    );
    assert!(
        untested(&quiet).is_empty(),
        "never quiet in a test: {:?}",
        untested(&quiet)
    );

    let Some(tools) = tools() else { return };
    for args in [
        vec!["check", "rules", "alerts.yaml"],
        vec!["test", "rules", "alerts.test.yaml"],
    ] {
        let out = Command::new(&tools.promtool)
            .args(&args)
            .current_dir(DIR)
            .output()
            .unwrap();
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "promtool {}:\n{printed}",
            args.join(" ")
        );
        println!("promtool {}: {}", args.join(" "), printed.trim());
    }
}

/// A port free now on loopback (Prometheus and the workers' metrics take a port number).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// nats-server's monitoring URL, from the services file (`NATS_MONITOR_URL`), else the
/// port `deploy/local/services` starts it with.
fn nats_monitor_url() -> String {
    let file = std::env::var_os("CCFLEET_SERVICES_ENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/.state/services.env")
        });
    std::fs::read_to_string(file)
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("NATS_MONITOR_URL=").map(str::to_owned))
        })
        .unwrap_or_else(|| "http://127.0.0.1:18222".into())
}

/// A Prometheus server on loopback, killed on drop.
struct Prometheus {
    child: Child,
    url: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
enum Answer {
    Data,
    Empty,
    Error(String),
}

impl Prometheus {
    fn start(binary: &Path, jobs: &[(&str, Vec<String>)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n",
        );
        config.push_str(&format!(
            "rule_files:\n  - {}/alerts.yaml\nscrape_configs:\n",
            Path::new(DIR).canonicalize().unwrap().display()
        ));
        for (job, targets) in jobs {
            let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ));
        }
        std::fs::write(dir.path().join("prometheus.yml"), &config).unwrap();
        let port = free_port();
        let child = Command::new(binary)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }

    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Option<Value> {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .query(query)
            .send()
            .await
            .ok()?;
        response.json().await.ok()
    }

    async fn query(&self, promql: &str) -> Answer {
        let Some(body) = self.api("/api/v1/query", &[("query", promql)]).await else {
            return Answer::Error("no answer".into());
        };
        if body["status"] != "success" {
            return Answer::Error(format!("{}: {}", body["errorType"], body["error"]));
        }
        match body["data"]["resultType"].as_str() {
            Some("scalar" | "string") => Answer::Data,
            _ => match body["data"]["result"].as_array().map(Vec::len) {
                Some(0) | None => Answer::Empty,
                Some(_) => Answer::Data,
            },
        }
    }

    async fn names(&self) -> BTreeSet<String> {
        self.api("/api/v1/label/__name__/values", &[])
            .await
            .and_then(|b| b["data"].as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_evaluates_every_dashboard_and_alert_query_against_a_running_fleet() {
    let Some(tools) = tools() else { return };
    let env = TestEnv::new().await;
    // Two workers, each serving /metrics on its own port.
    let (first, second) = (free_port(), free_port());
    let mut fleet = fleet_with(&env, 1, 2, RuntimeKind::Process, "default", |config| {
        config.worker.metrics_listen = format!("127.0.0.1:{first}");
    })
    .await;
    fleet.config.worker.metrics_listen = format!("127.0.0.1:{second}");
    fleet.add_worker().await.expect("a second worker");

    // prometheus-nats-exporter's names, from the shared nats-server's monitoring port.
    let exporter = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let exporter_addr = exporter.local_addr().unwrap();
    let stop_exporter = CancellationToken::new();
    let monitor = nats_monitor_url();
    let varz = reqwest::get(format!("{monitor}/varz")).await;
    assert!(
        varz.as_ref().is_ok_and(|r| r.status().is_success()),
        "nats-server's monitoring endpoint {monitor} must answer (deploy/local/services starts it with -m): {varz:?}"
    );
    let exporter_task = tokio::spawn({
        let (stop, monitor) = (stop_exporter.clone(), monitor.clone());
        async move { loadtest::nats_exporter::serve(exporter, &monitor, stop).await }
    });

    let gateway = fleet.gateway_url.trim_start_matches("http://").to_owned();
    let prometheus = Prometheus::start(
        &tools.prometheus,
        &[
            ("ccfleet-gateway", vec![gateway]),
            (
                "ccfleet-worker",
                vec![format!("127.0.0.1:{first}"), format!("127.0.0.1:{second}")],
            ),
            ("nats", vec![exporter_addr.to_string()]),
        ],
    );

    // Traffic: a mention whose Bash call waits for an approval and writes a file, and a
    // plain one.
    let root = fleet
        .demo()
        .post(
            fleet.channel_id(),
            "@claude [[bash:echo observed > observed.txt]] run it",
            None,
        )
        .await
        .unwrap();
    let plain = fleet
        .demo()
        .post(fleet.channel_id(), "@claude hello there", None)
        .await
        .unwrap();
    let prompt = wait_for_post(&fleet, &root.id, TURN, "the permission request", |p| {
        p.message.contains("Permission needed")
    })
    .await;
    react_when_known(&fleet, &prompt, "+1").await;
    wait_for_post(&fleet, &root.id, TURN, "the answer", is_answer).await;
    wait_for_post(&fleet, &root.id, TURN, "the file's link", |p| {
        p.message.contains("observed.txt")
    })
    .await;
    wait_for_post(&fleet, &plain.id, TURN, "the plain answer", is_answer).await;

    // Every target scraped.
    eventually(
        Duration::from_secs(60),
        "Prometheus scraping 4 targets",
        || async {
            match prometheus.query("sum(up)").await {
                Answer::Data => {}
                _ => return None,
            }
            let body = prometheus
                .api("/api/v1/query", &[("query", "up == 1")])
                .await?;
            (body["data"]["result"].as_array()?.len() == 4).then_some(())
        },
    )
    .await;

    let mut exprs = dashboard_exprs();
    let alerts = alert_exprs();
    exprs.extend(alerts.iter().cloned());
    for alert in &alerts {
        for signal in signals(&alert.promql) {
            if signal != alert.promql {
                exprs.push(Expr {
                    origin: format!("{} (signal)", alert.origin),
                    promql: signal,
                });
            }
        }
    }
    let pending = |e: &Expr| {
        metric_names(&e.promql)
            .iter()
            .any(|n| NOT_YET_RENDERED.contains(&n.as_str()))
    };
    // Alert expressions filter: only their signals must return data.
    let must_have_data = |e: &Expr| {
        !pending(e) && (!e.origin.starts_with("alerts.yaml") || e.origin.ends_with("(signal)"))
    };

    // Rates need two samples in their window: poll until everything that must answer does.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (answers, names) = loop {
        let mut answers = Vec::new();
        for expr in &exprs {
            answers.push((expr.clone(), prometheus.query(&expr.promql).await));
        }
        let names = prometheus.names().await;
        let missing = answers
            .iter()
            .filter(|(e, a)| must_have_data(e) && !matches!(a, Answer::Data))
            .count();
        if missing == 0 || tokio::time::Instant::now() > deadline {
            break (answers, names);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };

    let mut failures = Vec::new();
    let mut without_data = BTreeMap::new();
    for (expr, answer) in &answers {
        match answer {
            Answer::Error(err) => {
                failures.push(format!("{}: {}\n  {err}", expr.origin, expr.promql))
            }
            Answer::Empty if must_have_data(expr) => {
                failures.push(format!("{}: no data\n  {}", expr.origin, expr.promql));
            }
            Answer::Empty if pending(expr) => {
                without_data.insert(expr.promql.clone(), expr.origin.clone());
            }
            // An alert whose condition does not hold: its signals were checked.
            Answer::Empty => {}
            Answer::Data => {}
        }
        for name in metric_names(&expr.promql) {
            let expected_missing = NOT_YET_RENDERED.contains(&name.as_str());
            if !expected_missing && !names.contains(&name) {
                failures.push(format!("{}: no metric {name}", expr.origin));
            }
        }
    }
    for name in NOT_YET_RENDERED {
        if names.contains(*name) {
            failures.push(format!(
                "{name} is rendered now: remove it from NOT_YET_RENDERED"
            ));
        }
    }
    failures.sort();
    failures.dedup();
    println!(
        "{} expressions evaluated ({} dashboards' targets, {} alert rules and their signals); {} metric names scraped",
        answers.len(),
        dashboard_exprs().len(),
        alerts.len(),
        names.len()
    );
    for (promql, origin) in &without_data {
        println!("no data (its metric is not rendered by this fleet): {origin}: {promql}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The rule manager loaded every rule and evaluates it without error.
    let rules = eventually(Duration::from_secs(30), "every rule evaluated", || async {
        let body = prometheus.api("/api/v1/rules", &[]).await?;
        let rules: Vec<Value> = body["data"]["groups"]
            .as_array()?
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        let evaluated = rules.len() == alerts.len()
            && rules
                .iter()
                .all(|r| r["health"] != "unknown" && r["lastEvaluation"] != "0001-01-01T00:00:00Z");
        evaluated.then_some(rules)
    })
    .await;
    for rule in &rules {
        assert_eq!(rule["health"], "ok", "{rule}");
    }

    drop(prometheus);
    stop_exporter.cancel();
    exporter_task.await.unwrap().unwrap();
    assert_contract(&fleet).await;
    fleet.stop().await;
}
