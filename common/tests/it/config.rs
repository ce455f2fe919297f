use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use common::config::{Config, Error, ObjectStoreKind, Sources};

fn example_path() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/ccfleet.example.toml"
    ))
}

fn keys(value: &toml::Value, prefix: &str, out: &mut BTreeSet<String>) {
    if let toml::Value::Table(table) = value {
        for (k, v) in table {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            if v.is_table() {
                keys(v, &key, out);
            } else {
                out.insert(key);
            }
        }
    }
}

fn load(env: &[(&str, &str)], overrides: &[(&str, &str)]) -> Result<Config, Error> {
    Config::load(&Sources {
        file: None,
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        overrides: overrides
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    })
}

#[test]
fn the_shipped_example_parses_and_documents_every_key() {
    let config = Config::load(&Sources {
        file: Some(example_path()),
        env: HashMap::new(),
        overrides: vec![],
    })
    .expect("example config is valid");
    assert_eq!(config.nats.prefix, "ccfleet");

    let example = toml::Value::Table(
        toml::from_str(&std::fs::read_to_string(example_path()).unwrap()).unwrap(),
    );
    let defaults = toml::Value::Table(toml::from_str(common::config::DEFAULTS).unwrap());
    let (mut documented, mut known) = (BTreeSet::new(), BTreeSet::new());
    keys(&example, "", &mut documented);
    keys(&defaults, "", &mut known);
    assert_eq!(
        documented, known,
        "deploy/ccfleet.example.toml and the defaults list different keys"
    );
}

#[test]
fn environment_overrides_the_file_and_flags_override_the_environment() {
    let config = load(
        &[("CCFLEET__WORKER__MAX_SESSIONS", "7"), ("UNRELATED", "x")],
        &[],
    )
    .unwrap();
    assert_eq!(config.worker.max_sessions, 7);
    let config = load(
        &[("CCFLEET__WORKER__MAX_SESSIONS", "7")],
        &[("worker.max_sessions", "9")],
    )
    .unwrap();
    assert_eq!(config.worker.max_sessions, 9);
    let config = load(&[("CCFLEET__OBJECT_STORE__KIND", "fs")], &[]).unwrap();
    assert_eq!(config.object_store.kind, ObjectStoreKind::Fs);
}

#[test]
fn a_list_from_an_empty_variable_is_empty() {
    let config = load(
        &[
            ("CCFLEET__EGRESS__ALLOWED_HOSTS", ""),
            ("CCFLEET__WORKER__APPROVERS", "alice,,bob"),
        ],
        &[],
    )
    .unwrap();
    assert!(config.egress.allowed_hosts.is_empty());
    assert_eq!(config.worker.approvers, ["alice", "bob"]);
}

#[test]
fn a_bad_value_is_reported_with_its_key() {
    let err = load(&[], &[("worker.max_sessions", "0")]).unwrap_err();
    assert!(err.to_string().contains("worker.max_sessions"), "{err}");
    let err = load(&[], &[("gateway.listen", "not an address")]).unwrap_err();
    assert!(err.to_string().contains("gateway.listen"), "{err}");
    let err = load(&[("CCFLEET__NATS__URL", "http://x")], &[]).unwrap_err();
    assert!(err.to_string().contains("nats.url"), "{err}");
    let err = load(&[], &[("nats.max_consumers", "10")]).unwrap_err();
    assert!(err.to_string().contains("nats.max_consumers"), "{err}");
    let future = (proto::CURRENT + 1).to_string();
    let err = load(&[], &[("nats.wire_version", future.as_str())]).unwrap_err();
    assert!(err.to_string().contains("nats.wire_version"), "{err}");
}

#[test]
fn a_trace_url_needs_a_place_for_the_trace_id() {
    for bad in [
        "http://jaeger:16686/trace/",
        "jaeger:16686/trace/{trace_id}",
    ] {
        let err = load(&[], &[("telemetry.trace_url", bad)]).unwrap_err();
        assert!(err.to_string().contains("telemetry.trace_url"), "{err}");
    }
    let config = load(
        &[],
        &[(
            "telemetry.trace_url",
            "http://jaeger:16686/trace/{trace_id}",
        )],
    )
    .unwrap();
    assert_eq!(
        common::telemetry::trace_link(&config.telemetry.trace_url, "ab12").as_deref(),
        Some("http://jaeger:16686/trace/ab12")
    );
    assert_eq!(load(&[], &[]).unwrap().telemetry.trace_url, "");
}

