//! `loadtest bench repo`: clone and push time of a large repository through the fleet's
//! own code (`worker::repo`) against the real git server (`git http-backend` behind
//! [`crate::forge`]) with the GitLab double. Per sample: a session's shallow checkout of
//! the whole tree (fetch + writing every file), a push of `--changed` modified files on a
//! new branch (commit, push, merge request opened), and a push of the whole tree into an
//! empty repository (every object new).

use std::time::Instant;

use common::config::{RepoProvider, RepositoryConfig, Secret};
use serde::Serialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::stats::Samples;
use super::{Error, Outcome, Report, progress};
use crate::forge::{Forge, Kind, Options};

const SCENARIO: &str = "repo";
const TOKEN: &str = "glpat-bench-token";

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Files in the repository.
    #[arg(long, default_value_t = 10_000)]
    pub files: usize,
    /// Bytes per file (text).
    #[arg(long, default_value_t = 1024)]
    pub file_bytes: usize,
    /// Files changed before the measured incremental push.
    #[arg(long, default_value_t = 100)]
    pub changed: usize,
    /// Measured runs of each step.
    #[arg(long, default_value_t = 3)]
    pub samples: usize,
}

#[derive(Debug, Serialize)]
struct Figures {
    scenario: &'static str,
    files: usize,
    file_bytes: usize,
    repo_bytes: u64,
    clone_p50_ms: f64,
    clone_max_ms: f64,
    push_changed_p50_ms: f64,
    push_changed_max_ms: f64,
    push_full_p50_ms: f64,
    push_full_max_ms: f64,
    changed: usize,
    samples: usize,
}

fn failed(what: &str) -> impl Fn(String) -> Error + '_ {
    move |e| Error::Args(format!("{what}: {e}"))
}

/// `n` files of `bytes` each under a few directories, like a real tree.
fn tree(n: usize, bytes: usize, salt: &str) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let path = format!("src/m{:02}/d{:02}/file{i:05}.txt", i % 50, (i / 50) % 20);
            let line = format!("{salt} file {i} ");
            let text: String = line.chars().cycle().take(bytes).collect();
            (path, text.into_bytes())
        })
        .collect()
}

