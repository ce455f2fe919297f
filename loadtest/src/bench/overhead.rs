//! `bench overhead`: the fleet's own cost per event, with the `sim` runtime (an agent that
//! answers instantly) so that only gateway, JetStream, workers, PostgreSQL, S3 checkpoints
//! and egress remain.
//!
//! A scripted user posts into N threads at a target rate R through the simulator's public
//! API: a thread's first message mentions the bot, later ones reply in the thread. Each
//! thread has at most one unanswered message (a person waits for the answer), so a tick
//! that finds no idle thread is counted as `skipped` and the achieved rate falls short of
//! the target: the sign of saturation. Latencies are observed on the posting user's
//! WebSocket: send → the bot's first post in a new thread (`new_*`), send → the bot's first
//! post or edit answering a follow-up (`followup_*`, the header's status edits excluded),
//! send → the finished answer with its `:stopwatch:` footer (`turn_*`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::config::RuntimeKind;
use serde::Serialize;
use serde_json::json;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::latency::Watch;
use super::stats::{Samples, round2};
use super::{BenchEnv, Error, Outcome, Report, progress, secs, stop_fleet};
use crate::fleet::{FleetOptions, LocalFleet};
use crate::mmsim::client::{EventKind, EventStream};
use crate::mmsim::model::Post;
use crate::mmsim::{Faults, RateLimit};

/// Flags of `bench overhead`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Threads (sessions) the user posts into.
    #[arg(long, default_value_t = 100)]
    pub threads: usize,
    /// Target events (posts) per second over all threads.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// How long to post, in seconds (fractions allowed).
    #[arg(long, default_value_t = 20.0)]
    pub duration_s: f64,
    /// Workers in the fleet.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Session slots per worker (default: enough for every thread).
    #[arg(long)]
    pub max_sessions: Option<usize>,
    /// After posting stops, how long unanswered messages may take before they count as lost.
    #[arg(long, default_value_t = 30.0)]
    pub drain_s: f64,
    /// The fleet's Mattermost request budget (`mattermost.requests_per_second`); high by
    /// default so the budget is not what is measured.
    #[arg(long, default_value_t = 100_000)]
    pub mm_budget: u32,
    /// Make the simulator rate-limit the bot's token at this many requests per second.
    #[arg(long)]
    pub mm_rate_limit: Option<u32>,
}

#[derive(Debug, Serialize)]
struct Figures {
    scenario: &'static str,
    new_p50_ms: f64,
    new_p99_ms: f64,
    followup_p50_ms: f64,
    followup_p99_ms: f64,
    turn_p50_ms: f64,
    turn_p99_ms: f64,
    events_per_s: f64,
    target_rate: f64,
    sent: u64,
    answered: u64,
    lost: u64,
    duplicated: u64,
    skipped: u64,
    send_errors: u64,
    mm_429: u64,
    mm_calls: u64,
    mm_calls_per_turn: f64,
    threads: usize,
    workers: usize,
    duration_s: f64,
}

const SCENARIO: &str = "overhead";
/// How long after the last answer a duplicate still counts.
const SETTLE: Duration = Duration::from_secs(2);

pub async fn run(args: &Args) -> Result<Outcome, Error> {
    if args.threads == 0
        || args.workers == 0
        || !(args.rate > 0.0 && args.rate <= 1_000_000.0)
        || !(args.duration_s > 0.0 && args.duration_s <= 3600.0)
        || !(args.drain_s >= 0.0 && args.drain_s <= 3600.0)
    {
        return Err(Error::Args(
            "--threads and --workers must be ≥ 1, --rate in (0, 1e6], durations in (0, 3600]"
                .into(),
        ));
    }
    let env = BenchEnv::new().await;
    let result = drive(&env, args).await;
    env.finish().await;
    result
}

