//! The forge for repository tests: the real git server (`git http-backend` behind
//! `loadtest::forge::cgi`) with basic auth and protected branches, and the GitLab and
//! GitHub API doubles driven by the providers' own client libraries (`python-gitlab`,
//! `PyGithub`; `tests/forge_contract.py`), every route of each double exercised.

use std::path::{Path, PathBuf};
use std::process::Command;

use loadtest::forge::{Forge, Kind, Options};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "glpat-forge-test-token";

async fn forge(kind: Kind) -> Forge {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    Forge::start(
        listener,
        Options::new(kind, TOKEN),
        CancellationToken::new(),
    )
    .expect("the forge starts (git http-backend installed)")
}

/// `git` with the token given by an askpass program, as the worker gives it: never in a URL.
struct Git {
    dir: tempfile::TempDir,
    askpass: PathBuf,
}

impl Git {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let askpass = dir.path().join("askpass");
        std::fs::write(
            &askpass,
            "#!/bin/sh\ncase \"$1\" in Username*) echo \"$FORGE_USER\" ;; *) echo \"$FORGE_TOKEN\" ;; esac\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o700)).unwrap();
        Git { dir, askpass }
    }

    /// Runs git in `cwd` (relative to the scratch directory) with `token`; (ok, stderr).
    fn run(&self, cwd: &str, token: &str, args: &[&str]) -> (bool, String) {
        let out = Command::new("git")
            .args(args)
            .current_dir(self.dir.path().join(cwd))
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", &self.askpass)
            .env("FORGE_USER", "oauth2")
            .env("FORGE_TOKEN", token)
            .env_remove("SSH_ASKPASS")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, cwd: &str, args: &[&str]) {
        let (ok, err) = self.run(cwd, TOKEN, args);
        assert!(ok, "git {args:?} failed: {err}");
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
}

/// Clones `repo`, commits `file` on a new `branch` and pushes it.
fn push_branch(git: &Git, forge: &Forge, repo: &str, branch: &str, file: &str) {
    git.ok(
        ".",
        &[
            "clone",
            "--quiet",
            "--depth",
            "1",
            &forge.clone_url(repo),
            "work",
        ],
    );
    git.ok("work", &["checkout", "--quiet", "-b", branch]);
    std::fs::write(git.path("work").join(file), "<p>hello</p>\n").unwrap();
    git.ok("work", &["add", file]);
    git.ok(
        "work",
        &[
            "-c",
            "user.name=Alice Example",
            "-c",
            "user.email=alice@example.com",
            "commit",
            "--quiet",
            "-m",
            "Add a page",
        ],
    );
    git.ok("work", &["push", "--quiet", "origin", branch]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_server_clones_and_pushes_with_basic_auth() {
    let forge = forge(Kind::Git).await;
    forge
        .create_repo("team/web", "main", &[("README.md", b"# web\n")])
        .unwrap();
    let git = Git::new();
    push_branch(&git, &forge, "team/web", "ccfleet/abc", "page.html");
    let author = forge
        .git(
            "team/web",
            &["log", "-1", "--format=%an <%ae>", "ccfleet/abc"],
        )
        .unwrap();
    assert_eq!(author, "Alice Example <alice@example.com>");
    let files = forge
        .git("team/web", &["ls-tree", "--name-only", "ccfleet/abc"])
        .unwrap();
    assert_eq!(files, "README.md\npage.html");

    // A wrong token: git asks, is refused, and says so.
    let (ok, err) = git.run(
        ".",
        "wrong",
        &["clone", "--quiet", &forge.clone_url("team/web"), "bad"],
    );
    assert!(!ok);
    assert!(err.contains("Authentication failed"), "{err}");

    // A protected branch refuses the push with the server's words.
    forge.protect("team/web", "main").unwrap();
    std::fs::write(git.path("work/other.txt"), "x").unwrap();
    git.ok("work", &["add", "other.txt"]);
    git.ok(
        "work",
        &[
            "-c",
            "user.name=A",
            "-c",
            "user.email=a@b",
            "commit",
            "--quiet",
            "-m",
            "x",
        ],
    );
    let (ok, err) = git.run("work", TOKEN, &["push", "origin", "HEAD:main"]);
    assert!(!ok);
    assert!(err.contains("pre-receive hook declined"), "{err}");
    assert!(err.contains("protected branches"), "{err}");
    let head = forge
        .git("team/web", &["log", "-1", "--format=%s", "main"])
        .unwrap();
    assert_eq!(head, "Initial commit");
    forge.shutdown().await;
}

/// Whether python3 can import the client libraries; under CI they must be there
/// (deploy/local/test installs them).
fn python_has(module: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("CI").is_err(),
            "python3 cannot import {module}: `python3 -m pip install python-gitlab PyGithub` (deploy/local/test does)"
        );
        eprintln!("skipped: python3 cannot import {module}");
    }
    ok
}

fn contract_script() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/forge_contract.py"
    ))
}

async fn run_contract(kind: Kind, module: &str, name: &str, repo: &str) {
    if !python_has(module) {
        return;
    }
    let forge = forge(kind).await;
    forge
        .create_repo(repo, "main", &[("README.md", b"# web\n")])
        .unwrap();
    let git = Git::new();
    push_branch(&git, &forge, repo, "ccfleet/t1", "page.html");
    let api = forge.api_url();
    let script = contract_script().to_owned();
    let repo_arg = repo.to_owned();
    let name = name.to_owned();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .args([&name, &api, TOKEN, &repo_arg, "ccfleet/t1", "main"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprint!("{stdout}");
    assert!(out.status.success(), "contract failed:\n{stdout}{stderr}");
    assert!(stdout.contains("contract held"));
    let seen = forge.routes_seen();
    for (method, route) in forge.api_routes() {
        assert!(
            seen.iter().any(|(m, r, s)| m.as_str() == *method
                && r.as_str() == *route
                && (200..300).contains(s)),
            "the client library never succeeded on {method} {route}; seen: {seen:?}"
        );
    }
    let reviews = forge.reviews();
    assert_eq!(reviews.len(), 1);
    assert_eq!(reviews[0].title, "Second");
    forge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_double_holds_python_gitlabs_contract() {
    run_contract(Kind::GitLab, "gitlab", "gitlab", "group/web").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_double_holds_pygithubs_contract() {
    run_contract(Kind::GitHub, "github", "github", "owner/web").await;
}
