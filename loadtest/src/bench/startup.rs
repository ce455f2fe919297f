//! `bench startup`: how soon Claude starts working on a new thread, against a developer
//! who types `claude` locally.
//!
//! Three sample sets, each timed to the fake model's arrival of the first Messages API
//! request carrying the sample's prompt:
//! * `bare_cli`: the CLI started directly on this machine (`claude -p PROMPT`, the same
//!   environment the fleet gives it, a fresh config directory), from spawn;
//! * `cold`: a mention in a new thread, docker runtime, warm pool off: the worker creates
//!   and starts the session's container and the CLI boots before the prompt goes in;
//! * `warm`: the same with the warm pool on; each sample starts once the pool is full
//!   again (the steady state the pool exists for), and the pool's hit and miss counters
//!   are reported.
//!
//! Samples run one after another; each thread's turn finishes before the next starts.

use std::time::{Duration, Instant};

use common::config::RuntimeKind;
use serde::Serialize;
use serde_json::json;

use super::latency::{Watch, new_thread};
use super::stats::{Samples, round2};
use super::{BenchEnv, Error, Outcome, Report, progress, stop_fleet};
use crate::fake_model::FakeModel;
use crate::fleet::{FleetOptions, LocalFleet, find_claude_bin};

/// Flags of `bench startup`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Samples of each kind.
    #[arg(long, default_value_t = 10)]
    pub samples: usize,
    /// Warm containers kept ready in the warm run (`worker.warm_pool`).
    #[arg(long, default_value_t = 2)]
    pub pool: usize,
    /// The longest any one step may take before the run fails.
    #[arg(long, default_value_t = 120)]
    pub step_timeout_s: u64,
}

#[derive(Debug, Serialize)]
struct Figures {
    scenario: &'static str,
    cold_p50_ms: f64,
    cold_p99_ms: f64,
    warm_p50_ms: f64,
    warm_p99_ms: f64,
    bare_cli_p50_ms: f64,
    bare_cli_p99_ms: f64,
    warm_over_bare: f64,
    cold_over_bare: f64,
    pool_hits: u64,
    pool_misses: u64,
    pool: usize,
    samples: usize,
}

const SCENARIO: &str = "startup";

pub async fn run(args: &Args) -> Result<Outcome, Error> {
    if args.samples == 0 || args.samples > 1000 || args.pool == 0 || args.pool > 64 {
        return Err(Error::Args(
            "--samples must be in 1..=1000 and --pool in 1..=64".into(),
        ));
    }
    let claude = find_claude_bin().ok_or(Error::NoClaude)?;
    let within = Duration::from_secs(args.step_timeout_s.max(1));

    progress(
        SCENARIO,
        format_args!("bare CLI: {} starts of {claude}", args.samples),
    );
    let bare = bare_cli(&claude, args.samples, within).await?;

    let mut runs = Vec::new();
    for pool in [0, args.pool] {
        let env = BenchEnv::new().await;
        let result = fleet_run(&env, args, pool, within).await;
        env.finish().await;
        runs.push(result?);
    }
    let warm = runs.pop().expect("two runs");
    let cold = runs.pop().expect("two runs");

    let ratio = |fleet: f64| {
        if bare.p50() > 0.0 {
            round2(fleet / bare.p50())
        } else {
            0.0
        }
    };
    let figures = Figures {
        scenario: SCENARIO,
        cold_p50_ms: cold.samples.p50(),
        cold_p99_ms: cold.samples.p99(),
        warm_p50_ms: warm.samples.p50(),
        warm_p99_ms: warm.samples.p99(),
        bare_cli_p50_ms: bare.p50(),
        bare_cli_p99_ms: bare.p99(),
        warm_over_bare: ratio(warm.samples.p50()),
        cold_over_bare: ratio(cold.samples.p50()),
        pool_hits: warm.hits,
        pool_misses: warm.misses,
        pool: args.pool,
        samples: args.samples,
    };
    let figures = serde_json::to_value(&figures).unwrap_or_default();
    Ok(Outcome {
        report: Report {
            scenario: SCENARIO.into(),
            parameters: json!({
                "samples": args.samples,
                "pool": args.pool,
                "runtime": "docker (runner image), 1 worker",
                "baseline": format!("{claude} -p PROMPT, started directly on the host"),
                "measured_to": "the fake model's first Messages API request carrying the prompt",
            }),
            figures: figures.clone(),
            histograms: vec![
                ("bare CLI: spawn → first model request".into(), bare),
                (
                    "cold: mention → first model request (pool off)".into(),
                    cold.samples,
                ),
                (
                    "warm: mention → first model request (pool on)".into(),
                    warm.samples,
                ),
            ],
        },
        figures,
    })
}