async fn drive(env: &BenchEnv, args: &Args) -> Result<Outcome, Error> {
    let mut config = env.config();
    config.mattermost.requests_per_second = args.mm_budget;
    let max_sessions = args
        .max_sessions
        .unwrap_or_else(|| args.threads.div_ceil(args.workers) + 1);
    progress(
        SCENARIO,
        format_args!(
            "starting a fleet: {} workers × {max_sessions} slots, sim runtime",
            args.workers
        ),
    );
    let fleet = LocalFleet::start(
        config,
        FleetOptions {
            workers: args.workers,
            runtime: RuntimeKind::Sim,
            max_sessions,
            contract: false,
            sessions_dir: env.sessions_dir(),
            ..Default::default()
        },
    )
    .await
    .map_err(Error::Fleet)?;
    let result = measure(&fleet, args).await;
    progress(SCENARIO, format_args!("stopping the fleet"));
    stop_fleet(fleet, SCENARIO, Duration::from_secs(60)).await;
    let (figures, histograms) = result?;
    let figures = serde_json::to_value(&figures).unwrap_or_default();
    Ok(Outcome {
        report: Report {
            scenario: SCENARIO.into(),
            parameters: json!({
                "threads": args.threads,
                "rate": args.rate,
                "duration_s": args.duration_s,
                "workers": args.workers,
                "max_sessions_per_worker": max_sessions,
                "drain_s": args.drain_s,
                "mm_budget_per_s": args.mm_budget,
                "mm_rate_limit_per_s": args.mm_rate_limit,
                "runtime": "sim",
                "nats_prefix": env.prefix(),
            }),
            figures: figures.clone(),
            histograms,
        },
        figures,
    })
}

/// One thread, as the user sees it.
#[derive(Debug, Default)]
struct ThreadState {
    root: Option<String>,
    /// The bot's first post in the thread (the session header), whose edits are status.
    header: Option<String>,
    /// When each message was sent; index 0 is the mention that started the thread.
    sent: Vec<Instant>,
    /// Whether each message's first reply was seen.
    replied: Vec<bool>,
    /// Distinct finished answers (posts carrying the per-turn footer), oldest first.
    answers: Vec<String>,
    /// A message is sent (or being sent) and not yet answered.
    busy: bool,
}

/// A bot post seen on the WebSocket before the thread's root id was known.
struct Early {
    at: Instant,
    post: Post,
}

#[derive(Default)]
struct Tracker {
    bot_id: String,
    threads: Vec<ThreadState>,
    by_root: HashMap<String, usize>,
    early: HashMap<String, Vec<Early>>,
    new: Vec<Duration>,
    followup: Vec<Duration>,
    turn: Vec<Duration>,
    sent: u64,
    send_errors: u64,
}

impl Tracker {
    fn observe(&mut self, at: Instant, post: Post) {
        if post.user_id != self.bot_id || post.root_id.is_empty() {
            return;
        }
        let Some(&index) = self.by_root.get(&post.root_id) else {
            self.early
                .entry(post.root_id.clone())
                .or_default()
                .push(Early { at, post });
            return;
        };
        let thread = &mut self.threads[index];
        let Some(&last_sent) = thread.sent.last() else {
            return;
        };
        let current = thread.sent.len() - 1;
        match &thread.header {
            None => {
                thread.header = Some(post.id.clone());
                if !thread.replied[0] {
                    thread.replied[0] = true;
                    self.new.push(at.saturating_duration_since(thread.sent[0]));
                }
                return;
            }
            Some(header) if *header == post.id => return,
            Some(_) => {}
        }
        let is_old_answer = thread.answers.contains(&post.id);
        if current > 0 && !thread.replied[current] && !is_old_answer && at >= last_sent {
            thread.replied[current] = true;
            self.followup.push(at - last_sent);
        }
        if post.message.contains(":stopwatch:") && !is_old_answer {
            thread.answers.push(post.id);
            let k = thread.answers.len() - 1;
            if let Some(&sent) = thread.sent.get(k) {
                self.turn.push(at.saturating_duration_since(sent));
            }
            if thread.answers.len() >= thread.sent.len() {
                thread.busy = false;
            }
        }
    }

    fn register_root(&mut self, index: usize, root: String) {
        self.threads[index].root = Some(root.clone());
        self.by_root.insert(root.clone(), index);
        for early in self.early.remove(&root).unwrap_or_default() {
            self.observe(early.at, early.post);
        }
    }

    fn busy(&self) -> usize {
        self.threads.iter().filter(|t| t.busy).count()
    }

