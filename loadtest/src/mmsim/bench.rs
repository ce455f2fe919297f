//! `loadtest mmsim-bench`: how many post creations per second the simulator sustains.
//!
//! Starts the simulator in-process on loopback, bootstraps it through the API, keeps one
//! WebSocket listener on the channel (as the gateway would), and drives `POST /api/v4/posts`
//! from N concurrent scripted clients for a bounded time. Prints one JSON line.

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::client::{Error as ClientError, NewPost, bootstrap};
use super::{Options, Sim};

/// Flags of `loadtest mmsim-bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Concurrent clients, each with one request in flight.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// How long to drive load, in seconds.
    #[arg(long, default_value_t = 5)]
    pub duration_s: u64,
    /// Also check every exchange against this OpenAPI spec (slower; off by default).
    #[arg(long, value_name = "FILE")]
    pub contract_spec: Option<std::path::PathBuf>,
}

/// The printed figures.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub post_create_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub posts: usize,
    pub errors: usize,
    pub clients: usize,
    pub duration_s: f64,
    pub websocket_events: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot bind a loopback port")]
    Bind(#[source] std::io::Error),
    #[error("the simulator failed")]
    Sim(#[source] super::Error),
    #[error("bootstrapping the simulator failed")]
    Client(#[source] ClientError),
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

/// Runs the benchmark in the current runtime.
pub async fn run(args: &BenchArgs) -> Result<BenchResult, Error> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(Error::Bind)?;
    let shutdown = CancellationToken::new();
    let options = Options {
        contract_spec: args.contract_spec.clone(),
        ..Options::default()
    };
    let sim = Sim::start(listener, options, shutdown.clone())
        .await
        .map_err(Error::Sim)?;
    let boot = bootstrap(sim.base_url()).await.map_err(Error::Client)?;
    let mut events = boot.bot.websocket().await.map_err(Error::Client)?;
    let stop = CancellationToken::new();
    let listener_stop = stop.clone();
    let listener_task = tokio::spawn(async move {
        let mut seen = 0usize;
        loop {
            tokio::select! {
                () = listener_stop.cancelled() => break,
                e = events.next_event() => match e {
                    Ok(_) => seen += 1,
                    Err(_) => break,
                },
            }
        }
        seen
    });
    let duration = Duration::from_secs(args.duration_s);
    let started = Instant::now();
    let mut workers = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let user = if i % 2 == 0 {
            boot.demo.clone()
        } else {
            boot.bot.clone()
        };
        let channel_id = boot.channel.id.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0usize;
            let post = NewPost {
                channel_id,
                message: "benchmark message with a little text in it".into(),
                ..NewPost::default()
            };
            while started.elapsed() < duration {
                let t = Instant::now();
                match user.create_post(&post).await {
                    Ok(_) => latencies.push(t.elapsed()),
                    Err(_) => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for w in workers {
        if let Ok((l, e)) = w.await {
            latencies.extend(l);
            errors += e;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    stop.cancel();
    let websocket_events = listener_task.await.unwrap_or(0);
    shutdown.cancel();
    sim.wait().await.map_err(Error::Sim)?;
    latencies.sort_unstable();
    Ok(BenchResult {
        post_create_per_s: (latencies.len() as f64 / elapsed).round(),
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
        posts: latencies.len(),
        errors,
        clients: args.clients,
        duration_s: elapsed,
        websocket_events,
    })
}

/// Runs the benchmark and prints its JSON line.
pub fn cli_main(args: BenchArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(run(&args))?;
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}