fn write_tree(root: &std::path::Path, files: &[(String, Vec<u8>)]) -> Result<(), String> {
    for (path, bytes) in files {
        let p = root.join(path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        }
        std::fs::write(&p, bytes).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

pub async fn run(args: &Args) -> Result<Outcome, Error> {
    if args.samples == 0 || args.files == 0 {
        return Err(Error::Args(
            "--samples and --files must be at least 1".into(),
        ));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|source| Error::Bind {
            what: "the forge",
            source,
        })?;
    let forge = Forge::start(
        listener,
        Options::new(Kind::GitLab, TOKEN),
        CancellationToken::new(),
    )
    .map_err(|e| Error::Args(format!("the forge did not start: {e}")))?;
    progress(
        SCENARIO,
        format_args!("creating a repository of {} files", args.files),
    );
    let files = tree(args.files, args.file_bytes, "seed");
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(p, b)| (p.as_str(), b.as_slice()))
        .collect();
    let bare = forge
        .create_repo("bench/big", "main", &refs)
        .map_err(|e| failed("seeding")(e.to_string()))?;
    forge
        .create_repo("bench/empty", "main", &[])
        .map_err(|e| failed("seeding")(e.to_string()))?;
    let repo_bytes = dir_bytes(&bare);
    let scratch = tempfile::tempdir().map_err(|e| failed("scratch")(e.to_string()))?;
    let askpass = worker::repo::git::install_askpass(&scratch.path().join("bin"))
        .map_err(|e| failed("askpass")(e.to_string()))?;
    let config = |project: &str| RepositoryConfig {
        name: "bench".into(),
        url: forge.clone_url(project),
        provider: RepoProvider::Gitlab,
        api_url: forge.api_url(),
        token: Secret::new(TOKEN),
        token_file: Default::default(),
        username: String::new(),
        default_branch: String::new(),
        channels: vec![],
        clone_depth: 1,
        max_push_file_bytes: 0,
        generated_files: false,
    };
    let big = worker::repo::Repo::new(config("bench/big"), askpass.clone());
    let empty = worker::repo::Repo::new(config("bench/empty"), askpass);
    let author =
        worker::repo::plan::Author::for_user("bench", "Bench User", "bench@example.com", "chat");
    let (mut clones, mut pushes, mut fulls) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..args.samples {
        let dir = scratch.path().join(format!("s{i}"));
        let branch = format!("ccfleet/bench{i}");
        let started = Instant::now();
        let co = big
            .checkout(
                dir.join("repo.git"),
                dir.join("workspace"),
                &branch,
                None,
                None,
                true,
            )
            .await
            .map_err(|f| failed("clone")(f.plain_words("bench", &branch)))?;
        let clone = started.elapsed();
        let changed = tree(
            args.changed.min(args.files),
            args.file_bytes,
            &format!("change {i}"),
        );
        write_tree(&dir.join("workspace"), &changed).map_err(failed("changing files"))?;
        let started = Instant::now();
        big.push(&co, &author, "Change files\n", "http://chat/t", false)
            .await
            .map_err(|f| failed("push")(f.plain_words("bench", &branch)))?;
        let push = started.elapsed();

        let full_dir = scratch.path().join(format!("f{i}"));
        let co = empty
            .checkout(
                full_dir.join("repo.git"),
                full_dir.join("workspace"),
                &branch,
                None,
                None,
                true,
            )
            .await
            .map_err(|f| failed("empty clone")(f.plain_words("bench", &branch)))?;
        write_tree(
            &full_dir.join("workspace"),
            &tree(args.files, args.file_bytes, &format!("full {i}")),
        )
        .map_err(failed("writing the tree"))?;
        let started = Instant::now();
        empty
            .push(&co, &author, "Add everything\n", "http://chat/t", false)
            .await
            .map_err(|f| failed("full push")(f.plain_words("bench", &branch)))?;
        let full = started.elapsed();
        progress(
            SCENARIO,
            format_args!(
                "sample {i}: clone {} ms, push of {} changed files {} ms, push of {} new files {} ms",
                clone.as_millis(),
                args.changed,
                push.as_millis(),
                args.files,
                full.as_millis()
            ),
        );
        clones.push(clone);
        pushes.push(push);
        fulls.push(full);
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&full_dir);
    }
    forge.shutdown().await;
    let (clones, pushes, fulls): (Samples, Samples, Samples) = (
        Samples::new(clones),
        Samples::new(pushes),
        Samples::new(fulls),
    );
    let figures = Figures {
        scenario: SCENARIO,
        files: args.files,
        file_bytes: args.file_bytes,
        repo_bytes,
        clone_p50_ms: clones.p50(),
        clone_max_ms: clones.max(),
        push_changed_p50_ms: pushes.p50(),
        push_changed_max_ms: pushes.max(),
        push_full_p50_ms: fulls.p50(),
        push_full_max_ms: fulls.max(),
        changed: args.changed,
        samples: args.samples,
    };
    let figures = serde_json::to_value(&figures).unwrap_or_default();
    Ok(Outcome {
        report: Report {
            scenario: SCENARIO.into(),
            parameters: json!({
                "files": args.files,
                "file_bytes": args.file_bytes,
                "changed": args.changed,
                "samples": args.samples,
                "server": "git http-backend (smart HTTP, basic auth) behind loadtest's CGI runner on loopback; GitLab API double",
                "clone": "worker::repo::Repo::checkout: shallow fetch (depth 1) + every file written",
                "push": "worker::repo::Repo::push: status, screen, add, commit, push, merge request",
            }),
            figures: figures.clone(),
            histograms: vec![
                ("clone (shallow) + checkout".into(), clones),
                ("push of changed files + merge request".into(), pushes),
                ("push of the whole tree".into(), fulls),
            ],
        },
        figures,
    })
}
