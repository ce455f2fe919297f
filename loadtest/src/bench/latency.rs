//! `bench latency`: what a person waits for with the real Claude Code CLI (process
//! runtime, or docker) talking to the fake model.
//!
//! Sequential samples, observed on the posting user's WebSocket:
//! (a) a mention → the bot's first post in the new thread; (b) a follow-up in that idle
//! thread → the bot's first post or edit answering it (the header's status edits
//! excluded); (c) failover: the owning worker is killed while idle (its task aborted, as
//! SIGKILL would leave it: nothing released), a follow-up is posted at once, and the time
//! from the kill to the bot's first post or edit in the thread is taken. Failover is
//! bounded below by the lease TTL (`--lease-ttl-s`).

use std::time::{Duration, Instant};

use common::config::RuntimeKind;
use serde::Serialize;
use serde_json::json;

use super::stats::Samples;
use super::{BenchEnv, Error, Outcome, Report, progress, stop_fleet};
use crate::fleet::{FleetOptions, LocalFleet, find_claude_bin};
use crate::mmsim::client::{EventKind, EventStream};
use crate::mmsim::model::Post;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Runtime {
    Process,
    Docker,
}

/// Flags of `bench latency`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Samples of each kind.
    #[arg(long, default_value_t = 10)]
    pub samples: usize,
    #[arg(long, value_enum, default_value_t = Runtime::Process)]
    pub runtime: Runtime,
    /// Lease TTL of thread ownership (`worker.lease_ttl_s`): how soon a dead worker's
    /// threads are free for another.
    #[arg(long, default_value_t = 10)]
    pub lease_ttl_s: u64,
    /// The fleet's Mattermost request budget (`mattermost.requests_per_second`).
    #[arg(long, default_value_t = 100_000)]
    pub mm_budget: u32,
    /// The longest any one step may take before the run fails.
    #[arg(long, default_value_t = 180)]
    pub step_timeout_s: u64,
}

#[derive(Debug, Serialize)]
struct Figures {
    scenario: &'static str,
    runtime: &'static str,
    new_p50_ms: f64,
    new_p99_ms: f64,
    new_max_ms: f64,
    followup_p50_ms: f64,
    followup_p99_ms: f64,
    followup_max_ms: f64,
    failover_p50_ms: f64,
    failover_p99_ms: f64,
    failover_max_ms: f64,
    failover_answer_p50_ms: f64,
    failover_answer_max_ms: f64,
    samples: usize,
    lease_ttl_s: u64,
}

const SCENARIO: &str = "latency";

pub async fn run(args: &Args) -> Result<Outcome, Error> {
    if args.samples == 0 || args.samples > 1000 || args.step_timeout_s == 0 {
        return Err(Error::Args(
            "--samples must be in 1..=1000 and --step-timeout-s ≥ 1".into(),
        ));
    }
    if args.runtime == Runtime::Process && find_claude_bin().is_none() {
        return Err(Error::NoClaude);
    }
    let env = BenchEnv::new().await;
    let result = drive(&env, args).await;
    env.finish().await;
    result
}

