//! `loadtest faults`: one fleet taken through every failure of a bad day, in turn, while
//! users keep talking to it; prints one JSON line saying whether anything was lost,
//! answered twice or left hanging.
//!
//! The run owns everything it breaks: it starts its own instance of the local services
//! (`deploy/local/services` with a state directory and ports of its own), an in-process
//! Mattermost simulator, fake model and gateway, and `--workers` `ccfleet-worker` OS
//! processes (process runtime: the real Claude Code CLI). `--threads` threads are opened,
//! then every round posts one follow-up in every thread and waits for all answers:
//!
//! 1. Garage is stopped for two rounds (turns whose checkpoint cannot be stored), then
//!    started again;
//! 2. the simulator answers 500 to every request of the bot for `--mattermost-outage-s`;
//! 3. nats-server is stopped for `--service-outage-s` and started again (messages are
//!    posted while it is down);
//! 4. PostgreSQL likewise;
//! 5. slow turns are started and a worker is SIGKILLed in the middle of them, then
//!    started again under the same id (as its supervisor would);
//! 6. a last round: every thread must answer its next message.
//!
//! Each message carries a tag the fake model repeats (`[[say:TAG]]`), so an answer is
//! matched to its message: `lost` = messages without a finished answer at the end,
//! `duplicated` = messages with more than one, `stuck` = threads that did not answer the
//! last round. `notices` counts what the fleet told the threads along the way (warnings,
//! takeovers, retries), by kind.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::config::RuntimeKind;
use common::testsupport::{Services, TestEnv};
use serde_json::{Value, json};

use crate::fleet::{FleetOptions, LocalFleet};
use crate::mmsim::limits::{Fault500, Faults};

/// Flags of `loadtest faults`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Threads kept talking through the faults.
    #[arg(long, default_value_t = 50)]
    pub threads: usize,
    /// `ccfleet-worker` processes.
    #[arg(long, default_value_t = 3)]
    pub workers: usize,
    /// Sessions per worker.
    #[arg(long, default_value_t = 25)]
    pub max_sessions: usize,
    /// How long the simulator answers 500 to the bot.
    #[arg(long, default_value_t = 60)]
    pub mattermost_outage_s: u64,
    /// How long nats-server and PostgreSQL are each down.
    #[arg(long, default_value_t = 10)]
    pub service_outage_s: u64,
    /// How long the turns of the SIGKILL round stream their answer.
    #[arg(long, default_value_t = 8000)]
    pub slow_turn_ms: u64,
    /// The longest one round may take to be answered.
    #[arg(long, default_value_t = 600)]
    pub round_timeout_s: u64,
    /// The `ccfleet-worker` binary (default: next to this `loadtest` binary).
    #[arg(long)]
    pub worker_bin: Option<PathBuf>,
    /// The services script (default: `deploy/local/services` of this source tree).
    #[arg(long)]
    pub services_script: Option<PathBuf>,
    /// Where the run keeps its services' data and the workers' logs (default: a new
    /// directory under the temp dir, removed at the end unless `--keep`).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// First of the six loopback ports of the run's own services.
    #[arg(long, default_value_t = 24_000)]
    pub port_base: u16,
    /// Keep the state directory (logs) after the run.
    #[arg(long)]
    pub keep: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid arguments: {0}")]
    Args(String),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the services script failed: {0}")]
    Services(String),
    #[error("the fleet failed to start")]
    Fleet(#[source] crate::fleet::Error),
    #[error("the simulator refused {what}")]
    Client {
        what: &'static str,
        #[source]
        source: crate::mmsim::client::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

fn client(what: &'static str) -> impl FnOnce(crate::mmsim::client::Error) -> Error {
    move |source| Error::Client { what, source }
}

fn progress(line: std::fmt::Arguments<'_>) {
    eprintln!("[faults] {line}");
}

/// The run's own instance of `deploy/local/services`.
struct OwnServices {
    script: PathBuf,
    state: PathBuf,
    ports: [u16; 6],
}

impl OwnServices {
    fn env_file(&self) -> PathBuf {
        self.state.join("services.env")
    }

    fn command(&self, args: &[&str]) -> Result<(), Error> {
        let names = [
            "CCFLEET_NATS_PORT",
            "CCFLEET_NATS_MONITOR_PORT",
            "CCFLEET_PG_PORT",
            "CCFLEET_S3_PORT",
            "CCFLEET_GARAGE_RPC_PORT",
            "CCFLEET_GARAGE_ADMIN_PORT",
        ];
        let mut command = std::process::Command::new(&self.script);
        command
            .args(args)
            .env("CCFLEET_STATE_DIR", &self.state)
            .stdout(Stdio::null());
        for (name, port) in names.iter().zip(self.ports) {
            command.env(name, port.to_string());
        }
        let status = command
            .status()
            .map_err(io(format!("run {}", self.script.display())))?;
        if status.success() {
            Ok(())
        } else {
            Err(Error::Services(format!(
                "`services {}` exited with {status}",
                args.join(" ")
            )))
        }
    }

    async fn run(&self, args: &[&str]) -> Result<(), Error> {
        let this = OwnServices {
            script: self.script.clone(),
            state: self.state.clone(),
            ports: self.ports,
        };
        let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            this.command(&args)
        })
        .await
        .map_err(|e| Error::Services(e.to_string()))?
    }
}

