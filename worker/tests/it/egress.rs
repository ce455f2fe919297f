//! The egress gateway through its real interface (HTTP on a loopback port), against the
//! fake model and listeners of the test's own: model requests have their session token
//! swapped for the real key and stream back unchanged; proxy requests and CONNECT reach
//! allowed hosts only; unknown tokens get nothing.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use common::config::{HostPattern, Secret};
use loadtest::fake_model::{FakeModel, fingerprint};
use proto::ids::SessionId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use worker::egress::{Credential, Egress, EgressOptions};

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
    let stop = CancellationToken::new();
    let model = FakeModel::start(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        stop.clone(),
    )
    .unwrap();
    let allowed = answering("allowed").await;
    let refused = answering("should-not-be-reached").await;
    let egress = Egress::bind(
        ([127, 0, 0, 1], 0).into(),
        None,
        EgressOptions {
            model_base_url: model.base_url(),
            credential,
            allowed_hosts: vec![
                HostPattern::parse(&format!("localhost:{}", allowed.port())).unwrap(),
            ],
            channel_hosts: Default::default(),
        },
    )
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
    serde_json::json!({
        "model": "claude-fake-1",
        "max_tokens": 100,
        "stream": true,
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
