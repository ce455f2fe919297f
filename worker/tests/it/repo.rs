//! `worker::repo` against a real git server (`git http-backend` behind loadtest's forge)
//! and the GitLab and GitHub doubles: checkout on the session's branch, push with the
//! user as author and Claude as co-author, one review opened then updated, and the
//! failures (protected branch, bad token, remote moved, nothing to push) in plain words.

use std::path::{Path, PathBuf};

use common::config::{RepoProvider, RepositoryConfig, Secret};
use loadtest::forge::{Forge, Kind, Options};
use proto::ThreadId;
use tokio_util::sync::CancellationToken;
use worker::repo::plan::{self, Author, Failure, Held};
use worker::repo::{Repo, git};

const TOKEN: &str = "glpat-worker-repo-token-0123456789";

async fn forge(kind: Kind) -> Forge {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    Forge::start(
        listener,
        Options::new(kind, TOKEN),
        CancellationToken::new(),
    )
    .expect("the forge starts (git http-backend installed)")
}

fn config(forge: &Forge, kind: Kind, project: &str, token: &str) -> RepositoryConfig {
    RepositoryConfig {
        name: "web".to_owned(),
        url: forge.clone_url(project),
        provider: match kind {
            Kind::GitLab => RepoProvider::Gitlab,
            Kind::GitHub => RepoProvider::Github,
            Kind::Git => RepoProvider::Git,
        },
        api_url: if kind == Kind::Git {
            String::new()
        } else {
            forge.api_url()
        },
        token: Secret::new(token),
        token_file: Default::default(),
        username: String::new(),
        default_branch: String::new(),
        channels: vec![],
        clone_depth: 1,
        max_push_file_bytes: 1024,
        generated_files: false,
    }
}

struct Session {
    _dir: tempfile::TempDir,
    askpass: PathBuf,
    git_dir: PathBuf,
    work: PathBuf,
}

fn session() -> Session {
    let dir = tempfile::tempdir().unwrap();
    let askpass = git::install_askpass(&dir.path().join("bin")).unwrap();
    Session {
        git_dir: dir.path().join("repo.git"),
        work: dir.path().join("workspace"),
        askpass,
        _dir: dir,
    }
}

fn alice() -> Author {
    Author::for_user(
        "alice",
        "Alice Example",
        "alice@example.com",
        "chat.example.com",
    )
}

fn write(dir: &Path, path: &str, text: &str) {
    let p = dir.join(path);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// Every file under `dir`, read as text where it can be.
fn grep_tree(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if std::fs::read(&p).is_ok_and(|b| String::from_utf8_lossy(&b).contains(needle))
            {
                found.push(p);
            }
        }
    }
    found
}