/// One `ccfleet-worker` process.
struct WorkerProcess {
    id: String,
    child: tokio::process::Child,
}

struct Workers {
    bin: PathBuf,
    dir: PathBuf,
    config: common::config::Config,
    running: Vec<WorkerProcess>,
}

impl Workers {
    fn start(&mut self, id: &str) -> Result<(), Error> {
        let mut config = self.config.clone();
        config.worker.id = id.to_owned();
        let path = self.dir.join(format!("{id}.toml"));
        let text = toml::to_string(&config).map_err(|e| Error::Args(e.to_string()))?;
        std::fs::write(&path, text).map_err(io("write a worker's configuration"))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{id}.log")))
            .map_err(io("open a worker's log"))?;
        let child = tokio::process::Command::new(&self.bin)
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(io("start ccfleet-worker"))?;
        self.running.push(WorkerProcess {
            id: id.to_owned(),
            child,
        });
        Ok(())
    }

    /// SIGKILL: nothing is released, nothing drained.
    async fn kill(&mut self, index: usize) -> String {
        let mut worker = self.running.remove(index);
        let _ = worker.child.start_kill();
        let _ = worker.child.wait().await;
        worker.id
    }

    /// SIGTERM to all, so they drain; SIGKILL whoever is still there after `grace`.
    async fn stop(&mut self, grace: Duration) {
        for worker in &self.running {
            if let Some(pid) = worker.child.id() {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
            }
        }
        for mut worker in self.running.drain(..) {
            if tokio::time::timeout(grace, worker.child.wait())
                .await
                .is_err()
            {
                let _ = worker.child.kill().await;
            }
        }
    }
}

/// What the threads showed at one look.
#[derive(Debug, Default)]
struct Seen {
    /// Tag → the bot's posts holding its finished answer.
    answers: HashMap<String, HashSet<String>>,
    /// The bot's notices, post id → kind.
    notices: HashMap<String, &'static str>,
}

/// The kind of a bot post that tells the thread about a failure, if it is one.
fn notice_kind(message: &str) -> Option<&'static str> {
    const KINDS: [(&str, &str); 6] = [
        (":warning:", "warning"),
        (":arrows_counterclockwise:", "takeover"),
        (":repeat:", "retrying_cut_turn"),
        (":white_check_mark:", "saved_later"),
        (":hourglass: The model API", "model_api_retry"),
        (":hourglass: Stopped", "turn_stopped"),
    ];
    KINDS
        .iter()
        .find(|(prefix, _)| message.trim_start().starts_with(prefix))
        .map(|(_, kind)| *kind)
}

/// The tag of a message of thread `thread` in round `round`.
fn tag(round: usize, thread: usize) -> String {
    format!("fq-{round}-{thread}")
}

/// Every tag a finished answer mentions (an answer names its own; a tag is never a prefix
/// of another because each ends at a word boundary).
fn tags_in(message: &str) -> impl Iterator<Item = &str> {
    message
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|word| word.starts_with("fq-"))
}