/// When the first Messages API request whose transcript holds `marker` arrived.
async fn first_request_with(
    model: &FakeModel,
    marker: &str,
    within: Duration,
) -> Result<Instant, Error> {
    let deadline = Instant::now() + within;
    loop {
        let found = model
            .message_requests()
            .into_iter()
            .filter(|r| r.transcript().contains(marker))
            .filter_map(|r| r.received)
            .min();
        if let Some(at) = found {
            return Ok(at);
        }
        if Instant::now() > deadline {
            return Err(Error::Timeout {
                what: format!("the model request carrying {marker:?}"),
                within,
            });
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `claude -p PROMPT` started directly, as a developer would, against the fake model.
async fn bare_cli(claude: &str, samples: usize, within: Duration) -> Result<Samples, Error> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|source| Error::Bind {
            what: "the fake model",
            source,
        })?;
    let cancel = tokio_util::sync::CancellationToken::new();
    let model = FakeModel::start(listener, cancel.clone()).map_err(|source| Error::Bind {
        what: "the fake model",
        source,
    })?;
    let env = worker::runtime::ModelEnv {
        base_url: model.base_url(),
        api_key: common::config::Secret::new("sk-ant-test-fake"),
        model: "claude-fake-1".into(),
        max_retries: 0,
    };
    let mut out = Vec::new();
    for i in 0..samples {
        let dir = std::env::temp_dir().join(format!(
            "ccfleet-bench-bare-{}-{i}",
            uuid::Uuid::new_v4().simple()
        ));
        let (workspace, config_dir) = (dir.join("workspace"), dir.join("claude"));
        for d in [&workspace, &config_dir] {
            std::fs::create_dir_all(d).map_err(|source| Error::Bind {
                what: "a bare CLI directory",
                source,
            })?;
        }
        let marker = format!("bare-sample-{i}-{}", uuid::Uuid::new_v4().simple());
        let mut command = tokio::process::Command::new(claude);
        command
            .args(["-p", &format!("hello {marker}"), "--model", &env.model])
            .args(["--output-format", "stream-json", "--verbose"])
            .current_dir(&workspace)
            .env_clear()
            .env("HOME", &dir)
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(worker::runtime::cli_env(
                &env,
                &config_dir.to_string_lossy(),
            ))
            .env("ANTHROPIC_API_KEY", env.api_key.expose())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        let t0 = Instant::now();
        let mut child = command.spawn().map_err(|source| Error::Bind {
            what: "the bare CLI",
            source,
        })?;
        let at = first_request_with(&model, &marker, within).await;
        let _ = tokio::time::timeout(within, child.wait()).await;
        let _ = child.kill().await;
        let _ = std::fs::remove_dir_all(&dir);
        let at = at?;
        out.push(at - t0);
        progress(
            SCENARIO,
            format_args!(
                "bare {}/{samples}: {:.0} ms",
                i + 1,
                (at - t0).as_secs_f64() * 1000.0
            ),
        );
    }
    model.shutdown().await;
    Ok(Samples::new(out))
}

struct FleetRun {
    samples: Samples,
    hits: u64,
    misses: u64,
}

async fn fleet_run(
    env: &BenchEnv,
    args: &Args,
    pool: usize,
    within: Duration,
) -> Result<FleetRun, Error> {
    let mut config = env.config();
    config.worker.warm_pool = pool;
    let what = if pool == 0 { "cold" } else { "warm" };
    progress(
        SCENARIO,
        format_args!("{what}: starting a fleet, 1 worker, docker runtime, warm pool {pool}"),
    );
    let fleet = LocalFleet::start(
        config,
        FleetOptions {
            workers: 1,
            runtime: RuntimeKind::Docker,
            max_sessions: args.samples + 2,
            contract: false,
            sessions_dir: env.sessions_dir(),
            ..Default::default()
        },
    )
    .await
    .map_err(Error::Fleet)?;
    let result = fleet_samples(&fleet, args, pool, what, within).await;
    progress(SCENARIO, format_args!("{what}: stopping the fleet"));
    stop_fleet(fleet, SCENARIO, Duration::from_secs(120)).await;
    result
}

async fn fleet_samples(
    fleet: &LocalFleet,
    args: &Args,
    pool: usize,
    what: &str,
    within: Duration,
) -> Result<FleetRun, Error> {
    let worker = fleet
        .workers
        .first()
        .ok_or(Error::Args("no worker".into()))?;
    let worker::runtime::Runtime::Docker(docker) = &worker.runtime else {
        return Err(Error::Args("the fleet's runtime is not docker".into()));
    };
    let mut watch = Watch::open(fleet, within).await?;
    let mut out = Vec::new();
    for i in 0..args.samples {
        if pool > 0 {
            let deadline = Instant::now() + within;
            while docker.pool_ready() < pool {
                if Instant::now() > deadline {
                    return Err(Error::Timeout {
                        what: "the warm pool to fill".into(),
                        within,
                    });
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let marker = format!("{what}-sample-{i}-{}", uuid::Uuid::new_v4().simple());
        let t0 = Instant::now();
        new_thread(fleet, &mut watch, &format!("@claude hello {marker}")).await?;
        let at = first_request_with(&fleet.model, &marker, within).await?;
        out.push(at - t0);
        progress(
            SCENARIO,
            format_args!(
                "{what} {}/{}: {:.0} ms",
                i + 1,
                args.samples,
                (at - t0).as_secs_f64() * 1000.0
            ),
        );
    }
    watch.events.close().await;
    let metrics = docker.pool_metrics();
    let misses = ["empty", "resume", "model"]
        .into_iter()
        .map(|reason| {
            metrics
                .misses
                .get_or_create(&vec![("reason", reason)])
                .get()
        })
        .sum();
    Ok(FleetRun {
        samples: Samples::new(out),
        hits: metrics.hits.get(),
        misses,
    })
}