#[test]
fn a_value_of_the_wrong_type_is_reported_with_its_key() {
    let err = load(&[], &[("worker.max_sessions", "many")]).unwrap_err();
    let chain = format!(
        "{err}: {}",
        std::error::Error::source(&err)
            .map(|e| e.to_string())
            .unwrap_or_default()
    );
    assert!(chain.contains("max_sessions"), "{chain}");
}

#[test]
fn an_unknown_key_is_rejected_by_name() {
    let err = load(&[], &[("worker.max_sesions", "3")]).unwrap_err();
    let mut chain = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(e) = source {
        chain.push_str(&e.to_string());
        source = e.source();
    }
    assert!(chain.contains("max_sesions"), "{chain}");
}

#[test]
fn a_missing_config_file_is_an_error() {
    let err = Config::load(&Sources {
        file: Some("/nonexistent/ccfleet.toml".into()),
        ..Default::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("--config"), "{err}");
}

#[test]
fn secrets_never_appear_in_debug_output() {
    let config = load(
        &[("CCFLEET__MODEL__API_KEY", "sk-ant-very-secret")],
        &[("mattermost.bot_token", "bot-token-secret")],
    )
    .unwrap();
    assert_eq!(config.model.api_key.expose(), "sk-ant-very-secret");
    let debug = format!("{config:?}");
    assert!(!debug.contains("very-secret"), "{debug}");
    assert!(!debug.contains("bot-token-secret"), "{debug}");
}

#[test]
fn admin_tokens_need_a_name_a_long_secret_and_no_twin() {
    use common::config::{AdminScope, AdminToken, Secret};
    let token = |name: &str, secret: &str| AdminToken {
        name: name.into(),
        token: Secret::new(secret),
        scope: AdminScope::Read,
    };
    let long = "x".repeat(AdminToken::MIN_LEN);
    let check = |tokens: Vec<AdminToken>| {
        let mut config = load(&[], &[]).unwrap();
        config.gateway.admin_tokens = tokens;
        config.validate().map_err(|err| err.to_string())
    };
    assert!(check(vec![token("ops", &long)]).is_ok());
    let err = check(vec![token("ops", "short")]).unwrap_err();
    assert!(err.contains("gateway.admin_tokens[0].token"), "{err}");
    assert!(!err.contains("short"), "the secret is never printed: {err}");
    let err = check(vec![token(" ", &long)]).unwrap_err();
    assert!(err.contains("gateway.admin_tokens[0].name"), "{err}");
    let other = "y".repeat(AdminToken::MIN_LEN);
    let err = check(vec![token("ops", &long), token("ops", &other)]).unwrap_err();
    assert!(err.contains("gateway.admin_tokens[1].name"), "{err}");
    let err = check(vec![token("ops", &long), token("dev", &long)]).unwrap_err();
    assert!(err.contains("gateway.admin_tokens[1].token"), "{err}");
    assert_eq!(format!("{:?}", token("ops", &long).token), "***");
}

fn load_file(text: &str) -> Result<Config, Error> {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("ccfleet-config-{}-{n}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    let loaded = Config::load(&Sources {
        file: Some(path.clone()),
        env: HashMap::new(),
        overrides: vec![],
    });
    std::fs::remove_file(&path).unwrap();
    loaded
}

const REPOS: &str = r#"
[[repositories]]
name = "web"
url = "https://gitlab.example.com/team/sub/web.git"
provider = "gitlab"
token = "glpat-secret"
channels = ["chan1"]

[[repositories]]
name = "api"
url = "https://github.com/acme/api"
provider = "github"
token = "ghp-secret"
default_branch = "develop"
clone_depth = 0

[[repositories]]
name = "ghe"
url = "https://ghe.example.com/acme/tool.git"
provider = "github"
token = "t"

[[repositories]]
name = "plain"
url = "http://127.0.0.1:9418/x.git"
provider = "git"
"#;