async fn drive(env: &BenchEnv, args: &Args) -> Result<Outcome, Error> {
    let mut config = env.config();
    config.worker.lease_ttl_s = args.lease_ttl_s;
    config.mattermost.requests_per_second = args.mm_budget;
    let (runtime, runtime_name) = match args.runtime {
        Runtime::Process => (RuntimeKind::Process, "process"),
        Runtime::Docker => (RuntimeKind::Docker, "docker"),
    };
    progress(
        SCENARIO,
        format_args!("starting a fleet: 1 worker, {runtime_name} runtime, fake model"),
    );
    let mut fleet = LocalFleet::start(
        config,
        FleetOptions {
            workers: 1,
            runtime,
            // Every sample thread stays alive (idle) until the end: no evictions.
            max_sessions: args.samples * 2 + 2,
            contract: false,
            sessions_dir: env.sessions_dir(),
            ..Default::default()
        },
    )
    .await
    .map_err(Error::Fleet)?;
    let result = measure(&mut fleet, args).await;
    progress(SCENARIO, format_args!("stopping the fleet"));
    stop_fleet(fleet, SCENARIO, Duration::from_secs(60)).await;
    let m = result?;
    let figures = Figures {
        scenario: SCENARIO,
        runtime: runtime_name,
        new_p50_ms: m.new.p50(),
        new_p99_ms: m.new.p99(),
        new_max_ms: m.new.max(),
        followup_p50_ms: m.followup.p50(),
        followup_p99_ms: m.followup.p99(),
        followup_max_ms: m.followup.max(),
        failover_p50_ms: m.failover.p50(),
        failover_p99_ms: m.failover.p99(),
        failover_max_ms: m.failover.max(),
        failover_answer_p50_ms: m.failover_answer.p50(),
        failover_answer_max_ms: m.failover_answer.max(),
        samples: args.samples,
        lease_ttl_s: args.lease_ttl_s,
    };
    let figures = serde_json::to_value(&figures).unwrap_or_default();
    Ok(Outcome {
        report: Report {
            scenario: SCENARIO.into(),
            parameters: json!({
                "samples": args.samples,
                "runtime": runtime_name,
                "lease_ttl_s": args.lease_ttl_s,
                "mm_budget_per_s": args.mm_budget,
                "model": "fake model (loadtest::fake_model), no prompt markers",
                "nats_prefix": env.prefix(),
            }),
            figures: figures.clone(),
            histograms: vec![
                ("new thread: mention → the bot's first post".into(), m.new),
                (
                    "follow-up: reply → the bot's first post or edit".into(),
                    m.followup,
                ),
                (
                    "failover: kill → the bot's first post or edit after a follow-up".into(),
                    m.failover,
                ),
                (
                    "failover: kill → the finished answer".into(),
                    m.failover_answer,
                ),
            ],
        },
        figures,
    })
}

struct Measured {
    new: Samples,
    followup: Samples,
    failover: Samples,
    failover_answer: Samples,
}

/// The user's WebSocket, filtered to the bot's posts.
pub(crate) struct Watch {
    pub(crate) events: EventStream,
    pub(crate) bot: String,
    pub(crate) within: Duration,
}

impl Watch {
    /// The demo user's WebSocket, once it said hello.
    pub(crate) async fn open(fleet: &LocalFleet, within: Duration) -> Result<Self, Error> {
        let mut events = fleet
            .demo()
            .websocket()
            .await
            .map_err(Error::client("the user's WebSocket"))?;
        events
            .wait_for(Duration::from_secs(10), |e| e.kind() == EventKind::Hello)
            .await
            .map_err(Error::client("the WebSocket hello"))?;
        Ok(Self {
            events,
            bot: fleet.boot.bot.id.clone(),
            within,
        })
    }

    /// The first post or edit of the bot in thread `root` satisfying `pred`, and when it
    /// arrived.
    async fn bot_post(
        &mut self,
        root: &str,
        what: &str,
        pred: impl Fn(&Post, EventKind) -> bool,
    ) -> Result<(Instant, Post), Error> {
        let deadline = tokio::time::Instant::now() + self.within;
        loop {
            let event = tokio::time::timeout_at(deadline, self.events.next_event())
                .await
                .map_err(|_| Error::Timeout {
                    what: what.to_owned(),
                    within: self.within,
                })?
                .map_err(Error::client("the user's WebSocket"))?;
            let at = Instant::now();
            let kind = event.kind();
            if !matches!(kind, EventKind::Posted | EventKind::PostEdited) {
                continue;
            }
            if let Some(post) = event.post()
                && post.user_id == self.bot
                && post.root_id == root
                && pred(&post, kind)
            {
                return Ok((at, post));
            }
        }
    }

