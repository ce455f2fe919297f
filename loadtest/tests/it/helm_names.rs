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

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/helm/ccfleet")
}

/// Every object `helm template` renders with these `--set` flags.
fn render(helm: &Path, sets: &[&str]) -> Vec<Value> {
    render_with(helm, &[], sets)
}

/// Every object `helm template` renders with these values files (relative to the chart)
/// and `--set` flags.
fn render_with(helm: &Path, values: &[&str], sets: &[&str]) -> Vec<Value> {
    let chart = chart();
    let mut cmd = Command::new(helm);
    cmd.args(["template", "drift"]).arg(&chart);
    for file in values {
        cmd.arg("--values").arg(chart.join(file));
    }
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

fn component<'a>(objects: &'a [Value], kind: &str, component: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| {
            o["kind"].as_str() == Some(kind)
                && o["metadata"]["labels"]["app.kubernetes.io/component"].as_str()
                    == Some(component)
        })
        .unwrap_or_else(|| panic!("a {kind} for the {component}s"))
}

/// Loads a rendered configuration file through `common::config`.
fn load_config(toml: &str, name: &str) -> Result<Config, common::config::Error> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join(name);
    std::fs::write(&file, toml).expect("writing the file");
    Config::load(&Sources {
        file: Some(file),
        ..Sources::default()
    })
}

