//! The egress gateway through its real interface (HTTP on a loopback port), against the
//! fake model and listeners of the test's own: model requests have their session token
//! swapped for the real key and stream back unchanged; proxy requests and CONNECT reach
//! allowed hosts only; unknown tokens get nothing; rate-limited credentials cool while
//! others serve (or the request waits, its session told once); usage is recorded in
//! PostgreSQL exactly as the model reported it.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use common::config::{HostPattern, Secret};
use loadtest::fake_model::{FakeModel, Limit, fingerprint};
use proto::ids::SessionId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use worker::egress::{Credential, Egress, EgressOptions, PoolCredential};

const KEY: &str = "sk-ant-real-key";

struct Setup {
    egress: Egress,
    model: FakeModel,
    /// An allowed listener (`localhost:<port>`) answering `allowed` to everything.
    allowed: SocketAddr,
    /// A listener that is not allowed (`127.0.0.1:<port>`).
    refused: SocketAddr,
    _stop: tokio_util::sync::DropGuard,
}

async fn answering(reply: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let body = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
                    reply.len()
                );
                let _ = s.write_all(body.as_bytes()).await;
            });
        }
    });
    addr
}

async fn setup(credential: Credential) -> Setup {
    setup_with(|o| o.credentials = vec![PoolCredential::new("default", credential)]).await
}

async fn setup_with(configure: impl FnOnce(&mut EgressOptions)) -> Setup {
    let stop = CancellationToken::new();
    let model = FakeModel::start(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        stop.clone(),
    )
    .unwrap();
    let allowed = answering("allowed").await;
    let refused = answering("should-not-be-reached").await;
    let mut options = EgressOptions::single(model.base_url(), Credential::ApiKey(Secret::new(KEY)));
    options.allowed_hosts =
        vec![HostPattern::parse(&format!("localhost:{}", allowed.port())).unwrap()];
    configure(&mut options);
    let egress = Egress::bind(([127, 0, 0, 1], 0).into(), None, options)
        .await
        .unwrap();
    let serving = egress.clone();
    let token = stop.clone();
    tokio::spawn(async move { serving.run(token).await });
    Setup {
        egress,
        model,
        allowed,
        refused,
        _stop: stop.drop_guard(),
    }
}

fn basic(token: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("session:{token}"))
    )
}

/// Sends raw `request` to the gateway and reads until it closes (or 5 s).
async fn raw(egress: &Egress, request: &str) -> String {
    let mut s = TcpStream::connect(egress.advertise()).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn model_body() -> serde_json::Value {
    model_body_streamed(true)
}

fn model_body_streamed(stream: bool) -> serde_json::Value {
    serde_json::json!({
        "model": "claude-fake-1",
        "max_tokens": 100,
        "stream": stream,
        "messages": [{"role": "user", "content": "hello"}],
    })
}

#[tokio::test]
async fn a_model_request_goes_out_with_the_real_key_and_streams_back() {
    let s = setup(Credential::ApiKey(Secret::new(KEY))).await;
    let token = s.egress.issue(&SessionId::new("s1"));
    assert!(!token.contains(KEY));
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let through = client
        .post(format!(
            "http://{}/v1/messages?beta=true",
            s.egress.advertise()
        ))
        .header("x-api-key", &token)
        .header("anthropic-version", "2023-06-01")
        .json(&model_body())
        .send()
        .await
        .unwrap();
    assert_eq!(through.status(), 200);
    assert!(
        through.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let streamed = through.text().await.unwrap();
    assert!(streamed.contains("event: message_stop"), "{streamed}");
    let seen = s.model.message_requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].credential, fingerprint(KEY));
    assert_eq!(seen[0].path, "/v1/messages?beta=true");
    assert_eq!(seen[0].headers["anthropic-version"], "2023-06-01");

    // An unknown or revoked token: refused in the API's shape, nothing forwarded.
    s.egress.revoke(&SessionId::new("s1"));
    for key in [token.as_str(), KEY, "ccfleet-session-00"] {
        let refused = client
            .post(format!("http://{}/v1/messages", s.egress.advertise()))
            .header("x-api-key", key)
            .json(&model_body())
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 401);
        let body: serde_json::Value = refused.json().await.unwrap();
        assert_eq!(body["error"]["type"], "authentication_error");
    }
    assert_eq!(s.model.message_requests().len(), 1);
}

