//! `loadtest chaos`: a Jepsen-style run against a containerized fleet. It brings up a
//! compose project of its own ([`crate::compose::ComposeFleet`]: 2 gateways, 3 workers, a
//! three-node NATS cluster with `nats.replicas = 3`, PostgreSQL, Garage, the simulator and
//! the fake model), keeps every thread talking — new threads, follow-ups, tool approvals
//! by button and by reaction, turns writing files, slow turns — and injects the faults of
//! a seeded schedule ([`schedule`]) one step at a time: SIGKILLed and frozen workers, a
//! worker cut off the network, the egress leader and a WebSocket reader killed, NATS nodes
//! (the stream leader among them) killed, PostgreSQL restarted, the object store stopped,
//! Mattermost storms (500s, 429s, latency) and a session's disk filled past its limit.
//! After the faults every thread is asked "are you there?". The simulator's record of
//! every post then goes through the sans-IO [`check`]er, which prints one JSON line.
//!
//! Every message is tagged (`[[say:TAG]]`, repeated by the fake model), so an answer names
//! the message it answers. On any violation the logs of every container go to the state
//! directory, named in the JSON line. Everything the run created is removed at the end.

pub mod check;
pub mod schedule;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::compose::{ComposeFleet, build_images, wait_for};
use crate::mmsim::client::{Bootstrap, SimControl, bootstrap};
use crate::mmsim::limits::{Fault500, Faults, RateLimit};
use crate::mmsim::model::Post;
use check::{BotPost, Fault, Kind, Sent, classify};
use schedule::{Ask, FaultKind, Length, Step};

/// Flags of `loadtest chaos`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// `short`: every fault kind once (a few minutes, CI); `long`: 20 worker kills and
    /// every other kind twice, mixed.
    #[arg(long, value_enum, default_value = "short")]
    pub schedule: Length,
    /// The seed of the schedule and the workload.
    #[arg(long, default_value_t = 17)]
    pub seed: u64,
    /// Threads open at the start.
    #[arg(long, default_value_t = 3)]
    pub threads: usize,
    /// Threads open at most (new ones are opened along the way).
    #[arg(long, default_value_t = 6)]
    pub max_threads: usize,
    /// The longest one step may wait for its answers before going on.
    #[arg(long, default_value_t = 240)]
    pub step_timeout_s: u64,
    /// Where logs go on a violation (default: a new directory under the temp dir).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Do not build the images first (they exist: deploy/images/build, deploy/runner/build).
    #[arg(long)]
    pub no_build: bool,
    /// Build and use the release binaries (default: debug).
    #[arg(long)]
    pub release: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid arguments: {0}")]
    Args(String),
    #[error("the compose fleet")]
    Compose(#[from] crate::compose::Error),
    #[error("the simulator refused {what}")]
    Client {
        what: &'static str,
        #[source]
        source: crate::mmsim::client::Error,
    },
    #[error("{0}")]
    Fleet(String),
}

fn client(what: &'static str) -> impl FnOnce(crate::mmsim::client::Error) -> Error {
    move |source| Error::Client { what, source }
}

fn progress(line: std::fmt::Arguments<'_>) {
    eprintln!("[chaos] {line}");
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

fn docker_gid() -> String {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/var/run/docker.sock").map_or_else(|_| "0".into(), |m| m.gid().to_string())
}

/// The most a session's files may take and still be checkpointed: small, so the disk
/// fill step gets past it with a 48 MB file.
const WORKSPACE_LIMIT: u64 = 32 << 20;

/// One open thread.
struct Thread {
    root: String,
    /// The ask of its latest message (what the approver does with a prompt).
    ask: Ask,
}

/// A fault in force, and how to end it.
enum Heal {
    Nothing,
    Start(String),
    Unpause(String),
    Reconnect(String),
    ClearSim,
}

struct Run<'a> {
    args: &'a Args,
    fleet: ComposeFleet,
    boot: Bootstrap,
    sim: SimControl,
    threads: Vec<Thread>,
    sent: Vec<Sent>,
    faults: Vec<Fault>,
    /// Approval prompts answered: post id → when.
    approved: HashMap<String, Instant>,
    /// Prompts first seen: post id → when (a reaction waits until the gateway knows it).
    prompts_seen: HashMap<String, Instant>,
    fleet_network: String,
}

