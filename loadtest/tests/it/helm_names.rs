//! The Helm chart against the code, through the real `helm template`: the KEDA trigger
//! must name the queue stream and claim consumer exactly as `proto::names` does, and the
//! configuration file the chart renders must load in `common::config`, whose sections
//! refuse unknown keys. Either drifting fails here instead of in a cluster.
//!
//! helm comes from `CCFLEET_HELM`, else from the cache `deploy/helm/check --tools` fills.
//! Without it the tests skip with a reason, except in CI (`CI=true`), where they fail.

use std::path::{Path, PathBuf};
use std::process::Command;

use common::config::{Config, Sources};
use proto::names::Names;
use serde_yaml_ng::Value;

fn helm() -> Option<PathBuf> {
    let path = match std::env::var_os("CCFLEET_HELM") {
        Some(path) => PathBuf::from(path),
        None => {
            let cache = std::env::var_os("CCFLEET_CACHE_DIR")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/ccfleet")))
                .expect("HOME or CCFLEET_CACHE_DIR is set");
            cache.join("tools/bin/helm")
        }
    };
    if path.is_file() {
        return Some(path);
    }
    let reason = format!(
        "no helm at {} (set CCFLEET_HELM, or run deploy/helm/check --tools)",
        path.display()
    );
    crate::e2e::support::skip_unless_ci("check the chart", &reason);
    None
}

/// Every object `helm template` renders with these `--set` flags.
fn render(helm: &Path, sets: &[&str]) -> Vec<Value> {
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/helm/ccfleet");
    let mut cmd = Command::new(helm);
    cmd.args(["template", "drift"]).arg(&chart);
    for set in sets {
        cmd.args(["--set", set]);
    }
    let out = cmd.output().expect("helm runs");
    assert!(
        out.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("helm prints UTF-8");
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).expect("helm renders YAML"))
        .filter(|doc: &Value| !doc.is_null())
        .collect()
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects
        .iter()
        .filter(|o| o["kind"].as_str() == Some(kind))
        .collect()
}

#[test]
fn keda_trigger_names_the_stream_and_consumer_the_code_uses() {
    let Some(helm) = helm() else { return };
    for prefix in ["team-a", "ccfleet", "Fleet_2"] {
        let objects = render(
            &helm,
            &["keda.enabled=true", &format!("config.nats.prefix={prefix}")],
        );
        let scaled = of_kind(&objects, "ScaledObject");
        assert_eq!(scaled.len(), 1, "one ScaledObject for prefix {prefix}");
        let trigger = &scaled[0]["spec"]["triggers"][0];
        assert_eq!(trigger["type"].as_str(), Some("nats-jetstream"));
        let names = Names::new(prefix);
        assert_eq!(
            trigger["metadata"]["stream"].as_str(),
            Some(names.queue_stream().as_str()),
            "stream for prefix {prefix}"
        );
        assert_eq!(
            trigger["metadata"]["consumer"].as_str(),
            Some(names.claim_consumer().as_str()),
            "consumer for prefix {prefix}"
        );
    }
}

#[test]
fn the_rendered_configuration_file_loads_and_listens_where_the_probes_look() {
    let Some(helm) = helm() else { return };
    let objects = render(&helm, &["config.nats.prefix=team-a"]);
    let maps = of_kind(&objects, "ConfigMap");
    assert_eq!(maps.len(), 1);
    let toml = maps[0]["data"]["ccfleet.toml"]
        .as_str()
        .expect("the ConfigMap holds ccfleet.toml");
    let file = std::env::temp_dir().join(format!("ccfleet-helm-{}.toml", std::process::id()));
    std::fs::write(&file, toml).expect("writing the file");
    let loaded = Config::load(&Sources {
        file: Some(file.clone()),
        ..Sources::default()
    });
    let _ = std::fs::remove_file(&file);
    let config = loaded
        .unwrap_or_else(|err| panic!("the chart's ccfleet.toml does not load: {err}\n{toml}"));
    assert_eq!(config.nats.prefix, "team-a");
    assert_eq!(config.gateway.listen, "0.0.0.0:8080");
    assert_eq!(config.worker.metrics_listen, "0.0.0.0:9090");
    // The probes and the ServiceMonitor use these ports by name; check they agree.
    let deployments = of_kind(&objects, "Deployment");
    let port_of = |component: &str| {
        let d = deployments
            .iter()
            .find(|d| {
                d["metadata"]["labels"]["app.kubernetes.io/component"].as_str() == Some(component)
            })
            .expect("a Deployment per component");
        d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"].as_u64()
    };
    assert_eq!(port_of("gateway"), Some(8080));
    assert_eq!(port_of("worker"), Some(9090));
}
