//! `bench scale`: what sessions cost a worker, and latency with many active sessions.
//!
//! * Idle: one `ccfleet-worker` OS process (sim runtime, so no containers or CLIs exist
//!   and only the worker's own memory is counted) holds K idle sessions. The user opens
//!   a warm-up batch of threads first (so one-time allocations — connection pools,
//!   buffers, code paths — are in the baseline), reads the process's resident memory,
//!   opens K more threads, waits until every one is answered and its turn is over, and
//!   reads it again: `worker_bytes_per_idle_session` = (after − before) / K. Resident
//!   memory is what the machine pays; it includes allocator slack, so it overstates
//!   rather than understates.
//! * Active: A threads over W in-process workers at a target rate, exactly as `bench
//!   overhead` runs them; its latency figures are reported with an `active_` prefix.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::config::RuntimeKind;
use serde_json::{Value, json};

use super::latency::Watch;
use super::{BenchEnv, Error, Outcome, overhead, progress, stop_fleet};
use crate::fleet::{FleetOptions, LocalFleet};
use crate::mmsim::client::EventKind;

/// Flags of `bench scale`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Idle sessions held by one worker process.
    #[arg(long, default_value_t = 1000)]
    pub idle: usize,
    /// Threads opened before the baseline is read.
    #[arg(long, default_value_t = 50)]
    pub warmup: usize,
    /// Active threads of the latency phase.
    #[arg(long, default_value_t = 200)]
    pub active: usize,
    /// Workers of the latency phase.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Target events per second of the latency phase.
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// Seconds of the latency phase.
    #[arg(long, default_value_t = 20.0)]
    pub duration_s: f64,
    /// Mentions posted per second while opening idle threads.
    #[arg(long, default_value_t = 50.0)]
    pub open_rate: f64,
    /// The `ccfleet-worker` binary (default: next to this `loadtest` binary).
    #[arg(long)]
    pub worker_bin: Option<PathBuf>,
    /// The fleet's Mattermost request budget (`mattermost.requests_per_second`); high by
    /// default so that the budget (≈ 4 requests per answered thread) is not what is
    /// measured.
    #[arg(long, default_value_t = 100_000)]
    pub mm_budget: u32,
    /// The longest opening all idle threads may take.
    #[arg(long, default_value_t = 600)]
    pub timeout_s: u64,
}

const SCENARIO: &str = "scale";

pub async fn run(args: &Args) -> Result<Outcome, Error> {
    if args.idle == 0
        || args.idle > 100_000
        || args.active == 0
        || args.workers == 0
        || !(args.open_rate > 0.0 && args.open_rate <= 10_000.0)
    {
        return Err(Error::Args(
            "--idle in 1..=100000, --active and --workers ≥ 1, --open-rate in (0, 10000]".into(),
        ));
    }
    let bin = match &args.worker_bin {
        Some(bin) => bin.clone(),
        // Next to `loadtest` in target/<profile>/, or one up from a test binary in deps/.
        None => std::env::current_exe()
            .ok()
            .and_then(|exe| {
                exe.ancestors()
                    .skip(1)
                    .take(2)
                    .map(|dir| dir.join("ccfleet-worker"))
                    .find(|bin| bin.exists())
            })
            .ok_or_else(|| {
                Error::Args(
                    "ccfleet-worker not found next to loadtest: build it (cargo build --bins) or pass --worker-bin"
                        .into(),
                )
            })?,
    };
    if !bin.exists() {
        return Err(Error::Args(format!(
            "{} is missing: build it (cargo build --release --bins) or pass --worker-bin",
            bin.display()
        )));
    }
    let env = BenchEnv::new().await;
    let idle = idle_phase(&env, args, &bin).await;
    env.finish().await;
    let idle = idle?;

    progress(
        SCENARIO,
        format_args!(
            "active: {} threads over {} workers at {}/s for {} s",
            args.active, args.workers, args.rate, args.duration_s
        ),
    );
    let active = overhead::run(&overhead::Args {
        threads: args.active,
        rate: args.rate,
        duration_s: args.duration_s,
        workers: args.workers,
        max_sessions: None,
        drain_s: 30.0,
        mm_budget: args.mm_budget,
        mm_rate_limit: None,
    })
    .await?;

    let mut figures = serde_json::Map::new();
    figures.insert("scenario".into(), json!(SCENARIO));
    figures.insert(
        "worker_bytes_per_idle_session".into(),
        json!(idle.bytes_per_session),
    );
    figures.insert("worker_rss_before_bytes".into(), json!(idle.before));
    figures.insert("worker_rss_after_bytes".into(), json!(idle.after));
    figures.insert("idle_sessions".into(), json!(args.idle));
    for key in [
        "new_p50_ms",
        "new_p99_ms",
        "followup_p50_ms",
        "followup_p99_ms",
        "events_per_s",
        "lost",
        "duplicated",
        "mm_429",
    ] {
        let value = active.figures.get(key).cloned().unwrap_or(Value::Null);
        figures.insert(format!("active_{key}"), value);
    }
    figures.insert("active_sessions".into(), json!(args.active));
    figures.insert("workers".into(), json!(args.workers));
    let figures = Value::Object(figures);
    let mut report = active.report;
    report.scenario = SCENARIO.into();
    report.parameters = json!({
        "idle_sessions": args.idle,
        "warmup_threads": args.warmup,
        "idle_runtime": "sim, one ccfleet-worker OS process; resident memory from /proc",
        "active": report.parameters,
    });
    report.figures = figures.clone();
    Ok(Outcome { figures, report })
}