/// For each ci values file with repositories: the workers' file lists them with a
/// `token_file` in the directory where the worker pod mounts their Secrets, and loads in
/// `common::config` once those files exist, each token being the one its Secret key
/// holds; no token is in a ConfigMap; the gateways' file has no repositories and the
/// gateway pods mount no token.
#[test]
fn repositories_reach_the_workers_file_and_their_tokens_only_the_worker_pods() {
    let Some(helm) = helm() else { return };
    for values_file in ["ci/full-values.yaml", "ci/process-values.yaml"] {
        let values: Value = serde_yaml_ng::from_str(
            &std::fs::read_to_string(chart().join(values_file)).expect("the values file"),
        )
        .expect("values YAML");
        let wanted = values["repositories"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{values_file} sets repositories"));
        let objects = render_with(&helm, &[values_file], &[]);

        // The tokens the chart holds itself: its repositories Secret's values.
        let chart_secret = objects.iter().find(|o| {
            o["kind"].as_str() == Some("Secret")
                && o["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.ends_with("-repositories"))
        });
        let chart_secret_name = chart_secret.and_then(|s| s["metadata"]["name"].as_str());
        let given: Vec<&str> = wanted
            .iter()
            .filter_map(|r| r["token"]["value"].as_str())
            .collect();
        assert_eq!(
            chart_secret.is_some(),
            !given.is_empty(),
            "{values_file}: a Secret exactly when a token is given as a value"
        );
        for map in of_kind(&objects, "ConfigMap") {
            let text = serde_yaml_ng::to_string(map).unwrap();
            for token in &given {
                assert!(
                    !text.contains(token),
                    "{values_file}: a token in a ConfigMap"
                );
            }
        }

        let map = objects
            .iter()
            .find(|o| {
                o["kind"].as_str() == Some("ConfigMap") && !o["data"]["worker.toml"].is_null()
            })
            .expect("the configuration ConfigMap");
        let gateway_toml = map["data"]["ccfleet.toml"].as_str().unwrap();
        let worker_toml = map["data"]["worker.toml"].as_str().unwrap();

        // The gateways: no repositories in their file, nothing of them mounted.
        let gateway_config = load_config(gateway_toml, "gateway.toml")
            .unwrap_or_else(|err| panic!("{values_file}: the gateways' file: {err}"));
        assert!(gateway_config.repositories.is_empty());
        let gateway = component(&objects, "Deployment", "gateway");
        let gateway_volumes = &gateway["spec"]["template"]["spec"]["volumes"];
        for volume in gateway_volumes.as_sequence().unwrap() {
            assert!(volume["projected"].is_null(), "{values_file}: {volume:?}");
            if let Some(items) = volume["configMap"]["items"].as_sequence() {
                assert!(
                    items
                        .iter()
                        .all(|i| i["key"].as_str() == Some("ccfleet.toml"))
                );
            }
        }
        let gateway_text = serde_yaml_ng::to_string(gateway).unwrap();
        for r in wanted {
            if let Some(secret) = r["token"]["secretName"].as_str() {
                assert!(
                    !gateway_text.contains(secret),
                    "{values_file}: gateway mounts {secret}"
                );
            }
        }
        if let Some(name) = chart_secret_name {
            assert!(
                !gateway_text.contains(name),
                "{values_file}: gateway mounts {name}"
            );
        }

        // The workers: their ConfigMap item, and the token files as the pod would see them.
        let worker = &component(&objects, "Deployment", "worker")["spec"]["template"]["spec"];
        let config_volume = worker["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["name"].as_str() == Some("config"))
            .unwrap();
        assert_eq!(
            config_volume["configMap"]["items"][0]["key"].as_str(),
            Some("worker.toml")
        );
        assert_eq!(
            config_volume["configMap"]["items"][0]["path"].as_str(),
            Some("ccfleet.toml")
        );
        let container = &worker["containers"][0];
        let mount = container["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|m| m["name"].as_str() == Some("repository-tokens"))
            .expect("the worker mounts the tokens");
        assert_eq!(mount["readOnly"].as_bool(), Some(true));
        let mount_path = mount["mountPath"].as_str().unwrap();
        let volume = worker["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["name"].as_str() == Some("repository-tokens"))
            .unwrap();
        let secrets = tempfile::tempdir().unwrap();
        let mut expected = std::collections::HashMap::new();
        for source in volume["projected"]["sources"].as_sequence().unwrap() {
            let secret = source["secret"]["name"].as_str().unwrap();
            for item in source["secret"]["items"].as_sequence().unwrap() {
                let (key, path) = (
                    item["key"].as_str().unwrap(),
                    item["path"].as_str().unwrap(),
                );
                // The chart's Secret holds the given value; one managed outside the chart
                // holds what the operator put there (made up here).
                let token = if Some(secret) == chart_secret_name {
                    chart_secret.unwrap()["stringData"][key]
                        .as_str()
                        .unwrap_or_else(|| panic!("{values_file}: no key {key} in {secret}"))
                        .to_owned()
                } else {
                    format!("token-of-{secret}-{key}")
                };
                std::fs::write(secrets.path().join(path), format!("{token}\n")).unwrap();
                expected.insert(path.to_owned(), token);
            }
        }
        let as_mounted = worker_toml.replace(
            &format!("\"{mount_path}/"),
            &format!("\"{}/", secrets.path().display()),
        );
        let config = load_config(&as_mounted, "ccfleet.toml").unwrap_or_else(|err| {
            panic!("{values_file}: the workers' file does not load: {err}\n{worker_toml}")
        });
        assert_eq!(config.repositories.len(), wanted.len(), "{values_file}");
        for (repo, want) in config.repositories.iter().zip(wanted) {
            assert_eq!(Some(repo.name.as_str()), want["name"].as_str());
            assert_eq!(Some(repo.url.as_str()), want["url"].as_str());
            let channels: Vec<&str> = want["channels"]
                .as_sequence()
                .map(|c| c.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            assert_eq!(repo.channels, channels);
            if let Some(depth) = want["cloneDepth"].as_u64() {
                assert_eq!(u64::from(repo.clone_depth), depth);
            }
            match expected.get(&repo.name) {
                Some(token) => {
                    assert!(want["token"].is_mapping(), "{}", repo.name);
                    assert_eq!(repo.token.expose(), token, "{values_file}: {}", repo.name);
                    assert!(worker_toml.contains(&format!("\"{mount_path}/{}\"", repo.name)));
                }
                None => {
                    assert!(
                        want["token"].is_null(),
                        "{}: its token is not mounted",
                        repo.name
                    );
                    assert!(repo.token.is_empty() && repo.token_file.as_os_str().is_empty());
                }
            }
        }
    }
}

/// Without its token file (a Secret not mounted, a wrong key) the workers' file does not
/// load, and the error names the repository and the path.
#[test]
fn the_workers_file_without_its_mounted_token_names_the_repository_and_the_path() {
    let Some(helm) = helm() else { return };
    let objects = render_with(&helm, &["ci/process-values.yaml"], &[]);
    let map = of_kind(&objects, "ConfigMap")[0];
    let worker_toml = map["data"]["worker.toml"].as_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let as_mounted = worker_toml.replace(
        "\"/run/secrets/ccfleet-repositories/",
        &format!("\"{}/", dir.path().display()),
    );
    let err = load_config(&as_mounted, "ccfleet.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("repositories[0].token_file"), "{err}");
    assert!(err.contains("\"api\""), "{err}");
    assert!(
        err.contains(&dir.path().join("api").display().to_string()),
        "{err}"
    );
}