#[test]
fn repositories_are_read_with_their_defaults_and_derived_urls() {
    use common::config::RepoProvider;
    let config = load_file(REPOS).unwrap();
    let r = &config.repositories;
    assert_eq!(r.len(), 4);
    assert_eq!(r[0].provider, RepoProvider::Gitlab);
    assert_eq!(r[0].project_path(), "team/sub/web");
    assert_eq!(r[0].api_base(), "https://gitlab.example.com/api/v4");
    assert_eq!(r[0].git_username(), "oauth2");
    assert_eq!(r[0].clone_depth, 1);
    assert_eq!(r[0].max_push_file_bytes, 10 * 1024 * 1024);
    assert_eq!(r[0].channels, ["chan1"]);
    assert_eq!(format!("{:?}", r[0].token), "***");
    assert_eq!(r[1].api_base(), "https://api.github.com");
    assert_eq!(r[1].project_path(), "acme/api");
    assert_eq!(r[1].git_username(), "x-access-token");
    assert_eq!(r[1].default_branch, "develop");
    assert_eq!(r[1].clone_depth, 0);
    assert_eq!(r[2].api_base(), "https://ghe.example.com/api/v3");
    assert_eq!(r[3].api_base(), "");
    assert!(r[3].token.is_empty());
    assert!(load(&[], &[]).unwrap().repositories.is_empty());
}

#[test]
fn a_bad_repository_is_reported_with_its_key() {
    let entry = |extra: &str| {
        format!("[[repositories]]\nname = \"web\"\nprovider = \"gitlab\"\ntoken = \"t\"\n{extra}\n")
    };
    for (text, key) in [
        (
            entry("url = \"https://oauth2:glpat@gitlab.example.com/team/web.git\""),
            "repositories[0].url",
        ),
        (entry("url = \"ssh://git@host/team/web.git\""), "repositories[0].url"),
        (entry("url = \"https://host\""), "repositories[0].url"),
        (
            "[[repositories]]\nname = \"web\"\nprovider = \"github\"\nurl = \"https://github.com/a/b\"\n"
                .to_owned(),
            "repositories[0].token",
        ),
        (
            entry("url = \"https://h/a/b\"").replace("\"web\"", "\"x y\""),
            "repositories[0].name",
        ),
        (
            format!(
                "{}{}",
                entry("url = \"https://h/a/b\""),
                entry("url = \"https://h/a/c\"")
            ),
            "repositories[1].name",
        ),
        (
            format!(
                "{}{}",
                entry("url = \"https://h/a/b\"\nchannels = [\"c\"]"),
                entry("url = \"https://h/a/c\"\nchannels = [\"c\"]").replace("\"web\"", "\"web2\"")
            ),
            "repositories[1].channels",
        ),
        (
            entry("url = \"https://h/a/b\"\ndefault_branch = \"--force\""),
            "repositories[0].default_branch",
        ),
        (
            format!(
                "{}{}",
                entry("url = \"https://h/a/b\"\ngenerated_files = true"),
                entry("url = \"https://h/a/c\"\ngenerated_files = true")
                    .replace("\"web\"", "\"web2\"")
            ),
            "repositories[1].generated_files",
        ),
    ] {
        let err = load_file(&text).unwrap_err();
        assert!(err.to_string().contains(key), "{key}: {err}\n{text}");
    }
}

#[test]
fn bypass_permissions_is_refused_with_the_process_runtime_only() {
    let err = load(
        &[],
        &[
            ("worker.runtime", "process"),
            ("worker.permission_mode", "bypassPermissions"),
        ],
    )
    .unwrap_err();
    assert!(
        matches!(&err, Error::Invalid { key, reason } if key == "worker.permission_mode" && reason.contains("no sandbox")),
        "{err}"
    );
    for mode in ["default", "acceptEdits", "plan"] {
        load(
            &[],
            &[
                ("worker.runtime", "process"),
                ("worker.permission_mode", mode),
            ],
        )
        .unwrap();
    }
    load(
        &[],
        &[
            ("worker.runtime", "docker"),
            ("worker.permission_mode", "bypassPermissions"),
        ],
    )
    .unwrap();
}

