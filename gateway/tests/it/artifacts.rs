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

    // Claims of a link's shape signed for another purpose (a button's key) open nothing.
    let other_purpose = signer.sign_for(common::signing::Purpose::ButtonContext, &claims);
    let refused = reqwest::get(format!("{}/a/{other_purpose}/index.html", gw.url))
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);

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
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes.to_vec())).unwrap();
    let mut names: Vec<_> = archive.file_names().map(str::to_owned).collect();
    names.sort();
    assert_eq!(names, ["index.html", "src/app.js"]);
    for (name, expected) in [("index.html", html), ("src/app.js", "console.log(1)")] {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut archive.by_name(name).unwrap(), &mut text).unwrap();
        assert_eq!(text, expected, "{name} unzips to what was stored");
    }

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

/// Fills `buf` with the bytes of a large, incompressible test file, from `state`.
fn noise(state: &mut u64, buf: &mut [u8]) {
    for chunk in buf.chunks_mut(8) {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
    }
}

/// The peak resident memory of this process (`VmHWM`), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// Window 8: a 300 MB artifact downloads through the real gateway from the real store,
/// alone and in the zip, while the process's peak memory grows by far less than the file.
#[tokio::test]
async fn large_artifacts_stream_with_bounded_memory() {
    const SIZE: usize = 300 * 1024 * 1024;
    const PART: usize = 6 * 1024 * 1024;
    const _: () = assert!(SIZE.is_multiple_of(PART));
    const SEED: u64 = 0x9E37_79B9_7F4A_7C15;
    let env = TestEnv::new().await;
    let sim = SimEnv::start().await;
    let config = gateway_config(&env, &sim);
    let store = env.store();
    let key = Path::from("artifacts/big1/turn-1/data.bin");
    {
        let upload = store.objects().put_multipart(&key).await.unwrap();
        let mut writer = object_store::WriteMultipart::new_with_chunk_size(upload, PART);
        let (mut state, mut buf) = (SEED, vec![0u8; PART]);
        for _ in 0..SIZE / PART {
            noise(&mut state, &mut buf);
            writer.wait_for_capacity(2).await.unwrap();
            writer.write(&buf);
        }
        writer.finish().await.unwrap();
    }
    store
        .objects()
        .put(
            &Path::from("artifacts/big1/turn-1/small.txt"),
            PutPayload::from_static(b"small"),
        )
        .await
        .unwrap();
    let signer = Signer::new(config.gateway.signing_key.expose().as_bytes());
    let token = signer.sign(&LinkClaims {
        thread: "big1".into(),
        prefix: "turn-1/".into(),
        expires_at_s: common::now_ms() / 1000 + 600,
    });
    let gw = RunningGateway::start(
        config,
        gateway::Options {
            websocket: false,
            egress: false,
            ..options("a")
        },
    )
    .await;
    // Forget the upload's peak where the kernel allows it (`clear_refs` 5 resets VmHWM).
    let cleared = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    assert!(
        cleared,
        "the peak must be reset to measure the download alone"
    );
    let before = peak_rss();

    // The file itself, checked as it arrives.
    let mut response = reqwest::get(format!("{}/a/{token}/data.bin", gw.url))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (mut state, mut expected, mut received) = (SEED, vec![0u8; PART], 0usize);
    let mut pending: Vec<u8> = Vec::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        pending.extend_from_slice(&chunk);
        while pending.len() >= PART {
            noise(&mut state, &mut expected);
            assert!(
                pending[..PART] == expected[..],
                "data.bin differs at {received}"
            );
            pending.drain(..PART);
            received += PART;
        }
    }
    assert!(pending.is_empty());
    assert_eq!(received, SIZE);

    // The zip, spooled to disk, then read back with the zip crate.
    let mut response = reqwest::get(format!("{}/z/{token}", gw.url)).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut spool = tempfile::tempfile().unwrap();
    while let Some(chunk) = response.chunk().await.unwrap() {
        std::io::Write::write_all(&mut spool, &chunk).unwrap();
    }
    let grown = peak_rss().saturating_sub(before);
    println!(
        "peak RSS grew by {:.1} MiB while downloading a {} MiB file and its zip",
        grown as f64 / 1048576.0,
        SIZE / 1048576
    );
    assert!(
        grown < (SIZE / 4) as u64,
        "peak memory grew by {grown} bytes for a {SIZE}-byte file"
    );
    std::io::Seek::rewind(&mut spool).unwrap();
    let mut archive = zip::ZipArchive::new(spool).unwrap();
    let mut names: Vec<_> = archive.file_names().map(str::to_owned).collect();
    names.sort();
    assert_eq!(names, ["data.bin", "small.txt"]);
    let mut file = archive.by_name("data.bin").unwrap();
    assert_eq!(file.size(), SIZE as u64);
    let (mut state, mut read) = (SEED, vec![0u8; PART]);
    for _ in 0..SIZE / PART {
        std::io::Read::read_exact(&mut file, &mut read).unwrap();
        noise(&mut state, &mut expected);
        assert!(read == expected, "data.bin in the zip differs");
    }
    drop(file);
    let _ = store.objects().delete(&key).await;
}