struct Run<'a> {
    args: &'a Args,
    fleet: LocalFleet,
    workers: Workers,
    services: &'a OwnServices,
    roots: Vec<String>,
    /// Tags of the messages posted, by round.
    posted: Vec<Vec<String>>,
    /// (fault, seconds, rounds) in the order they happened.
    faults: Vec<Value>,
    round_timeout: Duration,
}

impl Run<'_> {
    /// What every thread shows now (REST, as a user reading them).
    async fn look(&self) -> Result<Seen, Error> {
        let bot = &self.fleet.boot.bot.id;
        let mut seen = Seen::default();
        for root in &self.roots {
            let list = self
                .fleet
                .demo()
                .thread(root)
                .await
                .map_err(client("reading a thread"))?;
            for post in list.posts.values() {
                if &post.user_id != bot || post.delete_at != 0 {
                    continue;
                }
                if let Some(kind) = notice_kind(&post.message) {
                    seen.notices.insert(post.id.clone(), kind);
                }
                if post.message.contains(":stopwatch:") {
                    for tag in tags_in(&post.message) {
                        seen.answers
                            .entry(tag.to_owned())
                            .or_default()
                            .insert(post.id.clone());
                    }
                }
            }
        }
        Ok(seen)
    }

    /// Posts one message in every thread (the round's `extra` markers added).
    async fn post_round(&mut self, extra: &str) -> Result<usize, Error> {
        let round = self.posted.len();
        let mut tags = Vec::with_capacity(self.roots.len());
        for (i, root) in self.roots.iter().enumerate() {
            let tag = tag(round, i);
            let text = format!("round {round} [[say:{tag}]] {extra}");
            self.fleet
                .demo()
                .post(self.fleet.channel_id(), &text, Some(root))
                .await
                .map_err(client("a follow-up"))?;
            tags.push(tag);
        }
        self.posted.push(tags);
        Ok(round)
    }

    /// Waits until every message of `round` has a finished answer (or the round's time is
    /// up); returns how many are still unanswered.
    async fn wait_round(&self, round: usize) -> Result<usize, Error> {
        let started = Instant::now();
        loop {
            let seen = self.look().await?;
            let missing = self.posted[round]
                .iter()
                .filter(|t| !seen.answers.contains_key(*t))
                .count();
            if missing == 0 || started.elapsed() >= self.round_timeout {
                progress(format_args!(
                    "round {round}: {} of {} answered in {:.1} s",
                    self.posted[round].len() - missing,
                    self.posted[round].len(),
                    started.elapsed().as_secs_f64()
                ));
                return Ok(missing);
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    async fn round(&mut self, extra: &str) -> Result<usize, Error> {
        let round = self.post_round(extra).await?;
        self.wait_round(round).await?;
        Ok(round)
    }

    fn fault(&mut self, fault: &str, started: Instant, rounds: &[usize]) {
        let seconds = (started.elapsed().as_secs_f64() * 10.0).round() / 10.0;
        progress(format_args!("{fault}: over after {seconds} s"));
        self.faults
            .push(json!({"fault": fault, "seconds": seconds, "rounds": rounds}));
    }

    async fn open_threads(&mut self) -> Result<(), Error> {
        let mut tags = Vec::new();
        for i in 0..self.args.threads {
            let tag = tag(0, i);
            let root = self
                .fleet
                .demo()
                .post(
                    self.fleet.channel_id(),
                    &format!("@claude thread {i} [[say:{tag}]]"),
                    None,
                )
                .await
                .map_err(client("a mention"))?;
            self.roots.push(root.id);
            tags.push(tag);
        }
        self.posted.push(tags);
        self.wait_round(0).await?;
        Ok(())
    }

    async fn garage_down_for_two_rounds(&mut self) -> Result<(), Error> {
        progress(format_args!("stopping Garage for two rounds"));
        let started = Instant::now();
        self.services.run(&["stop", "garage"]).await?;
        let a = self.round("").await?;
        let b = self.round("").await?;
        self.services.run(&["up"]).await?;
        self.fault("garage stopped", started, &[a, b]);
        Ok(())
    }

    async fn mattermost_answers_500(&mut self) -> Result<(), Error> {
        let outage = Duration::from_secs(self.args.mattermost_outage_s);
        progress(format_args!(
            "the simulator answers 500 to the bot for {} s",
            outage.as_secs()
        ));
        let started = Instant::now();
        let control = &self.fleet.control;
        control
            .set_faults(&Faults {
                error_500: Some(Fault500 {
                    fraction: 1.0,
                    user_id: Some(self.fleet.boot.bot.id.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .map_err(client("the 500 fault"))?;
        let round = self.post_round("").await?;
        tokio::time::sleep(outage.saturating_sub(started.elapsed())).await;
        self.fleet
            .control
            .set_faults(&Faults::default())
            .await
            .map_err(client("clearing the faults"))?;
        self.wait_round(round).await?;
        self.fault("mattermost answers 500", started, &[round]);
        Ok(())
    }

    /// Stops `service`, posts a round while it is down, starts it again.
    async fn service_restart(&mut self, service: &str, name: &str) -> Result<(), Error> {
        let outage = Duration::from_secs(self.args.service_outage_s);
        progress(format_args!("stopping {name} for {} s", outage.as_secs()));
        let started = Instant::now();
        self.services.run(&["stop", service]).await?;
        let round = self.post_round("").await?;
        tokio::time::sleep(outage.saturating_sub(started.elapsed())).await;
        self.services.run(&["up"]).await?;
        self.wait_round(round).await?;
        self.fault(&format!("{name} restarted"), started, &[round]);
        Ok(())
    }

    async fn worker_killed_mid_turn(&mut self) -> Result<(), Error> {
        progress(format_args!("slow turns, then SIGKILL to a worker"));
        let started = Instant::now();
        let slow = format!("[[slow:{}]]", self.args.slow_turn_ms);
        let round = self.post_round(&slow).await?;
        // Into the turns: their answers are streaming.
        tokio::time::sleep(
            Duration::from_millis(self.args.slow_turn_ms / 2).max(Duration::from_secs(3)),
        )
        .await;
        let id = self.workers.kill(0).await;
        progress(format_args!("SIGKILLed worker {id}"));
        tokio::time::sleep(Duration::from_secs(2)).await;
        self.workers.start(&id)?;
        self.wait_round(round).await?;
        self.fault("worker SIGKILLed mid-turn", started, &[round]);
        Ok(())
    }
}

/// The run's verdict, printed as one JSON line.
fn verdict(run: &Run<'_>, seen: &Seen, last: usize, started: Instant) -> Value {
    let messages: usize = run.posted.iter().map(Vec::len).sum();
    let lost = run
        .posted
        .iter()
        .flatten()
        .filter(|t| !seen.answers.contains_key(*t))
        .count();
    let duplicated = run
        .posted
        .iter()
        .flatten()
        .filter(|t| seen.answers.get(*t).is_some_and(|posts| posts.len() > 1))
        .count();
    let stuck = run.posted[last]
        .iter()
        .filter(|t| !seen.answers.contains_key(*t))
        .count();
    let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    for kind in seen.notices.values() {
        *by_kind.entry(kind).or_default() += 1;
    }
    json!({
        "scenario": "faults",
        "threads": run.roots.len(),
        "workers": run.args.workers,
        "messages": messages,
        "lost": lost,
        "duplicated": duplicated,
        "stuck": stuck,
        "notices": seen.notices.len(),
        "notices_by_kind": by_kind,
        "faults": run.faults,
        "duration_s": started.elapsed().as_secs(),
    })
}

fn worker_bin(args: &Args) -> Result<PathBuf, Error> {
    if let Some(bin) = &args.worker_bin {
        return Ok(bin.clone());
    }
    std::env::current_exe()
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
        })
}

fn services_script(args: &Args) -> PathBuf {
    args.services_script
        .clone()
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/services"))
}

/// The whole run: the verdict line, or what kept it from finishing.
pub async fn run(args: &Args) -> Result<Value, Error> {
    if args.threads == 0 || args.workers < 2 || args.max_sessions == 0 {
        return Err(Error::Args(
            "--threads ≥ 1, --workers ≥ 2 (one is killed), --max-sessions ≥ 1".into(),
        ));
    }
    let bin = worker_bin(args)?;
    let state = args.state_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("ccfleet-faults-{}", std::process::id()))
    });
    std::fs::create_dir_all(&state).map_err(io("create the state directory"))?;
    let b = args.port_base;
    let services = OwnServices {
        script: services_script(args),
        state: state.join("services"),
        ports: [b, b + 1, b + 2, b + 3, b + 4, b + 5],
    };
    progress(format_args!(
        "starting the run's own services in {}",
        services.state.display()
    ));
    services.run(&["up"]).await?;
    let result = run_on(args, &bin, &state, &services).await;
    let _ = services.run(&["down"]).await;
    if !args.keep && result.is_ok() {
        let _ = std::fs::remove_dir_all(&state);
    }
    result
}

async fn run_on(
    args: &Args,
    bin: &Path,
    state: &Path,
    services: &OwnServices,
) -> Result<Value, Error> {
    let started = Instant::now();
    let env_file = services.env_file();
    let own = tokio::task::spawn_blocking(move || Services::read(&env_file))
        .await
        .map_err(|e| Error::Services(e.to_string()))?;
    let env = TestEnv::on(&own).await;
    let mut config = env.config.clone();
    config.postgres.pool_size = 16;
    // Production's timings, not the tests' short ones.
    config.worker.idle_timeout_s = 86_400;
    let sessions_dir = state.join("sessions");
    let fleet = LocalFleet::start(
        config,
        FleetOptions {
            workers: 0,
            runtime: RuntimeKind::Process,
            max_sessions: args.max_sessions,
            contract: false,
            sessions_dir: sessions_dir.clone(),
            ..Default::default()
        },
    )
    .await
    .map_err(Error::Fleet)?;
    let mut workers = Workers {
        bin: bin.to_owned(),
        dir: state.to_owned(),
        config: fleet.config.clone(),
        running: Vec::new(),
    };
    for i in 0..args.workers {
        workers.start(&format!("faults-w{i}"))?;
    }
    let mut run = Run {
        args,
        fleet,
        workers,
        services,
        roots: Vec::new(),
        posted: Vec::new(),
        faults: Vec::new(),
        round_timeout: Duration::from_secs(args.round_timeout_s),
    };
    let outcome = async {
        progress(format_args!(
            "opening {} threads over {} workers",
            args.threads, args.workers
        ));
        run.open_threads().await?;
        run.garage_down_for_two_rounds().await?;
        run.mattermost_answers_500().await?;
        run.service_restart("nats", "nats-server").await?;
        run.service_restart("postgres", "PostgreSQL").await?;
        run.worker_killed_mid_turn().await?;
        progress(format_args!("last round: every thread's next message"));
        let last = run.round("").await?;
        let seen = run.look().await?;
        Ok::<Value, Error>(verdict(&run, &seen, last, started))
    }
    .await;
    run.workers.stop(Duration::from_secs(60)).await;
    if tokio::time::timeout(Duration::from_secs(60), run.fleet.stop())
        .await
        .is_err()
    {
        progress(format_args!("the fleet did not stop within 60 s"));
    }
    drop(env);
    outcome
}

pub fn cli_main(args: Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let line = run(&args).await?;
        println!("{}", serde_json::to_string(&line)?);
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_are_told_apart_from_answers() {
        assert_eq!(
            notice_kind(":warning: The files of turn 2"),
            Some("warning")
        );
        assert_eq!(
            notice_kind(":arrows_counterclockwise: Worker `a` stopped"),
            Some("takeover")
        );
        assert_eq!(notice_kind("fq-1-2 Done.\n_:stopwatch: 1 s_"), None);
    }

    #[test]
    fn an_answer_names_its_tags_exactly() {
        let tags: Vec<&str> = tags_in("fq-1-2 Done. (fq-1-20)\n_:stopwatch:_").collect();
        assert_eq!(tags, ["fq-1-2", "fq-1-20"]);
    }
}