    fn answered(&self) -> u64 {
        self.threads
            .iter()
            .map(|t| t.answers.len().min(t.sent.len()) as u64)
            .sum()
    }
}

fn lock(tracker: &Mutex<Tracker>) -> MutexGuard<'_, Tracker> {
    tracker.lock().unwrap_or_else(|e| e.into_inner())
}

type Measured = (Figures, Vec<(String, Samples)>);

async fn measure(fleet: &LocalFleet, args: &Args) -> Result<Measured, Error> {
    let user = fleet.demo().clone();
    let channel = fleet.channel_id().to_owned();
    let events = Watch::open(fleet, Duration::from_secs(10)).await?.events;
    if let Some(per_sec) = args.mm_rate_limit {
        fleet
            .control
            .set_faults(&Faults {
                rate_limit: Some(RateLimit {
                    per_sec,
                    max_burst: per_sec.max(1),
                    vary_by_user: true,
                }),
                ..Faults::default()
            })
            .await
            .map_err(Error::client("set the rate limit"))?;
    }
    fleet
        .control
        .reset_stats()
        .await
        .map_err(Error::client("reset the stats"))?;

    let tracker = Arc::new(Mutex::new(Tracker {
        bot_id: fleet.boot.bot.id.clone(),
        threads: (0..args.threads).map(|_| ThreadState::default()).collect(),
        ..Tracker::default()
    }));
    let stop_reading = CancellationToken::new();
    let reader = tokio::spawn(read_events(events, tracker.clone(), stop_reading.clone()));

    progress(
        SCENARIO,
        format_args!(
            "posting into {} threads at {} events/s for {} s",
            args.threads, args.rate, args.duration_s
        ),
    );
    let duration = Duration::from_secs_f64(args.duration_s);
    let period = Duration::from_secs_f64(1.0 / args.rate);
    let started = tokio::time::Instant::now();
    let mut sends = JoinSet::new();
    let mut tick: u32 = 0;
    let mut cursor = 0usize;
    let mut skipped = 0u64;
    let mut last_progress = started;
    loop {
        let due = started + period.saturating_mul(tick);
        if due.duration_since(started) >= duration {
            break;
        }
        tokio::time::sleep_until(due).await;
        tick = tick.saturating_add(1);
        while sends.try_join_next().is_some() {}
        if last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = tokio::time::Instant::now();
            report_progress("posting", started.elapsed(), &tracker, skipped);
        }
        // The next idle thread, round robin.
        let picked = {
            let mut t = lock(&tracker);
            let n = t.threads.len();
            let found = (0..n)
                .map(|i| (cursor + i) % n)
                .find(|&i| !t.threads[i].busy);
            if let Some(i) = found {
                t.threads[i].busy = true;
                cursor = (i + 1) % n;
            }
            found.map(|i| (i, t.threads[i].root.clone(), t.threads[i].sent.len()))
        };
        let Some((index, root, n)) = picked else {
            skipped += 1;
            continue;
        };
        let user = user.clone();
        let channel = channel.clone();
        let tracker = tracker.clone();
        sends.spawn(async move {
            let text = match &root {
                None => format!("@claude benchmark thread {index}, message 0"),
                Some(_) => format!("benchmark thread {index}, message {n}"),
            };
            {
                let mut t = lock(&tracker);
                t.threads[index].sent.push(Instant::now());
                t.threads[index].replied.push(false);
                t.sent += 1;
            }
            match user.post(&channel, &text, root.as_deref()).await {
                Ok(post) => {
                    if root.is_none() {
                        lock(&tracker).register_root(index, post.id);
                    }
                }
                Err(err) => {
                    tracing::warn!(error = &err as &dyn std::error::Error, "post failed");
                    let mut t = lock(&tracker);
                    t.send_errors += 1;
                    t.sent -= 1;
                    let thread = &mut t.threads[index];
                    thread.sent.pop();
                    thread.replied.pop();
                    thread.busy = false;
                }
            }
        });
    }
    while sends.join_next().await.is_some() {}
    let load_elapsed = started.elapsed();

    progress(
        SCENARIO,
        format_args!("posting done; waiting up to {} s for answers", args.drain_s),
    );
    let drain_deadline = tokio::time::Instant::now() + Duration::from_secs_f64(args.drain_s);
    let mut last_progress = tokio::time::Instant::now();
    while lock(&tracker).busy() > 0 && tokio::time::Instant::now() < drain_deadline {
        if last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = tokio::time::Instant::now();
            report_progress("draining", started.elapsed(), &tracker, skipped);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A short window in which a duplicate answer would still show up.
    tokio::time::sleep(SETTLE).await;
    stop_reading.cancel();
    let _ = reader.await;

    let stats = fleet
        .control
        .stats()
        .await
        .map_err(Error::client("read the simulator's stats"))?;
    let api_calls: u64 = stats
        .requests
        .iter()
        .filter(|r| r.route.starts_with("/api/v4/"))
        .map(|r| r.count)
        .sum();

    let t = lock(&tracker);
    let (mut lost, mut duplicated) = (0u64, 0u64);
    for thread in &t.threads {
        let (sent, answers) = (thread.sent.len(), thread.answers.len());
        lost += sent.saturating_sub(answers) as u64;
        duplicated += answers.saturating_sub(sent) as u64;
    }
    let turns: u64 = t.threads.iter().map(|th| th.answers.len() as u64).sum();
    // Every /api/v4 call but the user's own posts was made by the fleet's bot.
    let user_calls = t.sent + t.send_errors;
    let mm_calls = api_calls.saturating_sub(user_calls);
    let new = Samples::new(t.new.iter().copied());
    let followup = Samples::new(t.followup.iter().copied());
    let turn = Samples::new(t.turn.iter().copied());
    let figures = Figures {
        scenario: SCENARIO,
        new_p50_ms: new.p50(),
        new_p99_ms: new.p99(),
        followup_p50_ms: followup.p50(),
        followup_p99_ms: followup.p99(),
        turn_p50_ms: turn.p50(),
        turn_p99_ms: turn.p99(),
        events_per_s: round2(t.sent as f64 / load_elapsed.as_secs_f64()),
        target_rate: args.rate,
        sent: t.sent,
        answered: t.answered(),
        lost,
        duplicated,
        skipped,
        send_errors: t.send_errors,
        mm_429: stats.with_status(429),
        mm_calls,
        mm_calls_per_turn: if turns == 0 {
            0.0
        } else {
            round2(mm_calls as f64 / turns as f64)
        },
        threads: args.threads,
        workers: args.workers,
        duration_s: secs(load_elapsed),
    };
    Ok((
        figures,
        vec![
            ("new thread: mention → the bot's first post".into(), new),
            (
                "follow-up: reply → the bot's first post or edit answering it".into(),
                followup,
            ),
            ("turn: message → finished answer (footer)".into(), turn),
        ],
    ))
}