    /// The finished answer (it carries the per-turn footer) that is not `previous`.
    async fn answer(
        &mut self,
        root: &str,
        previous: Option<&str>,
    ) -> Result<(Instant, Post), Error> {
        self.bot_post(root, "the finished answer", |p, _| {
            p.message.contains(":stopwatch:") && Some(p.id.as_str()) != previous
        })
        .await
    }

    /// Waits for the header to say the session is idle: the turn is checkpointed and
    /// acknowledged.
    async fn idle(&mut self, root: &str, header: &str) -> Result<(), Error> {
        self.bot_post(root, "the header to say idle", |p, _| {
            p.id == header && p.message.contains(":zzz: idle")
        })
        .await
        .map(drop)
    }
}

/// A thread with one finished turn: (root id, header id, answer id).
pub(crate) async fn new_thread(
    fleet: &LocalFleet,
    watch: &mut Watch,
    text: &str,
) -> Result<(Duration, String, String, String), Error> {
    let t0 = Instant::now();
    let root = fleet
        .demo()
        .post(fleet.channel_id(), text, None)
        .await
        .map_err(Error::client("post a mention"))?;
    let (at, header) = watch
        .bot_post(&root.id, "the bot's first post", |_, kind| {
            kind == EventKind::Posted
        })
        .await?;
    let (_, answer) = watch.answer(&root.id, None).await?;
    watch.idle(&root.id, &header.id).await?;
    Ok((at - t0, root.id, header.id, answer.id))
}

async fn measure(fleet: &mut LocalFleet, args: &Args) -> Result<Measured, Error> {
    let user = fleet.demo().clone();
    let channel = fleet.channel_id().to_owned();
    let mut watch = Watch::open(fleet, Duration::from_secs(args.step_timeout_s)).await?;
    let (mut new, mut followup, mut failover, mut failover_answer) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());

    for i in 0..args.samples {
        let (first, root, header, answer) =
            new_thread(fleet, &mut watch, &format!("@claude latency sample {i}")).await?;
        new.push(first);
        let t1 = Instant::now();
        user.post(&channel, "and one more thing?", Some(&root))
            .await
            .map_err(Error::client("post a follow-up"))?;
        let (at, _) = watch
            .bot_post(&root, "the follow-up's first reply", |p, _| {
                p.id != header && p.id != answer
            })
            .await?;
        followup.push(at - t1);
        watch.answer(&root, Some(&answer)).await?;
        watch.idle(&root, &header).await?;
        progress(
            SCENARIO,
            format_args!(
                "sample {}/{}: new {:.0} ms · follow-up {:.0} ms",
                i + 1,
                args.samples,
                first.as_secs_f64() * 1000.0,
                (at - t1).as_secs_f64() * 1000.0
            ),
        );
    }

    for i in 0..args.samples {
        // The thread lives on the only worker; a second one is there to take over.
        let (_, root, header, answer) =
            new_thread(fleet, &mut watch, &format!("@claude failover sample {i}")).await?;
        fleet.add_worker().await.map_err(Error::Fleet)?;
        let owner = fleet.workers.remove(0);
        owner.kill();
        let killed = Instant::now();
        user.post(&channel, "are you still there?", Some(&root))
            .await
            .map_err(Error::client("post a follow-up"))?;
        let (at, _) = watch
            .bot_post(&root, "the first reply after the failover", |p, _| {
                p.id != header && p.id != answer
            })
            .await?;
        failover.push(at - killed);
        let (done, _) = watch.answer(&root, Some(&answer)).await?;
        failover_answer.push(done - killed);
        progress(
            SCENARIO,
            format_args!(
                "failover {}/{}: first reply {:.0} ms · answer {:.0} ms after the kill",
                i + 1,
                args.samples,
                (at - killed).as_secs_f64() * 1000.0,
                (done - killed).as_secs_f64() * 1000.0
            ),
        );
    }
    watch.events.close().await;
    Ok(Measured {
        new: Samples::new(new),
        followup: Samples::new(followup),
        failover: Samples::new(failover),
        failover_answer: Samples::new(failover_answer),
    })
}
