//! The admin API and `ccfleet-ctl` against a running in-process fleet (real NATS,
//! PostgreSQL, S3; the Mattermost simulator; the sim agent runtime): tokens and scopes,
//! list, detail, stop, stop-all, drain, workers, queue, the audit rows, the served
//! OpenAPI document equal to the checked-in one, and every response checked against the
//! document's schemas (with Python's `jsonschema`).

use std::path::PathBuf;
use std::time::Duration;

use common::config::{AdminScope, AdminToken, RuntimeKind, Secret};
use common::testsupport::{TestEnv, eventually};
use loadtest::fleet::{FleetOptions, LocalFleet};
use loadtest::mmsim::model::Post;
use serde_json::{Value, json};

const ADMIN: &str = "admin-token-for-the-tests-0123456789";
const READ: &str = "read-token-for-the-tests-0123456789";
const WAIT: Duration = Duration::from_secs(60);

async fn fleet(env: &TestEnv, workers: usize) -> LocalFleet {
    fleet_with(env, workers, 2).await
}

async fn fleet_with(env: &TestEnv, workers: usize, max_sessions: usize) -> LocalFleet {
    let mut config = env.config.clone();
    config.worker.lease_ttl_s = 3;
    config.worker.idle_timeout_s = 600;
    config.worker.shutdown_grace_s = 10;
    config.gateway.coalesce_interval_ms = 200;
    config.mattermost.requests_per_second = 500;
    config.gateway.admin_tokens = vec![
        AdminToken {
            name: "ops".into(),
            token: Secret::new(ADMIN),
            scope: AdminScope::Admin,
        },
        AdminToken {
            name: "viewer".into(),
            token: Secret::new(READ),
            scope: AdminScope::Read,
        },
    ];
    LocalFleet::start(
        config,
        FleetOptions {
            workers,
            runtime: RuntimeKind::Sim,
            max_sessions,
            sessions_dir: std::env::temp_dir().join(format!("ccfleet-admin-{}", env.prefix)),
            ..Default::default()
        },
    )
    .await
    .expect("the local fleet starts")
}

/// Calls the API and keeps every answer for the schema check.
struct Api {
    base: String,
    http: reqwest::Client,
    seen: std::sync::Mutex<Vec<Value>>,
}

impl Api {
    fn new(fleet: &LocalFleet) -> Self {
        Self {
            base: format!("{}/admin/v1", fleet.gateway_url),
            http: reqwest::Client::new(),
            seen: Default::default(),
        }
    }

    /// `template` is the document's path (for the schema check), `path` the real one.
    async fn call(
        &self,
        method: &str,
        template: &str,
        path: &str,
        token: Option<&str>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let body: Value = serde_json::from_str(&text)
            .unwrap_or_else(|err| panic!("{method} {path} → {status}: not JSON ({err}): {text}"));
        self.seen.lock().unwrap().push(json!({
            "method": method.as_str().to_lowercase(),
            "path": template,
            "status": status,
            "body": body,
        }));
        (status, body)
    }
}

fn openapi_path() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/admin.json"))
}

/// Every answer seen matches the document: its status is documented for the operation,
/// and its body validates against that response's schema.
fn check_against_document(seen: &[Value]) {
    let dir = tempfile::tempdir().unwrap();
    let answers = dir.path().join("answers.json");
    std::fs::write(&answers, serde_json::to_vec(seen).unwrap()).unwrap();
    let script = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/openapi_check.py"
    ));
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(openapi_path())
        .arg(&answers)
        .output()
        .expect("python3 runs (with the jsonschema package)");
    eprint!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        out.status.success(),
        "responses do not match the OpenAPI document:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn bot_posts(fleet: &LocalFleet, root: &str) -> Vec<Post> {
    let Ok(thread) = fleet.demo().thread(root).await else {
        return Vec::new();
    };
    let bot = fleet.boot.bot.id.clone();
    let mut posts: Vec<Post> = thread
        .posts
        .into_values()
        .filter(|p| p.user_id == bot)
        .collect();
    posts.sort_by_key(|p| (p.create_at, p.id.clone()));
    posts
}

/// Waits until the thread's session runs on a worker (its lease is held); returns it.
async fn running(api: &Api, thread: &str) -> String {
    eventually(WAIT, "the session runs", || async {
        let (status, body) = api
            .call(
                "get",
                "/sessions/{id}",
                &format!("/sessions/{thread}"),
                Some(READ),
            )
            .await;
        (status == 200)
            .then(|| body["running_on"].as_str().map(str::to_owned))
            .flatten()
    })
    .await
}

