use std::time::Duration;

use common::signing::{LinkClaims, Signer};
use common::testsupport::TestEnv;
use object_store::PutPayload;
use object_store::path::Path;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{RunningGateway, SimEnv, gateway_config, options};

#[tokio::test]
async fn artifact_links_serve_files_and_refuse_tampering_expiry_and_traversal() {
    let env = TestEnv::new().await;
    let sim = SimEnv::start().await;
    let config = gateway_config(&env, &sim);
    let store = env.store();
    let html = "<!doctype html><html><body><h1>Hello</h1></body></html>";
    for (key, body) in [
        ("artifacts/thr1/turn-1/index.html", html.as_bytes().to_vec()),
        (
            "artifacts/thr1/turn-1/src/app.js",
            b"console.log(1)".to_vec(),
        ),
        ("artifacts/thr1/turn-2/secret.txt", b"other turn".to_vec()),
    ] {
        store
            .objects()
            .put(&Path::from(key), PutPayload::from(body))
            .await
            .unwrap();
    }
    let signer = Signer::new(config.gateway.signing_key.expose().as_bytes());
    let claims = LinkClaims {
        thread: "thr1".into(),
        prefix: "turn-1/".into(),
        expires_at_s: common::now_ms() / 1000 + 600,
    };
    let token = signer.sign(&claims);
    let gw = RunningGateway::start(
        config,
        gateway::Options {
            websocket: false,
            egress: false,
            ..options("a")
        },
    )
    .await;

    // Operations endpoints.
    assert_eq!(
        reqwest::get(format!("{}/healthz", gw.url))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        reqwest::get(format!("{}/readyz", gw.url))
            .await
            .unwrap()
            .status(),
        200
    );
    let metrics = reqwest::get(format!("{}/metrics", gw.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("ccfleet_gateway_publish_latency_seconds"),
        "{metrics}"
    );

    let page = reqwest::get(format!("{}/a/{token}/index.html", gw.url))
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    assert!(
        page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("sandbox")
    );
    assert_eq!(page.text().await.unwrap(), html);

    let js = reqwest::get(format!("{}/a/{token}/src/app.js", gw.url))
        .await
        .unwrap();
    assert_eq!(js.status(), 200);
    assert!(
        js.headers()["content-type"]
            .to_str()
            .unwrap()
            .contains("javascript")
    );

    let listing = reqwest::get(format!("{}/a/{token}/", gw.url))
        .await
        .unwrap();
    assert_eq!(listing.status(), 200);
    let listing = listing.text().await.unwrap();
    assert!(listing.contains("index.html") && listing.contains("src/app.js"));
    assert!(
        !listing.contains("secret.txt"),
        "another turn's files are out of scope"
    );

    let zip = reqwest::get(format!("{}/z/{token}", gw.url)).await.unwrap();
    assert_eq!(zip.status(), 200);
    assert_eq!(zip.headers()["content-type"], "application/zip");
    let bytes = zip.bytes().await.unwrap();
    let archive = zip::ZipArchive::new(std::io::Cursor::new(bytes.to_vec())).unwrap();
    let mut names: Vec<_> = archive.file_names().map(str::to_owned).collect();
    names.sort();
    assert_eq!(names, ["index.html", "src/app.js"]);

    // Out of scope, tampered, expired, missing.
    // (reqwest normalises `..` away, so this asks for a token named `turn-2`.)
    assert_eq!(
        reqwest::get(format!("{}/a/{token}/../turn-2/secret.txt", gw.url))
            .await
            .unwrap()
            .status(),
        403
    );
    let (body, sig) = token.split_once('.').unwrap();
    let mut tampered_sig = sig.to_owned();
    tampered_sig.replace_range(0..1, if sig.starts_with('A') { "B" } else { "A" });
    let tampered = format!("{body}.{tampered_sig}");
    assert_eq!(
        reqwest::get(format!("{}/a/{tampered}/index.html", gw.url))
            .await
            .unwrap()
            .status(),
        403
    );
    let expired = signer.sign(&LinkClaims {
        expires_at_s: 1,
        ..claims.clone()
    });
    assert_eq!(
        reqwest::get(format!("{}/a/{expired}/index.html", gw.url))
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        reqwest::get(format!("{}/a/{token}/nope.txt", gw.url))
            .await
            .unwrap()
            .status(),
        404
    );

    // Raw `..` segments (a client that does not normalise them) are refused with 400.
    let addr = gw.url.trim_start_matches("http://").to_owned();
    for path in [
        format!("/a/{token}/../turn-2/secret.txt"),
        format!("/a/{token}/src/%2e%2e/%2e%2e/turn-2/secret.txt"),
    ] {
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
        let mut response = String::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response))
            .await
            .unwrap()
            .unwrap();
        assert!(response.starts_with("HTTP/1.1 400"), "{path}: {response}");
    }
}