fn report_progress(phase: &str, elapsed: Duration, tracker: &Mutex<Tracker>, skipped: u64) {
    let t = lock(tracker);
    progress(
        SCENARIO,
        format_args!(
            "{phase} {:>6.1} s: sent {} · answered {} · waiting {} · skipped ticks {skipped}",
            elapsed.as_secs_f64(),
            t.sent,
            t.answered(),
            t.busy(),
        ),
    );
}

/// Feeds the user's WebSocket events to the tracker until `stop`.
async fn read_events(
    mut events: EventStream,
    tracker: Arc<Mutex<Tracker>>,
    stop: CancellationToken,
) {
    let mut seen_posts: HashSet<String> = HashSet::new();
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => break,
            event = events.next_event() => event,
        };
        let at = Instant::now();
        match event {
            Ok(event) if matches!(event.kind(), EventKind::Posted | EventKind::PostEdited) => {
                if let Some(post) = event.post() {
                    // Replayed `posted` events (after a reconnect) are not new posts.
                    if event.kind() == EventKind::Posted && !seen_posts.insert(post.id.clone()) {
                        continue;
                    }
                    lock(&tracker).observe(at, post);
                }
            }
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(
                    error = &err as &dyn std::error::Error,
                    "user WebSocket failed; reconnecting"
                );
                if events.reconnect().await.is_err() {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                }
            }
        }
    }
    events.close().await;
}