#[tokio::test]
async fn an_oauth_token_goes_out_as_a_bearer_token() {
    let oauth = "sk-ant-oat01-subscription";
    let s = setup(Credential::OAuth(Secret::new(oauth))).await;
    let token = s.egress.issue(&SessionId::new("s1"));
    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(format!("http://{}/v1/messages", s.egress.advertise()))
        .header("x-api-key", &token)
        .json(&model_body())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = s.model.message_requests();
    assert_eq!(seen[0].credential, fingerprint(&format!("Bearer {oauth}")));
    assert!(!seen[0].headers.contains_key("x-api-key"));
    assert!(
        seen[0].headers["anthropic-beta"].contains("oauth-2025-04-20"),
        "{:?}",
        seen[0].headers
    );
}

#[tokio::test]
async fn proxy_requests_reach_allowed_hosts_only() {
    let s = setup(Credential::ApiKey(Secret::new(KEY))).await;
    let token = s.egress.issue(&SessionId::new("s1"));
    let auth = basic(&token);
    let (a, r) = (s.allowed.port(), s.refused.port());

    let plain = raw(
        &s.egress,
        &format!("GET http://127.0.0.1:{r}/ HTTP/1.1\r\nHost: 127.0.0.1:{r}\r\nProxy-Authorization: {auth}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(plain.starts_with("HTTP/1.1 403"), "{plain}");
    assert!(
        plain.contains(&format!(
            "request refused: 127.0.0.1:{r} is not on this session's allow-list"
        )),
        "{plain}"
    );
    let tunnel = raw(
        &s.egress,
        &format!("CONNECT 127.0.0.1:{r} HTTP/1.1\r\nHost: 127.0.0.1:{r}\r\nProxy-Authorization: {auth}\r\n\r\n"),
    )
    .await;
    assert!(tunnel.starts_with("HTTP/1.1 403"), "{tunnel}");
    assert!(
        tunnel.contains(&format!("CONNECT refused: 127.0.0.1:{r}")),
        "{tunnel}"
    );

    let ok = raw(
        &s.egress,
        &format!("GET http://localhost:{a}/x HTTP/1.1\r\nHost: localhost:{a}\r\nProxy-Authorization: {auth}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.ends_with("allowed"), "{ok}");

    // A tunnel to the allowed host carries bytes both ways.
    let mut conn = TcpStream::connect(s.egress.advertise()).await.unwrap();
    conn.write_all(
        format!("CONNECT localhost:{a} HTTP/1.1\r\nHost: localhost:{a}\r\nProxy-Authorization: {auth}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        conn.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    conn.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut rest = String::new();
    tokio::time::timeout(Duration::from_secs(5), conn.read_to_string(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(rest.ends_with("allowed"), "{rest}");

    // Without the session's credentials (or with the real key as a password): 407.
    for auth in [
        String::new(),
        format!("Proxy-Authorization: {}\r\n", basic(KEY)),
    ] {
        let denied = raw(
            &s.egress,
            &format!("GET http://localhost:{a}/ HTTP/1.1\r\nHost: localhost:{a}\r\n{auth}Connection: close\r\n\r\n"),
        )
        .await;
        assert!(denied.starts_with("HTTP/1.1 407"), "{denied}");
    }
}

const KEY_A: &str = "sk-ant-pool-a";
const KEY_B: &str = "sk-ant-pool-b";

fn two_credentials(o: &mut EgressOptions) {
    o.credentials = vec![
        PoolCredential::new("a", Credential::ApiKey(Secret::new(KEY_A))),
        PoolCredential::new("b", Credential::ApiKey(Secret::new(KEY_B))),
    ];
}

/// A model request of `token`'s session through the gateway: its status and body.
async fn ask(
    egress: &Egress,
    token: &str,
    stream: bool,
) -> (u16, reqwest::header::HeaderMap, String) {
    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(format!("http://{}/v1/messages", egress.advertise()))
        .header("x-api-key", token)
        .json(&model_body_streamed(stream))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.text().await.unwrap())
}

fn limit(key: &str, status: u16, retry_after_s: u64, times: Option<u32>) -> Limit {
    Limit {
        credential: fingerprint(key),
        status,
        retry_after_s,
        times,
    }
}

#[tokio::test]
async fn a_rate_limited_credential_cools_and_requests_go_out_on_another() {
    let s = setup_with(two_credentials).await;
    s.model.limit(limit(KEY_A, 429, 60, None));
    let token = s.egress.issue(&SessionId::new("s1"));
    for _ in 0..3 {
        let (status, _, body) = ask(&s.egress, &token, true).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("event: message_stop"), "{body}");
    }
    let seen: Vec<(String, u16)> = s
        .model
        .message_requests()
        .iter()
        .map(|r| (r.credential.clone(), r.status))
        .collect();
    let (a, b) = (fingerprint(KEY_A), fingerprint(KEY_B));
    // A answered 429 once; from then on it cools and B serves everything.
    assert_eq!(
        seen,
        vec![(a, 429), (b.clone(), 200), (b.clone(), 200), (b, 200)]
    );
    assert!(s.egress.cooling_notices().is_empty(), "nobody had to wait");
}

#[tokio::test]
async fn with_every_credential_cooling_requests_wait_and_the_session_is_told_once() {
    let s = setup_with(two_credentials).await;
    s.model.limit(limit(KEY_A, 429, 1, Some(1)));
    s.model.limit(limit(KEY_B, 529, 3, Some(1)));
    let session = SessionId::new("s1");
    let token = s.egress.issue(&session);
    let mut told = s.egress.subscribe(&session);
    let started = std::time::Instant::now();
    let started_at = std::time::SystemTime::now();
    let (one, two) = tokio::join!(ask(&s.egress, &token, true), ask(&s.egress, &token, false));
    let took = started.elapsed();
    assert_eq!(one.0, 200, "{}", one.2);
    assert!(one.2.contains("event: message_stop"), "{}", one.2);
    assert_eq!(two.0, 200, "{}", two.2);
    // A cooled for its retry-after (1 s), B longer: both went out on A once it was usable.
    assert!(took >= Duration::from_millis(900), "took {took:?}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    let notices = s.egress.cooling_notices();
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert_eq!(notices[0].0, session);
    // The estimate: when A's retry-after ends.
    let resume_in = notices[0].1.duration_since(started_at).unwrap();
    assert!(
        resume_in >= Duration::from_millis(900) && resume_in <= Duration::from_millis(1500),
        "{resume_in:?}"
    );
    // The session's actor got it once, with the same estimate.
    let unix_ms = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
    };
    assert_eq!(
        told.try_recv().unwrap(),
        worker::egress::Notice::CredentialsCooling {
            resume_at_ms: unix_ms(notices[0].1)
        }
    );
    assert!(told.try_recv().is_err(), "told once");
    let statuses: Vec<u16> = s
        .model
        .message_requests()
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        2,
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&429) && statuses.contains(&529),
        "{statuses:?}"
    );

    // Another wait later is told again.
    s.model.limit(limit(KEY_A, 429, 1, Some(1)));
    s.model.limit(limit(KEY_B, 429, 1, Some(1)));
    let (status, _, body) = ask(&s.egress, &token, true).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(s.egress.cooling_notices().len(), 2);
    assert!(matches!(
        told.try_recv(),
        Ok(worker::egress::Notice::CredentialsCooling { .. })
    ));
}

#[tokio::test]
async fn past_max_wait_the_cli_gets_the_rate_limit_as_is() {
    let s = setup_with(|o| {
        two_credentials(o);
        o.max_wait = Duration::from_millis(500);
    })
    .await;
    s.model.limit(limit(KEY_A, 429, 30, None));
    s.model.limit(limit(KEY_B, 429, 30, None));
    let token = s.egress.issue(&SessionId::new("s1"));
    let started = std::time::Instant::now();
    let (status, headers, body) = ask(&s.egress, &token, true).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(status, 429);
    assert_eq!(headers["retry-after"], "30");
    assert!(
        body.contains("scripted limit"),
        "the fake's own answer: {body}"
    );
    // Nothing waited: a 30 s cooling is past the 0.5 s bound, so nobody was told.
    assert!(s.egress.cooling_notices().is_empty());
    assert_eq!(s.model.message_requests().len(), 2);
}

#[tokio::test]
async fn usage_is_recorded_as_the_model_reported_it() {
    let env = common::testsupport::TestEnv::new().await;
    let db = env.pool();
    common::pg::migrate(&db, worker::records::MIGRATIONS)
        .await
        .unwrap();
    let session = SessionId::new("s-metered");
    worker::records::Records::new(db.clone())
        .create_session(&worker::records::SessionRow {
            thread_id: "thread-1".into(),
            session_id: session.to_string(),
            channel_id: "channel-1".into(),
            started_by: "user-1".into(),
            started_by_name: "alice".into(),
            permission_mode: "default".into(),
            owner: None,
            cli_session_id: None,
            status: "active".into(),
            turns: 0,
            header_ref: None,
        })
        .await
        .unwrap();
    let prices = vec![common::config::ModelPrice {
        model: "claude-fake".into(),
        input: 3.0,
        output: 15.0,
        cache_read: 0.3,
        cache_write: 3.75,
    }];
    let s = {
        let (db, prices) = (db.clone(), prices.clone());
        setup_with(move |o| {
            two_credentials(o);
            o.usage_db = Some(db);
            o.prices = prices;
        })
        .await
    };
    // Spread over the pool: one request on each credential.
    let token = s.egress.issue(&session);
    let (streamed, _, _) = ask(&s.egress, &token, true).await;
    let (whole, _, whole_body) = ask(&s.egress, &token, false).await;
    assert_eq!((streamed, whole), (200, 200), "{whole_body}");

    let reported: Vec<(String, serde_json::Value)> = s
        .model
        .message_requests()
        .into_iter()
        .filter_map(|r| Some((r.credential.clone(), r.usage?)))
        .collect();
    assert_eq!(reported.len(), 2);
    let rows = common::testsupport::eventually(Duration::from_secs(10), "usage rows", || {
        let db = db.clone();
        async move {
            let client = db.get().await.ok()?;
            let rows = client
                .query(
                    "SELECT session_id, user_id, channel_id, credential, model, input_tokens,
                            output_tokens, cache_read_tokens, cache_creation_tokens, cost_usd,
                            day = (now() AT TIME ZONE 'UTC')::date
                     FROM model_usage ORDER BY at",
                    &[],
                )
                .await
                .ok()?;
            (rows.len() == 2).then_some(rows)
        }
    })
    .await;
    let mut total = 0.0;
    for (row, (credential, usage)) in rows.iter().zip(&reported) {
        let n = |key: &str| usage[key].as_i64().unwrap();
        let tokens = [
            n("input_tokens"),
            n("output_tokens"),
            n("cache_read_input_tokens"),
            n("cache_creation_input_tokens"),
        ];
        assert!(tokens.iter().all(|t| *t > 0), "{usage}");
        assert_eq!(row.get::<_, String>(0), session.as_str());
        assert_eq!(row.get::<_, String>(1), "user-1");
        assert_eq!(row.get::<_, String>(2), "channel-1");
        let label = if *credential == fingerprint(KEY_A) {
            "a"
        } else {
            "b"
        };
        assert_eq!(row.get::<_, String>(3), label);
        assert_eq!(row.get::<_, String>(4), "claude-fake-1");
        assert_eq!(
            [row.get::<_, i64>(5), row.get(6), row.get(7), row.get(8)],
            tokens
        );
        let cost = (tokens[0] as f64 * 3.0
            + tokens[1] as f64 * 15.0
            + tokens[2] as f64 * 0.3
            + tokens[3] as f64 * 3.75)
            / 1_000_000.0;
        assert_eq!(row.get::<_, f64>(9), cost);
        assert!(row.get::<_, bool>(10), "recorded under today (UTC)");
        total += cost;
    }
    assert_eq!(
        rows.iter()
            .map(|r| r.get::<_, String>(3))
            .collect::<Vec<_>>(),
        ["a", "b"]
    );

    use worker::egress::meter::{Scope, spend, spend_by_credential};
    let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
    let user = spend(
        &db,
        Scope::User {
            user_id: "user-1",
            day: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(user.requests, 2);
    assert!(close(user.cost_usd, total), "{user:?} vs {total}");
    let channel = spend(
        &db,
        Scope::Channel {
            channel_id: "channel-1",
            day: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(channel, user);
    let by_session = spend(
        &db,
        Scope::Session {
            session_id: session.as_str(),
        },
    )
    .await
    .unwrap();
    assert_eq!(by_session, user);
    let other = spend(
        &db,
        Scope::User {
            user_id: "user-2",
            day: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(other.requests, 0);
    let yesterday = spend(
        &db,
        Scope::User {
            user_id: "user-1",
            day: Some("2000-01-01"),
        },
    )
    .await
    .unwrap();
    assert_eq!(yesterday.requests, 0);
    let by_credential = spend_by_credential(&db, None).await.unwrap();
    assert_eq!(
        by_credential
            .iter()
            .map(|(l, s)| (l.as_str(), s.requests))
            .collect::<Vec<_>>(),
        [("a", 1), ("b", 1)]
    );
}
