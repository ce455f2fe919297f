//! `loadtest bench egress`: what the worker's egress gateway adds to a model request. The
//! same streamed Messages API request goes to the fake model directly and through the
//! gateway (session token checked and swapped for the real key, response streamed back),
//! alternately, `--samples` times each; a request is timed until its last SSE byte.

use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::stats::{Samples, round2};
use super::{Error, Outcome, Report};
use crate::fake_model::FakeModel;

const SCENARIO: &str = "egress";
const KEY: &str = "sk-ant-bench-fake";

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Requests per path (after a few unmeasured ones).
    #[arg(long, default_value_t = 100)]
    pub samples: usize,
}

#[derive(Debug, Serialize)]
struct Figures {
    scenario: &'static str,
    direct_p50_ms: f64,
    direct_p99_ms: f64,
    gateway_p50_ms: f64,
    gateway_p99_ms: f64,
    added_p50_ms: f64,
    samples: usize,
}

pub async fn run(args: &Args) -> Result<Outcome, Error> {
    if args.samples == 0 {
        return Err(Error::Args("--samples must be at least 1".into()));
    }
    let cancel = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|source| Error::Bind {
            what: "the fake model",
            source,
        })?;
    let model = FakeModel::start(listener, cancel.clone()).map_err(|source| Error::Bind {
        what: "the fake model",
        source,
    })?;
    let egress = worker::egress::Egress::bind(
        ([127, 0, 0, 1], 0).into(),
        None,
        worker::egress::EgressOptions::single(
            model.base_url(),
            worker::egress::Credential::ApiKey(common::config::Secret::new(KEY)),
        ),
    )
    .await
    .map_err(|err| Error::Args(format!("the egress gateway did not start: {err}")))?;
    let token = egress.issue(&proto::ids::SessionId::new("bench"));
    let gateway_url = format!("http://{}", egress.advertise());
    let serving = {
        let (egress, cancel) = (egress.clone(), cancel.clone());
        tokio::spawn(async move { egress.run(cancel).await })
    };

    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(Error::Http)?;
    let body = json!({
        "model": "claude-fake-1",
        "max_tokens": 256,
        "stream": true,
        "messages": [{"role": "user", "content": "say something short"}],
    });
    let once = |base: String, key: String| {
        let (client, body) = (client.clone(), body.clone());
        async move {
            let started = Instant::now();
            let response = client
                .post(format!("{base}/v1/messages?beta=true"))
                .header("x-api-key", key)
                .header("anthropic-version", "2023-06-01")
                .json(&body)
                .send()
                .await
                .map_err(Error::Http)?;
            if !response.status().is_success() {
                return Err(Error::Args(format!(
                    "the model answered {}",
                    response.status()
                )));
            }
            response.bytes().await.map_err(Error::Http)?;
            Ok::<Duration, Error>(started.elapsed())
        }
    };
    let (mut direct, mut through) = (Vec::new(), Vec::new());
    for i in 0..args.samples + 5 {
        let d = once(model.base_url(), KEY.to_owned()).await?;
        let g = once(gateway_url.clone(), token.clone()).await?;
        if i >= 5 {
            direct.push(d);
            through.push(g);
        }
    }
    let forwarded_real_key = model
        .message_requests()
        .iter()
        .all(|r| r.credential == crate::fake_model::fingerprint(KEY));
    cancel.cancel();
    let _ = serving.await;
    if !forwarded_real_key {
        return Err(Error::Args(
            "a request reached the fake model without the real key".into(),
        ));
    }
    let (direct, through) = (Samples::new(direct), Samples::new(through));
    let figures = Figures {
        scenario: SCENARIO,
        direct_p50_ms: direct.p50(),
        direct_p99_ms: direct.p99(),
        gateway_p50_ms: through.p50(),
        gateway_p99_ms: through.p99(),
        added_p50_ms: round2(through.p50() - direct.p50()),
        samples: args.samples,
    };
    let figures = serde_json::to_value(&figures).unwrap_or_default();
    Ok(Outcome {
        report: Report {
            scenario: SCENARIO.into(),
            parameters: json!({
                "samples": args.samples,
                "request": "POST /v1/messages, stream: true, timed to the last SSE byte",
                "paths": "loopback: client → fake model; client → egress gateway → fake model",
            }),
            figures: figures.clone(),
            histograms: vec![
                ("direct to the fake model".into(), direct),
                ("through the egress gateway".into(), through),
            ],
        },
        figures,
    })
}