impl Run<'_> {
    fn text(ask: Ask, tag: &str) -> String {
        match ask {
            Ask::Plain => format!("[[say:{tag}]] hello"),
            Ask::ApproveByButton | Ask::ApproveByReaction => {
                format!("[[bash:echo ok >> log.txt]] [[say:{tag}]] append a line")
            }
            Ask::WriteFile => format!("[[write:notes.md]] [[say:{tag}]] write notes"),
            Ask::Slow => format!("[[slow:6000]] [[say:{tag}]] take your time"),
        }
    }

    /// Posts `text` as the demo user, retrying while the simulator rate-limits it.
    async fn post(&self, text: &str, root: Option<&str>) -> Result<Post, Error> {
        let started = Instant::now();
        loop {
            match self.boot.demo.post(&self.boot.channel.id, text, root).await {
                Ok(post) => return Ok(post),
                Err(e)
                    if e.status() == Some(429) && started.elapsed() < Duration::from_secs(120) =>
                {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(client("a message")(e)),
            }
        }
    }

    async fn send(
        &mut self,
        thread: usize,
        tag: String,
        text: &str,
        last: bool,
    ) -> Result<(), Error> {
        let root = self.threads[thread].root.clone();
        let post = self.post(text, Some(&root)).await?;
        self.sent.push(Sent {
            thread: root,
            tag,
            at_ms: post.create_at,
            last,
        });
        Ok(())
    }

    async fn open_thread(&mut self, tag: String, ask: Ask) -> Result<(), Error> {
        let n = self.threads.len();
        let text = format!(
            "@{} thread {n} {}",
            self.boot.bot.username,
            Self::text(ask, &tag)
        );
        let post = self.post(&text, None).await?;
        self.threads.push(Thread {
            root: post.id.clone(),
            ask,
        });
        self.sent.push(Sent {
            thread: post.id,
            tag,
            at_ms: post.create_at,
            last: false,
        });
        Ok(())
    }

    /// Posts a step's messages; returns their tags.
    async fn post_step(&mut self, index: usize, step: &Step) -> Result<Vec<String>, Error> {
        let mut tags = Vec::new();
        let old = self.threads.len();
        for (t, ask) in step.asks.iter().enumerate() {
            let tag = format!("cx-{index}-{t}");
            if t < old {
                self.threads[t].ask = *ask;
                self.send(t, tag.clone(), &Self::text(*ask, &tag), false)
                    .await?;
            } else {
                self.open_thread(tag.clone(), *ask).await?;
            }
            tags.push(tag);
        }
        Ok(tags)
    }

    /// The bot's posts in every thread (REST, as a user reads them); a thread that cannot
    /// be read now is left out.
    async fn bot_posts(&self) -> Vec<(usize, Post)> {
        let mut out = Vec::new();
        for (i, thread) in self.threads.iter().enumerate() {
            let Ok(list) = self.boot.demo.thread(&thread.root).await else {
                continue;
            };
            out.extend(
                list.posts
                    .into_values()
                    .filter(|p| p.user_id == self.boot.bot.id)
                    .map(|p| (i, p)),
            );
        }
        out.sort_by_key(|(_, p)| (p.create_at, p.id.clone()));
        out
    }

    /// Answers the open permission prompts: by reaction for a thread whose message asked
    /// for it, by button otherwise. A prompt still open 20 s after its answer is answered
    /// again (the answer may have met a fault).
    async fn approve(&mut self, posts: &[(usize, Post)]) {
        for (thread, post) in posts {
            if post.actions().is_empty() || !post.message.contains("Permission needed") {
                continue;
            }
            let seen = *self
                .prompts_seen
                .entry(post.id.clone())
                .or_insert_with(Instant::now);
            // The gateway learns a post's thread just after creating it.
            if seen.elapsed() < Duration::from_secs(2) {
                continue;
            }
            if self
                .approved
                .get(&post.id)
                .is_some_and(|at| at.elapsed() < Duration::from_secs(20))
            {
                continue;
            }
            let demo = &self.boot.demo;
            let done = if self.threads[*thread].ask == Ask::ApproveByReaction {
                if self.approved.contains_key(&post.id) {
                    let _ = demo.unreact(&post.id, "+1").await;
                }
                demo.react(&post.id, "+1").await.is_ok()
            } else {
                demo.click(&post.id, "allow").await.is_ok()
            };
            if done {
                self.approved.insert(post.id.clone(), Instant::now());
            }
        }
    }

    /// Waits until every message tagged `tags` has an answer or a failure notice after it
    /// (answering prompts meanwhile), at most `within`; returns how many are still open.
    async fn wait(&mut self, tags: &[String], within: Duration) -> usize {
        let started = Instant::now();
        loop {
            let posts = self.bot_posts().await;
            self.approve(&posts).await;
            let mut done: HashSet<String> = HashSet::new();
            let mut failures: Vec<(String, i64)> = Vec::new();
            for (_, post) in &posts {
                match classify(&post.message) {
                    Kind::Answer(found) if !found.is_empty() => done.extend(found),
                    Kind::Answer(_) | Kind::Failure => {
                        failures.push((post.root_id.clone(), post.create_at));
                    }
                    Kind::Other => {}
                }
            }
            let open = tags
                .iter()
                .filter(|tag| !done.contains(*tag))
                .filter(|tag| {
                    let Some(sent) = self.sent.iter().find(|s| &s.tag == *tag) else {
                        return false;
                    };
                    !failures
                        .iter()
                        .any(|(root, at)| *root == sent.thread && *at >= sent.at_ms)
                })
                .count();
            if open == 0 || started.elapsed() >= within {
                return open;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    /// Worker id → the threads whose header names it now.
    async fn owners(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut headers: HashMap<usize, String> = HashMap::new();
        for (thread, post) in self.bot_posts().await {
            if let Some(worker) = header_worker(&post.message) {
                headers.insert(thread, worker);
            }
        }
        for (thread, worker) in headers {
            out.entry(worker)
                .or_default()
                .push(self.threads[thread].root.clone());
        }
        out
    }

    /// The worker container owning the most threads, and those threads.
    async fn busiest_worker(&self) -> Result<(String, Vec<String>), Error> {
        let containers = self.fleet.containers("worker").await?;
        let owners = self.owners().await;
        let best = owners
            .iter()
            .filter_map(|(worker, threads)| {
                Some((container_of(worker, &containers)?, threads.clone()))
            })
            .max_by_key(|(_, threads)| threads.len());
        match best {
            Some(found) => Ok(found),
            None => containers
                .first()
                .map(|c| (c.clone(), Vec::new()))
                .ok_or_else(|| Error::Fleet("no worker container".into())),
        }
    }

    async fn ip(&self, container: &str) -> Result<String, Error> {
        let format = format!(
            "{{{{with index .NetworkSettings.Networks \"{}\"}}}}{{{{.IPAddress}}}}{{{{end}}}}",
            self.fleet_network
        );
        let ip = self
            .fleet
            .docker(&["inspect", "-f", &format, container])
            .await?;
        Ok(ip.trim().to_owned())
    }

    /// The gateway containers: (egress leader, the others). The leader is the one whose
    /// `/metrics` says `ccfleet_gateway_egress_leader 1`.
    async fn gateways(&self) -> Result<(Option<String>, Vec<String>), Error> {
        let mut leader = None;
        let mut others = Vec::new();
        for c in self.fleet.containers("gateway").await? {
            let ip = self.ip(&c).await?;
            let leads = match http_get(&format!("http://{ip}:8080/metrics")).await {
                Some(text) => text
                    .lines()
                    .any(|l| l.trim() == "ccfleet_gateway_egress_leader 1"),
                None => false,
            };
            if leads && leader.is_none() {
                leader = Some(c);
            } else {
                others.push(c);
            }
        }
        Ok((leader, others))
    }

    /// The NATS containers: (the events stream's leader, the others), by the monitoring
    /// endpoint's `/jsz` stream detail.
    async fn nats_nodes(&self) -> Result<(Option<String>, Vec<String>), Error> {
        let services = [
            ("nats", "nats-1"),
            ("nats-2", "nats-2"),
            ("nats-3", "nats-3"),
        ];
        let mut nodes = Vec::new();
        for (service, name) in services {
            if let Some(c) = self.fleet.containers(service).await?.into_iter().next() {
                nodes.push((c, name));
            }
        }
        let stream = format!(
            "{}_EVENTS",
            self.fleet
                .env
                .get("NATS_PREFIX")
                .cloned()
                .unwrap_or_default()
                .to_uppercase()
        );
        let mut leader_name = None;
        for (c, _) in &nodes {
            let ip = self.ip(c).await?;
            let url = format!("http://{ip}:8222/jsz?accounts=true&streams=true");
            let Some(text) = http_get(&url).await else {
                continue;
            };
            if let Ok(jsz) = serde_json::from_str::<Value>(&text) {
                leader_name = stream_leader(&jsz, &stream);
                if leader_name.is_some() {
                    break;
                }
            }
        }
        let mut leader = None;
        let mut others = Vec::new();
        for (c, name) in nodes {
            if leader_name.as_deref() == Some(name) {
                leader = Some(c);
            } else {
                others.push(c);
            }
        }
        Ok((leader, others))
    }

    /// Starts a fault; returns the threads it touches (empty: all) and how to end it.
    async fn begin(&self, kind: FaultKind) -> Result<(Vec<String>, Heal), Error> {
        Ok(match kind {
            FaultKind::WorkerKillIdle | FaultKind::WorkerKillMidTurn => {
                let (c, threads) = self.busiest_worker().await?;
                self.fleet.docker(&["kill", &c]).await?;
                (threads, Heal::Start(c))
            }
            FaultKind::WorkerPause => {
                let (c, threads) = self.busiest_worker().await?;
                self.fleet.docker(&["pause", &c]).await?;
                (threads, Heal::Unpause(c))
            }
            FaultKind::WorkerPartition => {
                let (c, threads) = self.busiest_worker().await?;
                self.fleet
                    .docker(&["network", "disconnect", &self.fleet_network, &c])
                    .await?;
                (threads, Heal::Reconnect(c))
            }
            FaultKind::GatewayKillEgressLeader | FaultKind::GatewayKillReader => {
                let (leader, others) = self.gateways().await?;
                let target = if kind == FaultKind::GatewayKillEgressLeader {
                    leader.or_else(|| others.first().cloned())
                } else {
                    others.first().cloned().or(leader)
                };
                let c = target.ok_or_else(|| Error::Fleet("no gateway container".into()))?;
                self.fleet.docker(&["kill", &c]).await?;
                (Vec::new(), Heal::Start(c))
            }
            FaultKind::NatsKillLeader | FaultKind::NatsKillFollower => {
                let (leader, others) = self.nats_nodes().await?;
                let target = if kind == FaultKind::NatsKillLeader {
                    leader.or_else(|| others.first().cloned())
                } else {
                    others.first().cloned().or(leader)
                };
                let c = target.ok_or_else(|| Error::Fleet("no NATS container".into()))?;
                self.fleet.docker(&["kill", &c]).await?;
                (Vec::new(), Heal::Start(c))
            }
            FaultKind::PostgresRestart => {
                let c = self.one("postgres").await?;
                self.fleet.docker(&["restart", "-t", "5", &c]).await?;
                (Vec::new(), Heal::Nothing)
            }
            FaultKind::StoreStop => {
                let c = self.one("garage").await?;
                self.fleet.docker(&["stop", "-t", "5", &c]).await?;
                (Vec::new(), Heal::Start(c))
            }
            FaultKind::Mattermost500 => {
                self.set_sim(Faults {
                    error_500: Some(Fault500 {
                        fraction: 1.0,
                        user_id: Some(self.boot.bot.id.clone()),
                        ..Fault500::default()
                    }),
                    ..Faults::default()
                })
                .await?;
                (Vec::new(), Heal::ClearSim)
            }
            FaultKind::Mattermost429 => {
                self.set_sim(Faults {
                    rate_limit: Some(RateLimit {
                        per_sec: 2,
                        max_burst: 2,
                        vary_by_user: true,
                    }),
                    ..Faults::default()
                })
                .await?;
                (Vec::new(), Heal::ClearSim)
            }
            FaultKind::MattermostLatency => {
                self.set_sim(Faults {
                    latency_ms: 700,
                    ..Faults::default()
                })
                .await?;
                (Vec::new(), Heal::ClearSim)
            }
            // The step's own message does it (see `disk_fill`).
            FaultKind::DiskFill => (Vec::new(), Heal::Nothing),
        })
    }

    async fn heal(&self, heal: Heal) -> Result<(), Error> {
        match heal {
            Heal::Nothing => {}
            Heal::Start(c) => {
                self.fleet.docker(&["start", &c]).await?;
            }
            Heal::Unpause(c) => {
                self.fleet.docker(&["unpause", &c]).await?;
            }
            Heal::Reconnect(c) => {
                self.fleet
                    .docker(&["network", "connect", &self.fleet_network, &c])
                    .await?;
            }
            Heal::ClearSim => self.set_sim(Faults::default()).await?,
        }
        Ok(())
    }

    async fn set_sim(&self, faults: Faults) -> Result<(), Error> {
        self.sim
            .set_faults(&faults)
            .await
            .map_err(client("the simulator's faults"))
    }

    async fn one(&self, service: &str) -> Result<String, Error> {
        self.fleet
            .containers(service)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| Error::Fleet(format!("no {service} container")))
    }

    /// A thread's turn writes a file over the session's checkpoint limit; a later one
    /// deletes it. Both must be answered; the thread is told its files are not saved.
    async fn disk_fill(&mut self, index: usize) -> Result<Vec<String>, Error> {
        let thread = index % self.threads.len();
        self.threads[thread].ask = Ask::ApproveByButton;
        let fill = format!("cx-{index}d-{thread}");
        let text = format!(
            "[[bash:head -c 48000000 /dev/urandom > big.bin]] [[say:{fill}]] fill the disk"
        );
        self.send(thread, fill.clone(), &text, false).await?;
        let open = self
            .wait(
                std::slice::from_ref(&fill),
                Duration::from_secs(self.args.step_timeout_s),
            )
            .await;
        let clean = format!("cx-{index}e-{thread}");
        let text = format!("[[bash:rm -f big.bin]] [[say:{clean}]] clean up");
        if open == 0 {
            self.send(thread, clean.clone(), &text, false).await?;
            return Ok(vec![fill, clean]);
        }
        Ok(vec![fill])
    }

    async fn step(&mut self, index: usize, step: &Step) -> Result<(), Error> {
        progress(format_args!(
            "step {index}: {} (hold {} s, {} threads)",
            step.fault.name(),
            step.hold_s,
            step.asks.len()
        ));
        let hold = Duration::from_secs(step.hold_s);
        let timeout = Duration::from_secs(self.args.step_timeout_s);
        let mut tags;
        let at_ms;
        let touched;
        if step.fault.mid_turn() {
            tags = self.post_step(index, step).await?;
            // Into the turns: their answers are streaming.
            tokio::time::sleep(Duration::from_secs(3)).await;
            at_ms = now_ms();
            let (threads, heal) = self.begin(step.fault).await?;
            touched = threads;
            tokio::time::sleep(hold).await;
            self.heal(heal).await?;
        } else {
            at_ms = now_ms();
            let (threads, heal) = self.begin(step.fault).await?;
            touched = threads;
            let started = Instant::now();
            tags = self.post_step(index, step).await?;
            if step.fault == FaultKind::DiskFill {
                // One message at a time per thread: the fill follows the step's answers.
                self.wait(&tags, timeout).await;
                tags.extend(self.disk_fill(index).await?);
            }
            tokio::time::sleep(hold.saturating_sub(started.elapsed())).await;
            self.heal(heal).await?;
        }
        self.faults.push(Fault {
            kind: step.fault.name(),
            at_ms,
            threads: touched,
        });
        let open = self.wait(&tags, timeout).await;
        progress(format_args!(
            "step {index}: {} of {} answered",
            tags.len() - open,
            tags.len()
        ));
        Ok(())
    }

    /// "Are you there?" in every thread, after the faults.
    async fn last_round(&mut self) -> Result<usize, Error> {
        let mut tags = Vec::new();
        for t in 0..self.threads.len() {
            let tag = format!("cx-last-{t}");
            self.threads[t].ask = Ask::Plain;
            let text = format!("[[say:{tag}]] are you there?");
            self.send(t, tag.clone(), &text, true).await?;
            tags.push(tag);
        }
        Ok(self
            .wait(&tags, Duration::from_secs(self.args.step_timeout_s))
            .await)
    }

    async fn verdict(&self) -> check::Verdict {
        let posts: Vec<BotPost> = self
            .bot_posts()
            .await
            .into_iter()
            .map(|(t, p)| BotPost {
                thread: self.threads[t].root.clone(),
                id: p.id,
                create_at: p.create_at,
                update_at: p.update_at,
                message: p.message,
            })
            .collect();
        check::check(&self.sent, &posts, &self.faults)
    }
}

/// The worker a thread header names (`| Worker | `id` |`).
fn header_worker(message: &str) -> Option<String> {
    let start = message.find("| Worker | `")? + "| Worker | `".len();
    let end = message[start..].find('`')?;
    Some(message[start..start + end].to_owned())
}

/// A worker's id starts with its container's hostname, the container id's first 12
/// characters (`<hostname>-<n>`).
fn container_of(worker: &str, containers: &[String]) -> Option<String> {
    let host = worker.rsplit_once('-').map_or(worker, |(h, _)| h);
    containers.iter().find(|c| c.starts_with(host)).cloned()
}

/// The server leading `stream`, from a `/jsz?accounts=true&streams=true` answer.
fn stream_leader(jsz: &Value, stream: &str) -> Option<String> {
    jsz.get("account_details")?
        .as_array()?
        .iter()
        .filter_map(|a| a.get("stream_detail")?.as_array())
        .flatten()
        .find(|s| s.get("name").and_then(Value::as_str) == Some(stream))?
        .get("cluster")?
        .get("leader")?
        .as_str()
        .map(str::to_owned)
}

async fn http_get(url: &str) -> Option<String> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .ok()?;
    let response = client.get(url).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.text().await.ok()
}

/// The compose settings of a chaos fleet (see deploy/compose/env.example).
fn settings(id: &str, project: &str) -> BTreeMap<String, String> {
    [
        ("COMPOSE_PROFILES", "cluster".to_owned()),
        (
            "NATS_CLUSTER_ARGS",
            "--name nats-1 --cluster_name ccfleet --cluster nats://0.0.0.0:6222 --routes nats://nats-2:6222,nats://nats-3:6222".to_owned(),
        ),
        (
            "NATS_URL",
            "nats://nats:4222,nats://nats-2:4222,nats://nats-3:4222".to_owned(),
        ),
        ("NATS_REPLICAS", "3".to_owned()),
        ("MATTERMOST_URL", "http://mmsim:8065".to_owned()),
        ("MATTERMOST_BOT_TOKEN", "pending".to_owned()),
        ("MODEL_BASE_URL", "http://model:8123".to_owned()),
        ("MODEL_API_KEY", "sk-ant-test-fake".to_owned()),
        // The simulator (a container) calls the buttons' URL: the gateways' service name.
        ("PUBLIC_URL", "http://gateway:8080".to_owned()),
        // An ephemeral host port each: two gateways cannot share one.
        ("GATEWAY_PORT", "127.0.0.1:".to_owned()),
        ("SIGNING_KEY", hex(32)),
        ("POSTGRES_PASSWORD", hex(16)),
        ("GARAGE_RPC_SECRET", hex(32)),
        ("GARAGE_ADMIN_TOKEN", hex(32)),
        ("S3_ACCESS_KEY_ID", format!("GK{}", hex(12))),
        ("S3_SECRET_ACCESS_KEY", hex(32)),
        ("DOCKER_GID", docker_gid()),
        ("WORKER_MAX_SESSIONS", "4".to_owned()),
        ("WORKER_PERMISSION_MODE", "default".to_owned()),
        ("WORKER_MAX_WORKSPACE_BYTES", WORKSPACE_LIMIT.to_string()),
        (
            "RUNNER_IMAGE",
            std::env::var("CCFLEET_RUNNER_IMAGE").unwrap_or_else(|_| "ccfleet-runner:latest".into()),
        ),
        ("SESSION_NETWORK", format!("{project}_sessions")),
        ("NATS_PREFIX", format!("chaos{id}")),
        ("CCFLEET_VERSION", "latest".to_owned()),
        ("LOG_FORMAT", "text".to_owned()),
        ("LOG_LEVEL", "info".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Brings the fleet up; the bootstrap of the simulator.
async fn bring_up(fleet: &mut ComposeFleet, workers: usize) -> Result<Bootstrap, Error> {
    fleet
        .compose(&[
            "up",
            "-d",
            "nats",
            "nats-2",
            "nats-3",
            "postgres",
            "garage",
            "garage-init",
            "mmsim",
            "fake-model",
        ])
        .await?;
    let sim = fleet.port("mmsim", 8065).await?;
    let sim_url = format!("http://{sim}");
    let boot = wait_for(Duration::from_secs(30), || async {
        bootstrap(&sim_url).await.ok()
    })
    .await
    .ok_or_else(|| Error::Fleet("the simulator was not seeded within 30 s".into()))?;
    fleet.set("MATTERMOST_BOT_TOKEN", &boot.bot_token)?;
    let scale = format!("worker={workers}");
    fleet
        .compose(&[
            "up",
            "-d",
            "--no-recreate",
            "--scale",
            "gateway=2",
            "--scale",
            &scale,
            "gateway",
            "worker",
        ])
        .await?;
    for c in fleet.containers("worker").await? {
        fleet.wait_healthy(&c, Duration::from_secs(120)).await?;
    }
    for c in fleet.containers("gateway").await? {
        fleet.wait_healthy(&c, Duration::from_secs(120)).await?;
    }
    Ok(boot)
}

/// Writes every container's logs into `dir`; returns it.
async fn dump_logs(fleet: &ComposeFleet, dir: &std::path::Path) -> Option<PathBuf> {
    std::fs::create_dir_all(dir).ok()?;
    let label = format!("label=com.docker.compose.project={}", fleet.project);
    let ids = fleet
        .docker(&["ps", "-aq", "--filter", &label])
        .await
        .ok()?;
    for id in ids.split_whitespace() {
        let name = fleet
            .docker(&["inspect", "-f", "{{.Name}}", id])
            .await
            .map(|n| n.trim().trim_start_matches('/').to_owned())
            .unwrap_or_else(|_| id.to_owned());
        let output = tokio::process::Command::new("docker")
            .args(["logs", "--timestamps", id])
            .output()
            .await
            .ok()?;
        let mut text = output.stdout;
        text.extend(output.stderr);
        let _ = std::fs::write(dir.join(format!("{name}.log")), text);
    }
    Some(dir.to_owned())
}

/// The whole run: the JSON line (its `ok` says whether nothing was lost, answered twice,
/// reordered or left stuck), or what kept it from running.
pub async fn run(args: &Args) -> Result<Value, Error> {
    if args.threads == 0 || args.max_threads < args.threads {
        return Err(Error::Args("--threads ≥ 1 and ≤ --max-threads".into()));
    }
    if !args.no_build {
        progress(format_args!("building the images"));
        build_images(args.release).await?;
    }
    let id = hex(4);
    let project = format!("ccfleet-chaos-{id}");
    let state = args
        .state_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(&project));
    let mut fleet = ComposeFleet::new(&project, settings(&id, &project)).await?;
    let started = Instant::now();
    progress(format_args!("bringing up {project}"));
    let boot = match bring_up(&mut fleet, 3).await {
        Ok(boot) => boot,
        Err(err) => {
            let logs = dump_logs(&fleet, &state.join("logs")).await;
            fleet.down().await;
            return Err(Error::Fleet(format!(
                "bring-up failed: {} (logs in {logs:?})",
                common::error_chain(&err)
            )));
        }
    };
    progress(format_args!(
        "fleet up in {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    let sim = SimControl::new(&format!("http://{}", fleet.port("mmsim", 8065).await?));
    let steps = schedule::plan(args.schedule, args.seed, args.threads, args.max_threads);
    let mut run = Run {
        args,
        fleet,
        boot,
        sim,
        threads: Vec::new(),
        sent: Vec::new(),
        faults: Vec::new(),
        approved: HashMap::new(),
        prompts_seen: HashMap::new(),
        fleet_network: format!("{project}_fleet"),
    };
    let outcome = async {
        // The first threads, answered before any fault.
        let mut tags = Vec::new();
        for t in 0..args.threads {
            let tag = format!("cx-open-{t}");
            run.open_thread(tag.clone(), Ask::Plain).await?;
            tags.push(tag);
        }
        run.wait(&tags, Duration::from_secs(args.step_timeout_s))
            .await;
        for (index, step) in steps.iter().enumerate() {
            run.step(index, step).await?;
        }
        let stuck = run.last_round().await?;
        progress(format_args!(
            "last round: {stuck} threads without an answer"
        ));
        Ok::<(), Error>(())
    }
    .await;
    let verdict = run.verdict().await;
    let logs = if verdict.ok() && outcome.is_ok() {
        None
    } else {
        dump_logs(&run.fleet, &state.join("logs")).await
    };
    run.fleet.down().await;
    outcome?;
    Ok(json!({
        "scenario": "chaos",
        "schedule": format!("{:?}", args.schedule).to_lowercase(),
        "seed": args.seed,
        "ok": verdict.ok(),
        "threads": run.threads.len(),
        "sent": verdict.sent,
        "answered": verdict.answered,
        "failed_visibly": verdict.failed_visibly,
        "lost": verdict.lost,
        "duplicated": verdict.duplicated,
        "out_of_order": verdict.out_of_order,
        "stuck": verdict.stuck,
        "faults": verdict.faults,
        "recovery": verdict.recovery,
        "violations": verdict.violations,
        "logs": logs,
        "duration_s": started.elapsed().as_secs(),
    }))
}

pub fn cli_main(args: Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let line = run(&args).await?;
        println!("{}", serde_json::to_string(&line)?);
        if line["ok"] != Value::Bool(true) {
            anyhow::bail!("the chaos run found violations (see the JSON line)");
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_leader_is_read_from_jsz() {
        let jsz = json!({"account_details": [{"name": "$G", "stream_detail": [
            {"name": "CHAOSX_REPLIES", "cluster": {"leader": "nats-1"}},
            {"name": "CHAOSX_EVENTS", "cluster": {"leader": "nats-3"}}
        ]}]});
        assert_eq!(
            stream_leader(&jsz, "CHAOSX_EVENTS").as_deref(),
            Some("nats-3")
        );
        assert_eq!(stream_leader(&jsz, "OTHER_EVENTS"), None);
    }

    #[test]
    fn a_worker_is_found_by_its_container() {
        let containers = ["0123456789abcdef".to_owned(), "fedcba9876543210".to_owned()];
        assert_eq!(
            container_of("fedcba987654-1", &containers).as_deref(),
            Some("fedcba9876543210")
        );
        assert_eq!(
            header_worker("| Worker | `fedcba987654-1` |").as_deref(),
            Some("fedcba987654-1")
        );
    }
}
