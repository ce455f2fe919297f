//! `bench ingest`: how many outgoing-webhook events one gateway turns into
//! JetStream-acknowledged events per second.
//!
//! One gateway (no WebSocket listener, no egress, no workers) in front of the real NATS;
//! the simulator only answers the gateway's start-up `users/me`. C concurrent HTTP clients
//! post `POST /hooks/outgoing` with unique post ids for D seconds; the gateway answers 200
//! only after JetStream acknowledged the publish. At the end the events stream must hold
//! exactly the accepted count.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::stats::{Samples, round2};
use super::{BenchEnv, Error, Outcome, Report, progress, secs};
use crate::mmsim::client::bootstrap;
use crate::mmsim::{Options as SimOptions, Sim};

/// Flags of `bench ingest`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Concurrent HTTP clients, each with one request in flight.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// How long to drive load, in seconds (fractions allowed).
    #[arg(long, default_value_t = 10.0)]
    pub duration_s: f64,
}

#[derive(Debug, Serialize)]
struct Figures {
    scenario: &'static str,
    events_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    accepted: u64,
    errors: u64,
    stream_messages: u64,
    clients: usize,
    duration_s: f64,
}

const SCENARIO: &str = "ingest";

pub async fn run(args: &Args) -> Result<Outcome, Error> {
    if args.clients == 0 || !(args.duration_s > 0.0 && args.duration_s <= 3600.0) {
        return Err(Error::Args(
            "--clients must be ≥ 1 and --duration-s in (0, 3600]".into(),
        ));
    }
    let env = BenchEnv::new().await;
    let shutdown = CancellationToken::new();
    let result = drive(&env, args, &shutdown).await;
    shutdown.cancel();
    env.finish().await;
    result
}

async fn drive(
    env: &BenchEnv,
    args: &Args,
    shutdown: &CancellationToken,
) -> Result<Outcome, Error> {
    let bind = |what| move |source| Error::Bind { what, source };
    let sim_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(bind("the simulator"))?;
    let sim = Sim::start(sim_listener, SimOptions::default(), shutdown.child_token())
        .await
        .map_err(Error::Sim)?;
    let boot = bootstrap(sim.base_url())
        .await
        .map_err(Error::client("bootstrap"))?;

    let mut config = env.config();
    let webhook_token = uuid::Uuid::new_v4().simple().to_string();
    config.mattermost.url = sim.base_url().to_owned();
    config.mattermost.bot_token = common::config::Secret::new(boot.bot_token.clone());
    config.mattermost.webhook_token = common::config::Secret::new(webhook_token.clone());
    let names = proto::names::Names::new(config.nats.prefix.clone());
    let gateway = gateway::Gateway::build(
        config,
        gateway::Options {
            websocket: false,
            egress: false,
            replica: format!("bench-ingest-{}", env.prefix()),
        },
    )
    .await
    .map_err(Error::Gateway)?;
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(bind("the gateway"))?;
    let url = format!(
        "http://{}/hooks/outgoing",
        listener.local_addr().map_err(bind("the gateway"))?
    );
    let gateway_token = shutdown.child_token();
    let token = gateway_token.clone();
    let gateway_task = tokio::spawn(async move { gateway.run(listener, token).await });

    progress(
        SCENARIO,
        format_args!(
            "{} clients for {} s against {url}",
            args.clients, args.duration_s
        ),
    );
    let duration = Duration::from_secs_f64(args.duration_s);
    let accepted = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut clients = JoinSet::new();
    for c in 0..args.clients {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(Error::Http)?;
        let url = url.clone();
        let token = webhook_token.clone();
        let channel_id = boot.channel.id.clone();
        let (user_id, user_name) = (boot.demo.id.clone(), boot.demo.username.clone());
        let accepted = accepted.clone();
        clients.spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let mut n = 0u64;
            while started.elapsed() < duration {
                n += 1;
                let body = json!({
                    "token": token,
                    "channel_id": channel_id,
                    "user_id": user_id,
                    "user_name": user_name,
                    "post_id": uuid::Uuid::new_v4().simple().to_string(),
                    "text": format!("claude: benchmark event {c}-{n}"),
                    "timestamp": common::now_ms(),
                });
                let t = Instant::now();
                match http.post(&url).json(&body).send().await {
                    Ok(resp) if resp.status() == 200 => {
                        // Drain the body so the connection is reused.
                        let _ = resp.bytes().await;
                        latencies.push(t.elapsed());
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => errors += 1,
                }
            }
            (latencies, errors)
        });
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => progress(SCENARIO, format_args!(
                "{:>5.1} s: {} accepted",
                started.elapsed().as_secs_f64(),
                accepted.load(Ordering::Relaxed)
            )),
            joined = clients.join_next() => match joined {
                Some(Ok((l, e))) => {
                    latencies.extend(l);
                    errors += e;
                }
                Some(Err(_)) => errors += 1,
                None => break,
            },
        }
    }
    let elapsed = started.elapsed();

    let js = async_nats::jetstream::new(env.nats().await);
    let mut stream = js
        .get_stream(names.events_stream())
        .await
        .map_err(Error::nats("open the events stream"))?;
    let stream_messages = stream
        .info()
        .await
        .map_err(Error::nats("read the events stream's info"))?
        .state
        .messages;

    gateway_token.cancel();
    if let Ok(Err(err)) = gateway_task.await {
        tracing::warn!(
            error = &err as &dyn std::error::Error,
            "gateway stopped with an error"
        );
    }
    shutdown.cancel();
    let _ = sim.wait().await;

    let samples = Samples::new(latencies);
    let accepted = samples.len() as u64;
    let figures = Figures {
        scenario: SCENARIO,
        events_per_s: round2(accepted as f64 / elapsed.as_secs_f64()),
        p50_ms: samples.p50(),
        p99_ms: samples.p99(),
        max_ms: samples.max(),
        accepted,
        errors,
        stream_messages,
        clients: args.clients,
        duration_s: secs(elapsed),
    };
    if stream_messages != accepted {
        progress(
            SCENARIO,
            format_args!(
                "WARNING: the stream holds {stream_messages} events but {accepted} were accepted"
            ),
        );
    }
    let figures = serde_json::to_value(&figures).unwrap_or_default();
    Ok(Outcome {
        report: Report {
            scenario: SCENARIO.into(),
            parameters: json!({
                "clients": args.clients,
                "duration_s": args.duration_s,
                "gateway": "1 replica, websocket off, egress off",
                "nats_prefix": env.prefix(),
            }),
            figures: figures.clone(),
            histograms: vec![(
                "webhook request → HTTP 200 (after the JetStream ack)".into(),
                samples,
            )],
        },
        figures,
    })
}