async fn push_opens_then_updates_one_review(kind: Kind, project: &str) {
    let forge = forge(kind).await;
    forge
        .create_repo(
            project,
            "main",
            &[("README.md", b"# web\n"), ("src/app.js", b"1\n")],
        )
        .unwrap();
    let s = session();
    let repo = Repo::new(config(&forge, kind, project, TOKEN), s.askpass.clone());
    let thread = ThreadId::new("k5xq1a9wjbfzjm3r8u7c1yqg4e");
    let branch = plan::branch_for(&thread);
    let co = repo
        .checkout(s.git_dir.clone(), s.work.clone(), &branch, None, None, true)
        .await
        .unwrap();
    assert_eq!(co.base, "main", "the remote's default branch");
    assert_eq!(
        std::fs::read_to_string(s.work.join("src/app.js")).unwrap(),
        "1\n"
    );
    assert!(
        !s.work.join(".git").exists(),
        "the repository stays out of the workspace"
    );

    write(&s.work, "src/page.html", "<h1>Hello</h1>\n");
    write(&s.work, ".env", "API_KEY=abc123\n");
    write(&s.work, "big.bin", &"x".repeat(2000));
    let message = plan::commit_message(
        "@claude repo:web [[write:src/page.html]] Add a page",
        &thread,
    );
    let pushed = repo
        .push(&co, &alice(), &message, "http://chat/t/1", false)
        .await
        .unwrap();
    assert_eq!(pushed.files, ["src/page.html"]);
    let held: Vec<&str> = pushed.held.iter().map(Held::path).collect();
    assert_eq!(held, [".env", "big.bin"]);
    let summary = pushed.summary("web", &branch, "merge request");
    assert!(
        summary.starts_with(&format!("Pushed 1 file to `{branch}` of web: commit [")),
        "{summary}"
    );
    assert!(
        summary.contains("\nOpened merge request 1: http"),
        "{summary}"
    );
    assert!(
        summary.contains("Not pushed: `.env` (it is a .env file with values)"),
        "{summary}"
    );
    assert!(
        summary.contains("Not pushed: `big.bin` (2000 bytes, over the 1024-byte limit)"),
        "{summary}"
    );

    let log = forge
        .git(project, &["log", "-1", "--format=%an <%ae>%n%B", &branch])
        .unwrap();
    assert!(
        log.starts_with("Alice Example <alice@example.com>\nAdd a page\n"),
        "{log}"
    );
    assert!(
        log.contains("Co-authored-by: Claude <noreply@anthropic.com>"),
        "{log}"
    );
    let files = forge
        .git(project, &["ls-tree", "-r", "--name-only", &branch])
        .unwrap();
    assert_eq!(files, "README.md\nsrc/app.js\nsrc/page.html");

    let review = pushed.review.clone().expect("a review").unwrap();
    assert!(review.created);
    let reviews = forge.reviews();
    assert_eq!(reviews.len(), 1);
    assert_eq!(reviews[0].source_branch, branch);
    assert_eq!(reviews[0].target_branch, "main");
    assert_eq!(reviews[0].title, "Add a page");
    assert!(reviews[0].description.ends_with("thread: http://chat/t/1"));
    assert!(
        review.url.contains(&format!("/{}", review.number)),
        "{}",
        review.url
    );
    assert!(
        pushed
            .commit_url
            .as_deref()
            .unwrap()
            .ends_with(&pushed.commit)
    );

    // Nothing new: said so, nothing pushed.
    assert_eq!(
        repo.push(&co, &alice(), &message, "http://chat/t/1", false)
            .await
            .unwrap_err(),
        Failure::NothingToPush
    );

    // A second change updates the same review.
    write(&s.work, "src/page.html", "<h1>Hello again</h1>\n");
    let message2 = plan::commit_message("Make it friendlier", &thread);
    let again = repo
        .push(&co, &alice(), &message2, "http://chat/t/1", false)
        .await
        .unwrap();
    let review2 = again.review.unwrap().unwrap();
    assert!(!review2.created);
    assert_eq!(review2.number, review.number);
    let reviews = forge.reviews();
    assert_eq!(reviews.len(), 1);
    assert_eq!(reviews[0].title, "Make it friendlier");
    let count = forge
        .git(project, &["rev-list", "--count", &branch])
        .unwrap();
    assert_eq!(count, "3");

    // A resumed session (another worker: a new repository directory, the files from
    // the checkpoint) continues the pushed branch with its changes intact.
    let s2 = session();
    copy_tree(&s.work, &s2.work);
    write(&s2.work, "notes.md", "resumed\n");
    let co2 = repo
        .checkout(
            s2.git_dir.clone(),
            s2.work.clone(),
            &branch,
            None,
            None,
            false,
        )
        .await
        .unwrap();
    let third = repo
        .push(&co2, &alice(), &message2, "http://chat/t/1", true)
        .await
        .unwrap();
    assert_eq!(third.review.unwrap().unwrap().number, review.number);
    let mut files3 = third.files.clone();
    files3.sort();
    assert_eq!(
        files3,
        [".env", "notes.md"],
        "confirmed: the .env goes too; big.bin never"
    );

    // The token is nowhere on disk: not in the worker's repository, not in the files.
    assert_eq!(grep_tree(&s.git_dir, TOKEN), Vec::<PathBuf>::new());
    assert_eq!(grep_tree(&s.work, TOKEN), Vec::<PathBuf>::new());
    assert_eq!(
        grep_tree(s.askpass.parent().unwrap(), TOKEN),
        Vec::<PathBuf>::new()
    );

    // Every API call the fleet made is one the client library's contract covers.
    for (method, route, status) in forge.routes_seen() {
        if route != "git" {
            assert!(
                forge
                    .api_routes()
                    .iter()
                    .any(|(m, r)| *m == method && *r == route),
                "{method} {route} is not in the contract"
            );
            assert!(status < 300, "{method} {route} answered {status}");
        }
    }
    forge.shutdown().await;
}