struct Idle {
    before: u64,
    after: u64,
    bytes_per_session: u64,
}

/// The resident memory of process `pid`, from `/proc/PID/status` (`VmRSS`).
fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

async fn idle_phase(env: &BenchEnv, args: &Args, bin: &std::path::Path) -> Result<Idle, Error> {
    let total = args.warmup + args.idle;
    let mut config = env.config();
    config.worker.idle_timeout_s = 86_400;
    config.mattermost.requests_per_second = args.mm_budget;
    progress(
        SCENARIO,
        format_args!("idle: starting the gateway and one ccfleet-worker process (sim runtime)"),
    );
    let fleet = LocalFleet::start(
        config,
        FleetOptions {
            workers: 0,
            runtime: RuntimeKind::Sim,
            max_sessions: total + 10,
            contract: false,
            sessions_dir: env.sessions_dir(),
            ..Default::default()
        },
    )
    .await
    .map_err(Error::Fleet)?;
    let result = async {
        let mut config = fleet.config.clone();
        config.worker.id = format!("scale-worker-{}", env.prefix());
        let dir = env.sessions_dir();
        std::fs::create_dir_all(&dir).map_err(|source| Error::Bind {
            what: "the worker's config file",
            source,
        })?;
        let path = dir.join("scale-worker.toml");
        let text = toml::to_string(&config).map_err(|e| Error::Args(e.to_string()))?;
        std::fs::write(&path, text).map_err(|source| Error::Bind {
            what: "the worker's config file",
            source,
        })?;
        let mut child = tokio::process::Command::new(bin)
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| Error::Bind {
                what: "the ccfleet-worker process",
                source,
            })?;
        let pid = child.id().unwrap_or(0);
        let measured = async {
            let within = Duration::from_secs(args.timeout_s);
            let mut watch = Watch::open(&fleet, within).await?;
            open_threads(&fleet, &mut watch, args.warmup, args.open_rate, "warm-up").await?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let before = rss_bytes(pid).ok_or(Error::Args("the worker process is gone".into()))?;
            open_threads(&fleet, &mut watch, args.idle, args.open_rate, "idle").await?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let after = rss_bytes(pid).ok_or(Error::Args("the worker process is gone".into()))?;
            watch.events.close().await;
            let bytes_per_session = after.saturating_sub(before) / args.idle as u64;
            progress(
                SCENARIO,
                format_args!(
                    "idle: {} sessions · resident {:.1} MiB → {:.1} MiB · {bytes_per_session} bytes per idle session",
                    args.idle,
                    before as f64 / 1048576.0,
                    after as f64 / 1048576.0
                ),
            );
            Ok(Idle {
                before,
                after,
                bytes_per_session,
            })
        }
        .await;
        // SIGTERM, so the worker drains and releases its sessions.
        if let Some(pid) = child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        if tokio::time::timeout(Duration::from_secs(60), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
        measured
    }
    .await;
    stop_fleet(fleet, SCENARIO, Duration::from_secs(60)).await;
    result
}

/// Opens `n` threads at `rate` mentions per second and waits until every one has its
/// finished answer.
async fn open_threads(
    fleet: &LocalFleet,
    watch: &mut Watch,
    n: usize,
    rate: f64,
    what: &str,
) -> Result<(), Error> {
    let started = Instant::now();
    let mut waiting: HashSet<String> = HashSet::new();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut next = tokio::time::Instant::now();
    let mut posted = 0;
    let deadline = tokio::time::Instant::now() + watch.within;
    while posted < n || !waiting.is_empty() {
        if tokio::time::Instant::now() > deadline {
            return Err(Error::Timeout {
                what: format!("{} of {n} {what} threads to be answered", waiting.len()),
                within: watch.within,
            });
        }
        if posted < n && tokio::time::Instant::now() >= next {
            let root = fleet
                .demo()
                .post(
                    fleet.channel_id(),
                    &format!("@claude {what} thread {posted}"),
                    None,
                )
                .await
                .map_err(Error::client("post a mention"))?;
            waiting.insert(root.id);
            posted += 1;
            next += interval;
            continue;
        }
        let wake = if posted < n { next } else { deadline };
        let Ok(event) = tokio::time::timeout_at(wake, watch.events.next_event()).await else {
            continue;
        };
        let event = event.map_err(Error::client("the user's WebSocket"))?;
        if !matches!(event.kind(), EventKind::Posted | EventKind::PostEdited) {
            continue;
        }
        if let Some(post) = event.post()
            && post.user_id == watch.bot
            && post.message.contains(":stopwatch:")
        {
            waiting.remove(&post.root_id);
        }
    }
    progress(
        SCENARIO,
        format_args!(
            "idle: {n} {what} threads answered in {:.1} s",
            started.elapsed().as_secs_f64()
        ),
    );
    Ok(())
}