#[test]
fn weak_signing_keys_are_refused_and_random_ones_accepted() {
    for weak in [
        "short",
        "0123456789abcdef0123456789abcde",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "abcabcabcabcabcabcabcabcabcabcabcabcabc",
        "signing-key-of-at-least-32-bytes-long",
        "please-CHANGEME-before-deploying-this-0123456789",
    ] {
        let err = load(&[], &[("gateway.signing_key", weak)]).unwrap_err();
        assert!(
            matches!(&err, Error::Invalid { key, .. } if key == "gateway.signing_key"),
            "{weak}: {err}"
        );
        assert!(!err.to_string().contains(weak), "the key is never printed");
    }
    for strong in [
        common::testsupport::random_signing_key(),
        "Zq3vN8pX2rT6wY1bK5mH9jL4cF7dS0aGe".to_owned(),
    ] {
        load(&[], &[("gateway.signing_key", &strong)]).unwrap();
    }
    // Empty is for tools that sign nothing; the gateway and the worker refuse it at start.
    load(&[], &[("gateway.signing_key", "")]).unwrap();
}

#[test]
fn approvers_and_allowed_users_are_usernames_or_ids() {
    let config = load(
        &[(
            "CCFLEET__WORKER__APPROVERS",
            "@Carol,bob.smith,id:k7yq3nbgwjbsdgoqhfbnwz1n3r",
        )],
        &[],
    )
    .unwrap();
    let entries: Vec<_> = config
        .worker
        .approvers
        .iter()
        .map(|e| common::config::UserEntry::parse(e).unwrap())
        .collect();
    use common::config::UserEntry::{Id, Name};
    assert_eq!(
        entries,
        vec![
            Name("carol".into()),
            Name("bob.smith".into()),
            Id("k7yq3nbgwjbsdgoqhfbnwz1n3r".into())
        ]
    );
    for bad in ["id:a.b", "id:", "al ice", "*"] {
        let err = load(&[("CCFLEET__WORKER__ALLOWED_USERS", bad)], &[]).unwrap_err();
        assert!(
            matches!(&err, Error::Invalid { key, .. } if key == "worker.allowed_users"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn a_worker_id_must_be_a_subject_token() {
    load(&[], &[("worker.id", "worker-1")]).unwrap();
    for bad in ["host.example.com-1", "a b", "w*", "w>"] {
        let err = load(&[], &[("worker.id", bad)]).unwrap_err();
        assert!(
            matches!(&err, Error::Invalid { key, .. } if key == "worker.id"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn model_credentials_form_a_pool_and_api_key_alone_is_a_pool_of_one() {
    let config = load(&[("CCFLEET__MODEL__API_KEY", "sk-ant-single")], &[]).unwrap();
    let pool = config.model.pool();
    assert_eq!(pool.len(), 1);
    assert_eq!(pool[0].label, "default");
    assert_eq!(pool[0].secret.expose(), "sk-ant-single");
    assert_eq!(config.model.max_wait_s, 300);
    assert!(load(&[], &[]).unwrap().model.pool().is_empty());

    let file = std::env::temp_dir().join(format!(
        "ccfleet-credentials-{}-{:?}.toml",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::write(
        &file,
        r#"
[model]
max_wait_s = 60
prices = [{ model = "claude-x", input = 1.0, output = 2.0, cache_read = 0.1, cache_write = 1.25 }]
[[model.credentials]]
label = "team-a"
secret = "sk-ant-api03-a"
max_concurrency = 4
[[model.credentials]]
secret = "sk-ant-oat01-b"
requests_per_minute = 50
"#,
    )
    .unwrap();
    let from_file = |env: &[(&str, &str)]| {
        Config::load(&Sources {
            file: Some(file.clone()),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            overrides: vec![],
        })
    };
    let config = from_file(&[]).unwrap();
    let pool = config.model.pool();
    assert_eq!(
        pool.iter().map(|c| c.label.as_str()).collect::<Vec<_>>(),
        ["team-a", "credential-2"]
    );
    assert_eq!(pool[0].max_concurrency, 4);
    assert_eq!(pool[1].requests_per_minute, 50);
    assert_eq!(config.model.max_wait_s, 60);
    // The file's price list replaces the built-in one whole.
    assert_eq!(config.model.prices.len(), 1, "{:?}", config.model.prices);
    assert!(!format!("{config:?}").contains("sk-ant-api03-a"));

    // The environment's JSON list replaces the file's.
    let config = from_file(&[(
        "CCFLEET__MODEL__CREDENTIALS",
        r#"[{"label": "env", "secret": "sk-ant-env", "max_concurrency": 2}]"#,
    )])
    .unwrap();
    assert_eq!(config.model.pool()[0].label, "env");
    assert_eq!(config.model.pool().len(), 1);
    let err = from_file(&[("CCFLEET__MODEL__CREDENTIALS", "sk-ant-not-json")]).unwrap_err();
    assert!(err.to_string().contains("model.credentials"), "{err}");
    assert!(!err.to_string().contains("sk-ant-not-json"), "{err}");
    // An empty variable (Compose's `${VAR:-}`) keeps the file's.
    assert_eq!(
        from_file(&[("CCFLEET__MODEL__CREDENTIALS", "")])
            .unwrap()
            .model
            .pool()
            .len(),
        2
    );
    // Both api_key and credentials: refused.
    let err = from_file(&[("CCFLEET__MODEL__API_KEY", "sk-ant-single")]).unwrap_err();
    assert!(err.to_string().contains("model.credentials"), "{err}");
    let _ = std::fs::remove_file(&file);
}

#[test]
fn a_bad_credential_or_price_is_reported_with_its_key() {
    use common::config::{ModelCredential, ModelPrice, Secret};
    let credential = |label: &str, secret: &str| ModelCredential {
        secret: Secret::new(secret),
        label: label.into(),
        max_concurrency: 0,
        requests_per_minute: 0,
    };
    let check = |credentials: Vec<ModelCredential>| {
        let mut config = load(&[], &[]).unwrap();
        config.model.credentials = credentials;
        config.validate().map_err(|err| err.to_string())
    };
    assert!(check(vec![credential("a", "k1"), credential("", "k2")]).is_ok());
    let err = check(vec![credential("a", "k1"), credential("a", "k2")]).unwrap_err();
    assert!(err.contains("model.credentials[1].label"), "{err}");
    let err = check(vec![credential("a", "k1"), credential("b", "k1")]).unwrap_err();
    assert!(err.contains("model.credentials[1].secret"), "{err}");
    assert!(!err.contains("k1"), "{err}");
    let err = check(vec![credential("a", "")]).unwrap_err();
    assert!(err.contains("model.credentials[0].secret"), "{err}");
    let err = check(vec![credential("a", "two words")]).unwrap_err();
    assert!(err.contains("model.credentials[0].secret"), "{err}");
    // A label `credential-2` given to the first clashes with the second's default.
    let err = check(vec![credential("credential-2", "k1"), credential("", "k2")]).unwrap_err();
    assert!(err.contains("model.credentials[1].label"), "{err}");

    let mut config = load(&[], &[]).unwrap();
    config.model.prices.push(ModelPrice {
        model: "claude-x".into(),
        input: -1.0,
        output: 0.0,
        cache_read: 0.0,
        cache_write: 0.0,
    });
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("model.prices"), "{err}");
    let err = load(&[], &[("model.max_wait_s", "7200")]).unwrap_err();
    assert!(err.to_string().contains("model.max_wait_s"), "{err}");
}

/// A repository whose token is in `dir/token` (written when `contents` is given).
fn repo_with_token_file(dir: &std::path::Path, contents: Option<&[u8]>, extra: &str) -> String {
    let path = dir.join("token");
    if let Some(contents) = contents {
        std::fs::write(&path, contents).unwrap();
    }
    format!(
        "[[repositories]]\nname = \"web\"\nurl = \"https://gitlab.example.com/team/web.git\"\nprovider = \"gitlab\"\ntoken_file = {:?}\n{extra}\n",
        path.display().to_string()
    )
}

#[test]
fn a_repository_token_is_read_from_its_file_at_load() {
    let dir = tempfile::tempdir().unwrap();
    // A Secret written with `echo` ends in a newline; git must not get it.
    let config = load_file(&repo_with_token_file(
        dir.path(),
        Some(b"glpat-from-file\n"),
        "",
    ))
    .unwrap();
    let repo = &config.repositories[0];
    assert_eq!(repo.token.expose(), "glpat-from-file");
    assert_eq!(repo.token_file, dir.path().join("token"));
    let debug = format!("{config:?}");
    assert!(!debug.contains("glpat-from-file"), "{debug}");
    assert!(debug.contains("token_file"), "{debug}");

    // A plain-git repository may take its token from a file too.
    let text =
        repo_with_token_file(dir.path(), Some(b"plain-token"), "").replace("\"gitlab\"", "\"git\"");
    let config = load_file(&text).unwrap();
    assert_eq!(config.repositories[0].token.expose(), "plain-token");
}

#[test]
fn a_bad_repository_token_file_names_the_repository_and_the_path_never_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token").display().to_string();
    let cases: [(Option<&[u8]>, &str, &str); 6] = [
        // Missing.
        (None, "", "cannot read"),
        // Empty, or only the newline.
        (Some(b""), "", "is empty"),
        (Some(b" \n"), "", "is empty"),
        // Not text.
        (Some(b"\xff\xfe-secret-bytes"), "", "not UTF-8"),
        // Two lines: no HTTP header or askpass answer can carry it.
        (Some(b"glpat-one\nglpat-two\n"), "", "line breaks"),
        // Both places at once.
        (
            Some(b"glpat-from-file"),
            "token = \"glpat-inline\"",
            "both set",
        ),
    ];
    for (contents, extra, reason) in cases {
        let err = load_file(&repo_with_token_file(dir.path(), contents, extra))
            .unwrap_err()
            .to_string();
        assert!(err.contains("repositories[0].token_file"), "{err}");
        assert!(err.contains("\"web\""), "names the repository: {err}");
        assert!(err.contains(reason), "{reason}: {err}");
        if reason != "line breaks" && reason != "both set" {
            assert!(err.contains(&path), "names the path: {err}");
        }
        for secret in [
            "glpat-one",
            "glpat-two",
            "glpat-from-file",
            "glpat-inline",
            "secret-bytes",
        ] {
            assert!(!err.contains(secret), "{err}");
        }
    }

    // A directory is not readable as a file.
    let text = repo_with_token_file(dir.path(), Some(b"t"), "").replace(
        &format!("{path:?}"),
        &format!("{:?}", dir.path().display().to_string()),
    );
    let err = load_file(&text).unwrap_err().to_string();
    assert!(err.contains("cannot read"), "{err}");

    // Neither token nor token_file for GitLab: the error names both ways.
    let err = load_file(
        "[[repositories]]\nname = \"web\"\nurl = \"https://h/a/b\"\nprovider = \"gitlab\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("repositories[0].token"), "{err}");
    assert!(err.contains("token_file"), "{err}");
    // An inline token with a space is refused under its own key.
    let err = load_file(
        "[[repositories]]\nname = \"web\"\nurl = \"https://h/a/b\"\nprovider = \"gitlab\"\ntoken = \"two words\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("repositories[0].token`"), "{err}");
    assert!(!err.contains("two words"), "{err}");
}

/// deploy/compose's repositories file loads the way a worker started by
/// `compose.repositories.yaml` loads it: the token files in the directory mounted where
/// each `token_file` points, and the file itself where the override's `--config` says.
#[test]
fn the_compose_repositories_example_loads_with_its_tokens_mounted() {
    let compose = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/compose"));
    let mount = "/run/secrets/ccfleet-repositories";
    let override_file = std::fs::read_to_string(compose.join("compose.repositories.yaml")).unwrap();
    assert!(
        override_file.contains(&format!("target: {mount}\n")),
        "the override mounts the tokens at {mount}"
    );
    assert!(override_file.contains("target: /etc/ccfleet/worker.toml\n"));
    assert!(override_file.contains(r#"command: ["--config", "/etc/ccfleet/worker.toml"]"#));

    let example = std::fs::read_to_string(compose.join("repositories.example.toml")).unwrap();
    let tokens = tempfile::tempdir().unwrap();
    let as_mounted = example.replace(
        &format!("\"{mount}/"),
        &format!("\"{}/", tokens.path().display()),
    );
    let names: Vec<String> = toml::from_str::<toml::Value>(&example).unwrap()["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(!names.is_empty());
    for name in &names {
        std::fs::write(tokens.path().join(name), format!("token-{name}\n")).unwrap();
    }
    let config = load_file(&as_mounted).unwrap();
    assert_eq!(config.repositories.len(), names.len());
    for repo in &config.repositories {
        assert_eq!(repo.token.expose(), format!("token-{}", repo.name));
        assert_eq!(
            repo.token_file,
            tokens.path().join(&repo.name),
            "each token file is named after its repository"
        );
    }
    // Without the mount the worker would not start, and would say which file is missing.
    std::fs::remove_file(tokens.path().join(&names[0])).unwrap();
    let err = load_file(&as_mounted).unwrap_err().to_string();
    assert!(err.contains(&format!("{:?}", names[0])), "{err}");
}