async fn says_stopped(fleet: &LocalFleet, thread: &str) -> Post {
    eventually(
        WAIT,
        "the thread says an administrator stopped it",
        || async {
            bot_posts(fleet, thread).await.into_iter().find(|p| {
                p.message
                    .contains("An administrator (`ops`) stopped this session")
            })
        },
    )
    .await
}

async fn audit_rows(env: &TestEnv) -> Vec<(String, String, String, String)> {
    let client = env.pool().get().await.unwrap();
    client
        .query(
            "SELECT actor, action, target, outcome FROM admin_audit ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

#[tokio::test]
async fn the_admin_api_lists_shows_stops_and_drains_with_scoped_tokens_and_an_audit() {
    let env = TestEnv::new().await;
    let fleet = fleet(&env, 2).await;
    let api = Api::new(&fleet);

    // The served document is the checked-in one.
    let served: Value = reqwest::get(format!("{}/openapi.json", api.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let checked_in: Value =
        serde_json::from_str(&std::fs::read_to_string(openapi_path()).unwrap()).unwrap();
    assert_eq!(served, checked_in);

    // No token, an unknown one: 401.
    let (status, body) = api.call("get", "/sessions", "/sessions", None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, _) = api
        .call(
            "get",
            "/sessions",
            "/sessions",
            Some("not-a-token-at-all-0123456789"),
        )
        .await;
    assert_eq!(status, 401);
    let (status, _) = api
        .call("post", "/sessions/stop-all", "/sessions/stop-all", None)
        .await;
    assert_eq!(status, 401);

    // Two threads: one slow (it will be stopped mid-turn), one answered.
    let slow = fleet
        .demo()
        .post(
            fleet.channel_id(),
            "@claude [[slow:60000]] take your time",
            None,
        )
        .await
        .unwrap();
    let quick = fleet
        .demo()
        .post(fleet.channel_id(), "@claude hello there", None)
        .await
        .unwrap();
    let slow_worker = running(&api, &slow.id).await;
    eventually(
        WAIT,
        "the quick thread's first turn is recorded",
        || async {
            let (_, body) = api
                .call(
                    "get",
                    "/sessions/{id}",
                    &format!("/sessions/{}", quick.id),
                    Some(READ),
                )
                .await;
            let turns = body["turns"].as_array()?;
            turns
                .iter()
                .any(|t| t["duration_ms"].is_i64() && t["finished_at"].is_string())
                .then_some(())
        },
    )
    .await;

    // The list: both, filtered, paginated.
    let (status, body) = api.call("get", "/sessions", "/sessions", Some(READ)).await;
    assert_eq!(status, 200, "{body}");
    let threads: Vec<&str> = body["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["thread_id"].as_str().unwrap())
        .collect();
    assert!(threads.contains(&slow.id.as_str()) && threads.contains(&quick.id.as_str()));
    let (_, first) = api
        .call("get", "/sessions", "/sessions?limit=1", Some(READ))
        .await;
    assert_eq!(first["sessions"].as_array().unwrap().len(), 1);
    let cursor = first["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_owned();
    let (_, second) = api
        .call(
            "get",
            "/sessions",
            &format!("/sessions?limit=1&cursor={cursor}"),
            Some(READ),
        )
        .await;
    assert_eq!(second["sessions"].as_array().unwrap().len(), 1);
    assert_ne!(
        first["sessions"][0]["thread_id"],
        second["sessions"][0]["thread_id"]
    );
    let (_, by_worker) = api
        .call(
            "get",
            "/sessions",
            &format!("/sessions?worker={slow_worker}"),
            Some(READ),
        )
        .await;
    assert!(
        by_worker["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["worker"] == json!(slow_worker))
    );
    let user = &fleet.demo().username;
    let channel = fleet.channel_id();
    let (_, by_user) = api
        .call(
            "get",
            "/sessions",
            &format!("/sessions?user={user}&channel={channel}"),
            Some(READ),
        )
        .await;
    assert_eq!(
        by_user["sessions"].as_array().unwrap().len(),
        2,
        "{by_user}"
    );
    let (_, nobody) = api
        .call("get", "/sessions", "/sessions?user=nobody", Some(READ))
        .await;
    assert_eq!(nobody["sessions"], json!([]));
    let (status, _) = api
        .call("get", "/sessions", "/sessions?limit=0", Some(READ))
        .await;
    assert_eq!(status, 400);
    let (status, _) = api
        .call(
            "get",
            "/sessions/{id}",
            "/sessions/no-such-thread",
            Some(READ),
        )
        .await;
    assert_eq!(status, 404);

    // A read token may not stop: 403, and the refusal is audited.
    let (status, body) = api
        .call(
            "post",
            "/sessions/{id}/stop",
            &format!("/sessions/{}/stop", slow.id),
            Some(READ),
        )
        .await;
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")));

    // Workers and the queue.
    let (status, workers) = api.call("get", "/workers", "/workers", Some(READ)).await;
    assert_eq!(status, 200);
    assert_eq!(workers["workers"].as_array().unwrap().len(), 2, "{workers}");
    assert_eq!(workers["capacity"], json!(4));
    let (status, queue) = api.call("get", "/queue", "/queue", Some(READ)).await;
    assert_eq!(status, 200, "{queue}");

    // Stop the slow session mid-turn: the thread says so, the session is let go
    // (resumable: a later message is answered again).
    let (status, body) = api
        .call(
            "post",
            "/sessions/{id}/stop",
            &format!("/sessions/{}/stop", slow.id),
            Some(ADMIN),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["worker"], json!(slow_worker));
    says_stopped(&fleet, &slow.id).await;
    let posts = bot_posts(&fleet, &slow.id).await;
    assert!(
        posts
            .iter()
            .any(|p| p.message.contains("Stopped by an administrator (`ops`)")),
        "the running turn's answer says it was stopped: {posts:#?}"
    );
    eventually(WAIT, "the stopped session is released", || async {
        let (_, body) = api
            .call(
                "get",
                "/sessions/{id}",
                &format!("/sessions/{}", slow.id),
                Some(READ),
            )
            .await;
        (body["running_on"].is_null() && body["session"]["worker"].is_null()).then_some(())
    })
    .await;
    let (status, body) = api
        .call(
            "post",
            "/sessions/{id}/stop",
            &format!("/sessions/{}/stop", slow.id),
            Some(ADMIN),
        )
        .await;
    assert_eq!((status, body["error"].as_str()), (409, Some("conflict")));
    let (_, detail) = api
        .call(
            "get",
            "/sessions/{id}",
            &format!("/sessions/{}", slow.id),
            Some(READ),
        )
        .await;
    let outcomes: Vec<&str> = detail["admin_audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        ["forbidden", "accepted", "not_running"],
        "{detail}"
    );

    // Stop all: the quick session (idle but live) is stopped too.
    running(&api, &quick.id).await;
    let (status, body) = api
        .call(
            "post",
            "/sessions/stop-all",
            "/sessions/stop-all",
            Some(ADMIN),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let stopping: Vec<&str> = body["stopping"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["thread_id"].as_str().unwrap())
        .collect();
    assert_eq!(stopping, [quick.id.as_str()]);
    says_stopped(&fleet, &quick.id).await;

    // The stopped session resumes on the next message.
    let answered = |posts: Vec<Post>| {
        posts
            .iter()
            .filter(|p| p.message.contains(":stopwatch:"))
            .count()
    };
    let before = answered(bot_posts(&fleet, &slow.id).await);
    fleet
        .demo()
        .post(fleet.channel_id(), "@claude are you back?", Some(&slow.id))
        .await
        .unwrap();
    eventually(WAIT, "the stopped session answers again", || async {
        (answered(bot_posts(&fleet, &slow.id).await) > before).then_some(())
    })
    .await;

    // Drain one worker: it leaves the workers list; an unknown one is 404.
    let drained = fleet.workers[0].id.clone();
    let (status, body) = api
        .call(
            "post",
            "/workers/{id}/drain",
            &format!("/workers/{drained}/drain"),
            Some(ADMIN),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["draining"], json!(true));
    // Asked again (while it drains or once drained), it answers the same.
    let (status, body) = api
        .call(
            "post",
            "/workers/{id}/drain",
            &format!("/workers/{drained}/drain"),
            Some(ADMIN),
        )
        .await;
    assert_eq!((status, &body["draining"]), (202, &json!(true)), "{body}");
    eventually(WAIT, "the drained worker leaves the list", || async {
        let (_, body) = api.call("get", "/workers", "/workers", Some(READ)).await;
        let ids: Vec<String> = body["workers"]
            .as_array()?
            .iter()
            .filter_map(|w| w["worker"].as_str().map(str::to_owned))
            .collect();
        (!ids.contains(&drained) && ids.len() == 1).then_some(())
    })
    .await;
    let (status, _) = api
        .call(
            "post",
            "/workers/{id}/drain",
            "/workers/no-such-worker/drain",
            Some(ADMIN),
        )
        .await;
    assert_eq!(status, 404);

    // The audit holds every action, by name.
    let rows = audit_rows(&env).await;
    let has = |action: &str, target: &str, outcome: &str| {
        rows.iter().any(|(a, act, t, o)| {
            a == if outcome == "forbidden" {
                "viewer"
            } else {
                "ops"
            } && act == action
                && t == target
                && o == outcome
        })
    };
    assert!(has("stop", &slow.id, "forbidden"), "{rows:#?}");
    assert!(has("stop", &slow.id, "accepted"), "{rows:#?}");
    assert!(has("stop_all", "*", "accepted"), "{rows:#?}");
    assert!(has("stop", &quick.id, "accepted"), "{rows:#?}");
    assert!(has("drain", &drained, "accepted"), "{rows:#?}");
    assert!(has("drain", "no-such-worker", "not_found"), "{rows:#?}");

    check_against_document(&api.seen.lock().unwrap());
    fleet.stop().await;
}

#[tokio::test]
async fn a_full_fleet_shows_its_queue_and_a_stop_frees_the_slot_for_the_waiting_thread() {
    let env = TestEnv::new().await;
    let fleet = fleet_with(&env, 1, 1).await;
    let api = Api::new(&fleet);
    let busy = fleet
        .demo()
        .post(
            fleet.channel_id(),
            "@claude [[slow:60000]] take your time",
            None,
        )
        .await
        .unwrap();
    running(&api, &busy.id).await;
    eventually(WAIT, "the busy session is listed as working", || async {
        let (_, working) = api
            .call("get", "/sessions", "/sessions?state=working", Some(READ))
            .await;
        (working["sessions"][0]["thread_id"] == json!(busy.id)).then_some(())
    })
    .await;
    let waiting = fleet
        .demo()
        .post(fleet.channel_id(), "@claude and me?", None)
        .await
        .unwrap();
    let queued = eventually(WAIT, "the second thread waits in the queue", || async {
        let (status, body) = api.call("get", "/queue", "/queue", Some(READ)).await;
        (status == 200 && body["total"] == json!(1)).then_some(body)
    })
    .await;
    assert_eq!(
        queued["threads"][0]["thread_id"],
        json!(waiting.id),
        "{queued}"
    );
    assert!(
        queued["threads"][0]["pending"].as_u64() >= Some(1),
        "{queued}"
    );
    assert!(queued["threads"][0]["queued_at_ms"].is_i64(), "{queued}");
    let (_, workers) = api.call("get", "/workers", "/workers", Some(READ)).await;
    assert_eq!(
        (workers["capacity"].clone(), workers["free_slots"].clone()),
        (json!(1), json!(0)),
        "{workers}"
    );

    let (status, body) = api
        .call(
            "post",
            "/sessions/{id}/stop",
            &format!("/sessions/{}/stop", busy.id),
            Some(ADMIN),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    says_stopped(&fleet, &busy.id).await;
    eventually(WAIT, "the waiting thread is answered", || async {
        bot_posts(&fleet, &waiting.id)
            .await
            .iter()
            .any(|p| p.message.contains(":stopwatch:"))
            .then_some(())
    })
    .await;
    let (_, queue) = api.call("get", "/queue", "/queue", Some(READ)).await;
    assert_eq!(queue["total"], json!(0), "{queue}");
    let (_, idle) = api
        .call("get", "/sessions", "/sessions?state=idle", Some(READ))
        .await;
    assert!(
        idle["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["thread_id"] == json!(busy.id)),
        "{idle}"
    );
    check_against_document(&api.seen.lock().unwrap());
    fleet.stop().await;
}

/// Runs the built `ccfleet-ctl`; returns its exit code and output.
fn ctl(args: &[&str], token: Option<&str>) -> (i32, String, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ccfleet-ctl"));
    command
        .args(args)
        .env_remove("CCFLEET_ADMIN_TOKEN")
        .env_remove("CCFLEET_ADMIN_URL");
    if let Some(token) = token {
        command.env("CCFLEET_ADMIN_TOKEN", token);
    }
    let out = command.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn ccfleet_ctl_drives_the_admin_api_with_exit_codes_scripts_can_use() {
    let env = TestEnv::new().await;
    let fleet = fleet(&env, 2).await;
    let url = fleet.gateway_url.clone();
    let run = |args: Vec<String>, token: Option<&'static str>| {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            ctl(&args, token)
        })
    };
    let with_url = |rest: &[&str]| {
        let mut args = vec!["--url".to_owned(), url.clone()];
        args.extend(rest.iter().map(|s| (*s).to_owned()));
        args
    };

    // Usage, help, no token, unreachable.
    let (code, _, _) = run(vec!["frobnicate".into()], Some(ADMIN)).await.unwrap();
    assert_eq!(code, 2);
    let (code, help, _) = run(vec!["--help".into()], None).await.unwrap();
    assert_eq!(code, 0);
    assert!(help.contains("Exit codes"), "{help}");
    let (code, _, err) = run(with_url(&["workers"]), None).await.unwrap();
    assert_eq!(code, 3, "{err}");
    let (code, _, err) = run(
        vec![
            "--url".into(),
            "http://127.0.0.1:9".into(),
            "workers".into(),
        ],
        Some(ADMIN),
    )
    .await
    .unwrap();
    assert_eq!(code, 4, "{err}");

    // Look.
    let (code, out, err) = run(with_url(&["workers"]), Some(READ)).await.unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("WORKER"), "{out}");
    assert!(out.contains("capacity 4"), "{out}");
    let root = fleet
        .demo()
        .post(
            fleet.channel_id(),
            "@claude [[slow:60000]] take your time",
            None,
        )
        .await
        .unwrap();
    let thread = root.id.clone();
    let worker = eventually(WAIT, "the session runs", || {
        let args = with_url(&["--json", "session", &thread]);
        async move {
            let (code, out, _) = run(args, Some(READ)).await.unwrap();
            let body: Value = serde_json::from_str(&out).ok()?;
            (code == 0)
                .then(|| body["running_on"].as_str().map(str::to_owned))
                .flatten()
        }
    })
    .await;
    let (code, out, _) = run(with_url(&["sessions"]), Some(READ)).await.unwrap();
    assert_eq!(code, 0);
    assert!(out.contains(&thread) && out.contains(&worker), "{out}");
    let (code, out, _) = run(
        with_url(&["sessions", "--json", "--worker", &worker]),
        Some(READ),
    )
    .await
    .unwrap();
    assert_eq!(code, 0);
    let body: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(body["sessions"][0]["thread_id"], json!(thread));
    let (code, out, _) = run(with_url(&["session", &thread]), Some(READ))
        .await
        .unwrap();
    assert_eq!(code, 0);
    assert!(out.contains("turns:"), "{out}");
    let (code, out, _) = run(with_url(&["queue"]), Some(READ)).await.unwrap();
    assert_eq!(code, 0);
    assert!(out.contains("threads waiting"), "{out}");
    let (code, _, _) = run(with_url(&["session", "no-such-thread"]), Some(READ))
        .await
        .unwrap();
    assert_eq!(code, 1);

    // Act: a read token is refused (3); an admin token stops and drains (0).
    let (code, _, err) = run(with_url(&["stop", &thread]), Some(READ)).await.unwrap();
    assert_eq!(code, 3, "{err}");
    let (code, out, err) = run(with_url(&["stop", &thread]), Some(ADMIN))
        .await
        .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("stopping"), "{out}");
    says_stopped(&fleet, &thread).await;
    let (code, out, _) = run(with_url(&["stop-all"]), Some(ADMIN)).await.unwrap();
    assert_eq!(code, 0);
    assert!(out.starts_with("stopping"), "{out}");
    let (code, out, err) = run(with_url(&["drain", &worker]), Some(ADMIN))
        .await
        .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("draining"), "{out}");
    let (code, _, _) = run(with_url(&["drain", "no-such-worker"]), Some(ADMIN))
        .await
        .unwrap();
    assert_eq!(code, 1);
    let rows = audit_rows(&env).await;
    assert!(
        rows.iter()
            .any(|(a, act, t, o)| a == "ops" && act == "drain" && *t == worker && o == "accepted"),
        "{rows:#?}"
    );
    fleet.stop().await;
}