fn copy_tree(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_tree(&e.path(), &target);
        } else {
            std::fs::create_dir_all(to).unwrap();
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

#[tokio::test]
async fn gitlab_push_opens_then_updates_one_merge_request() {
    push_opens_then_updates_one_review(Kind::GitLab, "team/web").await;
}

#[tokio::test]
async fn github_push_opens_then_updates_one_pull_request() {
    push_opens_then_updates_one_review(Kind::GitHub, "acme/web").await;
}

#[tokio::test]
async fn plain_git_push_has_no_review() {
    let forge = forge(Kind::Git).await;
    forge.create_repo("x/web", "trunk", &[("a", b"a")]).unwrap();
    let s = session();
    let repo = Repo::new(config(&forge, Kind::Git, "x/web", TOKEN), s.askpass.clone());
    let co = repo
        .checkout(
            s.git_dir.clone(),
            s.work.clone(),
            "ccfleet/t",
            None,
            None,
            true,
        )
        .await
        .unwrap();
    assert_eq!(co.base, "trunk");
    write(&s.work, "b", "b");
    let pushed = repo
        .push(&co, &alice(), "Add b\n", "L", false)
        .await
        .unwrap();
    assert!(pushed.review.is_none() && pushed.commit_url.is_none());
    assert_eq!(forge.git("x/web", &["show", "ccfleet/t:b"]).unwrap(), "b");
    forge.shutdown().await;
}

#[tokio::test]
async fn protected_branch_bad_token_and_moved_remote_fail_in_plain_words() {
    let forge = forge(Kind::GitLab).await;
    forge
        .create_repo("team/web", "main", &[("a", b"a")])
        .unwrap();
    forge.protect("team/web", "main").unwrap();

    // Working on the protected branch itself (named in the message).
    let s = session();
    let repo = Repo::new(
        config(&forge, Kind::GitLab, "team/web", TOKEN),
        s.askpass.clone(),
    );
    let co = repo
        .checkout(s.git_dir.clone(), s.work.clone(), "main", None, None, true)
        .await
        .unwrap();
    write(&s.work, "b", "b");
    let err = repo
        .push(&co, &alice(), "Add b\n", "L", false)
        .await
        .unwrap_err();
    assert_eq!(err, Failure::BranchProtected);
    let words = err.plain_words("web", "main");
    assert!(words.contains("protected branch `main`"), "{words}");
    assert_eq!(
        forge
            .git("team/web", &["rev-list", "--count", "main"])
            .unwrap(),
        "1"
    );

    // A wrong token: the clone is refused, and the thread is told who can fix it.
    let bad = Repo::new(
        config(&forge, Kind::GitLab, "team/web", "wrong-token"),
        s.askpass.clone(),
    );
    let s2 = session();
    let err = bad
        .checkout(
            s2.git_dir.clone(),
            s2.work.clone(),
            "ccfleet/x",
            None,
            None,
            true,
        )
        .await
        .unwrap_err();
    assert_eq!(err, Failure::AuthRefused);
    assert!(
        err.plain_words("web", "ccfleet/x")
            .contains("renew the repository token")
    );
    assert_eq!(
        bad.probe(s2.work.as_path()).await.unwrap_err(),
        Failure::AuthRefused
    );

    // The remote moved on: someone else pushed to the session's branch.
    let s3 = session();
    let co3 = repo
        .checkout(
            s3.git_dir.clone(),
            s3.work.clone(),
            "ccfleet/y",
            None,
            None,
            true,
        )
        .await
        .unwrap();
    write(&s3.work, "c", "c");
    repo.push(&co3, &alice(), "Add c\n", "L", false)
        .await
        .unwrap();
    let s4 = session();
    let co4 = repo
        .checkout(
            s4.git_dir.clone(),
            s4.work.clone(),
            "ccfleet/y",
            None,
            None,
            true,
        )
        .await
        .unwrap();
    write(&s4.work, "d", "d");
    repo.push(&co4, &alice(), "Add d\n", "L", false)
        .await
        .unwrap();
    write(&s3.work, "e", "e");
    let err = repo
        .push(&co3, &alice(), "Add e\n", "L", false)
        .await
        .unwrap_err();
    assert_eq!(err, Failure::RemoteMoved);
    forge.shutdown().await;
}

#[tokio::test]
async fn a_review_that_fails_after_the_push_is_reported_as_such() {
    let forge = forge(Kind::GitHub).await;
    forge
        .create_repo("acme/web", "main", &[("a", b"a")])
        .unwrap();
    let s = session();
    let mut cfg = config(&forge, Kind::GitHub, "acme/web", TOKEN);
    // The API is somewhere that does not answer.
    cfg.api_url = "http://127.0.0.1:9/api/v3".to_owned();
    let repo = Repo::new(cfg, s.askpass.clone());
    let co = repo
        .checkout(
            s.git_dir.clone(),
            s.work.clone(),
            "ccfleet/z",
            None,
            None,
            true,
        )
        .await
        .unwrap();
    write(&s.work, "b", "b");
    let pushed = repo
        .push(&co, &alice(), "Add b\n", "L", false)
        .await
        .unwrap();
    assert_eq!(
        forge.git("acme/web", &["show", "ccfleet/z:b"]).unwrap(),
        "b"
    );
    assert!(pushed.commit_url.is_none());
    let err = pushed.review.unwrap().unwrap_err();
    assert_eq!(err, Failure::ProviderDown);
    assert!(
        err.plain_words("web", "ccfleet/z")
            .contains("not answering")
    );
    forge.shutdown().await;
}

/// Before its first push a session's branch exists only in its record: another worker
/// checks it out at the commit the session started from (fetched by id), so a base that
/// moved on meanwhile is neither reverted nor pulled into the session's commit.
#[tokio::test]
async fn a_first_push_from_another_worker_starts_at_the_sessions_commit() {
    let forge = forge(Kind::GitLab).await;
    forge
        .create_repo("team/web", "main", &[("a.txt", b"one\n")])
        .unwrap();
    let s = session();
    let repo = Repo::new(
        config(&forge, Kind::GitLab, "team/web", TOKEN),
        s.askpass.clone(),
    );
    let co = repo
        .checkout(
            s.git_dir.clone(),
            s.work.clone(),
            "ccfleet/m",
            None,
            None,
            true,
        )
        .await
        .unwrap();
    let start = co
        .git
        .run(&["rev-parse", "HEAD"], None, None)
        .await
        .unwrap();
    write(&s.work, "page.html", "<p>mine</p>\n");

    // Someone else changes main meanwhile.
    let other = session();
    let main = repo
        .checkout(
            other.git_dir.clone(),
            other.work.clone(),
            "main",
            None,
            None,
            true,
        )
        .await
        .unwrap();
    write(&other.work, "a.txt", "two\n");
    repo.push(&main, &alice(), "Move main on\n", "L", false)
        .await
        .unwrap();

    // Another worker pushes the session: its files (from the checkpoint), a new
    // repository, the session's start commit.
    let s2 = session();
    copy_tree(&s.work, &s2.work);
    let co2 = repo
        .checkout(
            s2.git_dir.clone(),
            s2.work.clone(),
            "ccfleet/m",
            Some("main"),
            Some(&start),
            false,
        )
        .await
        .unwrap();
    let pushed = repo
        .push(&co2, &alice(), "Add a page\n", "L", false)
        .await
        .unwrap();
    assert_eq!(pushed.files, ["page.html"], "only the session's change");
    assert_eq!(
        forge
            .git("team/web", &["rev-parse", "ccfleet/m~1"])
            .unwrap(),
        start,
        "the branch grows from where the session started"
    );
    assert_eq!(
        forge.git("team/web", &["show", "ccfleet/m:a.txt"]).unwrap(),
        "one",
        "main's later change is not reverted on the branch"
    );
    // Without the start commit, the same files would have reverted main's change.
    let s3 = session();
    copy_tree(&s.work, &s3.work);
    let co3 = repo
        .checkout(
            s3.git_dir.clone(),
            s3.work.clone(),
            "ccfleet/n",
            None,
            None,
            false,
        )
        .await
        .unwrap();
    let changes = co3.git.changes().await.unwrap();
    assert!(changes.iter().any(|(_, p)| p == "a.txt"), "{changes:?}");
    // A start that is not a commit id is refused before git runs.
    let s4 = session();
    assert!(
        repo.checkout(
            s4.git_dir.clone(),
            s4.work.clone(),
            "ccfleet/o",
            None,
            Some("--upload-pack=touch /tmp/x"),
            false
        )
        .await
        .is_err()
    );
    forge.shutdown().await;
}
