//! A session that starts from the team's repository and pushes back (issue 18), through
//! the real path: the simulator's thread, the real CLI in the runner image writing files
//! (the fake model's `[[write:PATH]]`), the worker's own git against a real git server
//! (`git http-backend` behind loadtest's forge) with the GitLab double beside it.
//!
//! `repo:web` checks the repository out into the workspace (the header shows it); after a
//! turn that changed files the thread offers Push, which only the owner (or an approver)
//! can answer; Push commits as the user, pushes the session's branch and opens one merge
//! request, a second change and Push updates it; a protected branch and a bad token each
//! end in plain words; the session's container never holds the token.

use std::time::Duration;

use common::config::{RepoProvider, RepositoryConfig, RuntimeKind, Secret};
use common::testsupport::TestEnv;
use loadtest::fleet::LocalFleet;
use loadtest::forge::{Forge, Kind, Options};
use loadtest::mmsim::model::Post;
use tokio_util::sync::CancellationToken;

use super::support::{
    answers, bot_posts, eventually, fleet_with, has_buttons, member, react_when_known,
    refused_privately, session_id, skip_unless_ci, wait_for_post,
};

const TURN: Duration = Duration::from_secs(240);
const TOKEN: &str = "glpat-e2e-repository-token-0123456789";

fn repository(forge: &Forge, name: &str, project: &str, token: &str) -> RepositoryConfig {
    RepositoryConfig {
        name: name.to_owned(),
        url: forge.clone_url(project),
        provider: RepoProvider::Gitlab,
        api_url: forge.api_url(),
        token: Secret::new(token),
        username: String::new(),
        default_branch: String::new(),
        channels: vec![],
        clone_depth: 1,
        max_push_file_bytes: 1024 * 1024,
        generated_files: false,
        token_file: Default::default(),
    }
}

fn is_push_offer(post: &Post) -> bool {
    post.message.contains("to `web`?") && has_buttons(post)
}

/// The push offers shown so far in the thread (answered or not).
async fn offers(fleet: &LocalFleet, root: &str) -> Vec<Post> {
    bot_posts(fleet, root)
        .await
        .into_iter()
        .filter(|p| p.message.contains(":arrow_up: Push the changes to `web`?"))
        .collect()
}

/// Posts `text` in the thread and waits for a new push offer (the turn changed files).
async fn turn_with_offer(fleet: &LocalFleet, root: &str, text: &str) -> Post {
    let before = offers(fleet, root).await.len();
    let answered = answers(fleet, root).await.len();
    fleet
        .demo()
        .post(fleet.channel_id(), text, Some(root))
        .await
        .unwrap();
    eventually(TURN, "the turn's answer", || async {
        (answers(fleet, root).await.len() > answered).then_some(())
    })
    .await;
    eventually(TURN, "a push offer", || async {
        let all = offers(fleet, root).await;
        (all.len() > before).then(|| all.last().cloned()).flatten()
    })
    .await
}

/// The next bot post whose text contains `needle`.
async fn post_with(fleet: &LocalFleet, root: &str, needle: &str) -> Post {
    let needle = needle.to_owned();
    wait_for_post(fleet, root, TURN, "a post", move |p: &Post| {
        p.message.contains(&needle)
    })
    .await
}

#[tokio::test]
async fn a_repository_session_pushes_its_changes_as_one_merge_request() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let forge = match Forge::start(
        listener,
        Options::new(Kind::GitLab, TOKEN),
        CancellationToken::new(),
    ) {
        Ok(forge) => forge,
        Err(err) => {
            skip_unless_ci("push to a real git server", &err.to_string());
            return;
        }
    };
    forge
        .create_repo(
            "team/web",
            "main",
            &[
                ("README.md", b"# web\n".as_slice()),
                ("src/index.html", b"<h1>index</h1>\n".as_slice()),
            ],
        )
        .unwrap();
    let env = TestEnv::new().await;
    forge
        .create_repo(
            "team/drop",
            "main",
            &[("README.md", b"# drop\n".as_slice())],
        )
        .unwrap();
    let web = repository(&forge, "web", "team/web", TOKEN);
    let broken = repository(
        &forge,
        "broken",
        "team/web",
        "glpat-not-the-right-token-000000",
    );
    let mut drop = repository(&forge, "drop", "team/drop", TOKEN);
    drop.generated_files = true;
    let fleet = fleet_with(&env, 1, 3, RuntimeKind::Docker, "bypassPermissions", |c| {
        c.repositories = vec![web, broken, drop];
    })
    .await;
    let bob = member(&fleet, "bob").await;

    // repo:web: the repository's files are in the workspace before the first turn, on the
    // session's own branch, and the header says so.
    let root = fleet
        .demo()
        .post(
            fleet.channel_id(),
            "@claude repo:web [[write:src/page.html]] add a page",
            None,
        )
        .await
        .unwrap();
    let started = post_with(&fleet, &root.id, "Started from `web`").await;
    let branch = {
        let m = &started.message;
        let start = m.find("branch `").unwrap() + "branch `".len();
        m[start..start + m[start..].find('`').unwrap()].to_owned()
    };
    assert!(branch.starts_with("ccfleet/"), "{}", started.message);
    assert!(
        started.message.contains("from `main`"),
        "{}",
        started.message
    );
    eventually(TURN, "the header shows the repository", || async {
        let header = bot_posts(&fleet, &root.id).await.into_iter().next()?;
        header
            .message
            .contains(&format!("| Repository | `web` on branch `{branch}` |"))
            .then_some(())
    })
    .await;
    let offer = eventually(TURN, "the push offer", || async {
        bot_posts(&fleet, &root.id)
            .await
            .into_iter()
            .find(is_push_offer)
    })
    .await;
    assert!(
        offer.message.contains("`src/page.html`"),
        "{}",
        offer.message
    );
    assert!(
        forge.reviews().is_empty(),
        "nothing is pushed before someone says so"
    );

    // Bob is neither the owner nor an approver: told so, privately; nothing is pushed.
    refused_privately(&bob, &offer.id, "push", "alice").await;

    // The owner pushes: one commit by her on the session's branch, one merge request.
    fleet.demo().click(&offer.id, "push").await.unwrap();
    let pushed = post_with(&fleet, &root.id, "Pushed ").await;
    assert!(
        pushed.message.contains(&format!("to `{branch}` of web")),
        "{}",
        pushed.message
    );
    assert!(
        pushed.message.contains("Opened merge request 1:"),
        "{}",
        pushed.message
    );
    let author = forge
        .git("team/web", &["log", "-1", "--format=%an|%B", &branch])
        .unwrap();
    assert!(author.starts_with("alice|"), "{author}");
    assert!(author.contains("add a page"), "{author}");
    assert!(author.contains("Co-authored-by: Claude"), "{author}");
    let files = forge
        .git("team/web", &["ls-tree", "-r", "--name-only", &branch])
        .unwrap();
    assert!(files.contains("src/page.html"), "{files}");
    assert!(files.contains("README.md"), "{files}");
    let reviews = forge.reviews();
    assert_eq!(reviews.len(), 1, "{reviews:?}");
    assert_eq!(reviews[0].source_branch, branch);
    assert_eq!(reviews[0].target_branch, "main");
    assert!(
        pushed
            .message
            .contains(&format!("/-/merge_requests/{}", reviews[0].number)),
        "the merge request's link: {}",
        pushed.message
    );

    // A second change, pushed by reaction: the same merge request is updated.
    let second = turn_with_offer(&fleet, &root.id, "[[write:src/more.html]] one more page").await;
    assert!(
        second.message.contains("Commit message: **one more page**"),
        "{}",
        second.message
    );
    // The commit message is edited by replying before pushing (not sent to Claude).
    let requests = fleet.model.message_requests().len();
    fleet
        .demo()
        .post(
            fleet.channel_id(),
            "commit message: Add the second page\n\nLinked from the first.",
            Some(&root.id),
        )
        .await
        .unwrap();
    eventually(TURN, "the offer shows the new message", || async {
        let post = fleet.demo().get_post(&second.id).await.ok()?;
        (post
            .message
            .contains("Commit message: **Add the second page**")
            && has_buttons(&post))
        .then_some(())
    })
    .await;
    assert_eq!(
        fleet.model.message_requests().len(),
        requests,
        "not a prompt"
    );
    react_when_known(&fleet, &second, "+1").await;
    let updated = post_with(&fleet, &root.id, "Updated merge request").await;
    assert!(
        updated.message.contains("Pushed 1 file"),
        "{}",
        updated.message
    );
    assert_eq!(forge.reviews().len(), 1, "{:?}", forge.reviews());
    let count = forge
        .git("team/web", &["rev-list", "--count", &branch])
        .unwrap();
    assert_eq!(count, "3", "seed, first push, second push");
    let subject = forge
        .git("team/web", &["log", "-1", "--format=%s|%b", &branch])
        .unwrap();
    assert!(
        subject.starts_with("Add the second page|Linked from the first."),
        "{subject}"
    );

    // The branch is protected now: the push fails in plain words, nothing is claimed.
    forge.protect("team/web", &branch).unwrap();
    let third = turn_with_offer(&fleet, &root.id, "[[write:src/third.html]] a third").await;
    fleet.demo().click(&third.id, "push").await.unwrap();
    let refused = post_with(&fleet, &root.id, "**Not pushed.**").await;
    assert!(
        refused.message.contains("protected branch"),
        "{}",
        refused.message
    );
    let count = forge
        .git("team/web", &["rev-list", "--count", &branch])
        .unwrap();
    assert_eq!(count, "3");

    // A repository whose token the forge refuses: the thread is told, in plain words.
    let bad = fleet
        .demo()
        .post(
            fleet.channel_id(),
            "@claude repo:broken [[write:x.txt]] try",
            None,
        )
        .await
        .unwrap();
    let told = post_with(&fleet, &bad.id, "refused the fleet's credentials").await;
    assert!(told.message.contains("broken"), "{}", told.message);

    // A session without a repository: its generated files go to the repository that
    // takes them, on a branch of the thread's own, as the first seed did.
    let plain = fleet
        .demo()
        .post(
            fleet.channel_id(),
            "@claude [[write:report.md]] write a report",
            None,
        )
        .await
        .unwrap();
    let offer = eventually(TURN, "the generated files' push offer", || async {
        bot_posts(&fleet, &plain.id)
            .await
            .into_iter()
            .find(|p| p.message.contains("to `drop`?") && has_buttons(p))
    })
    .await;
    assert!(offer.message.contains("`report.md`"), "{}", offer.message);
    fleet.demo().click(&offer.id, "push").await.unwrap();
    let pushed = post_with(&fleet, &plain.id, "Pushed ").await;
    assert!(pushed.message.contains("of drop"), "{}", pushed.message);
    let drop_branch = format!("ccfleet/{}", &plain.id[..10]);
    let message = forge
        .git("team/drop", &["log", "-1", "--format=%an|%s", &drop_branch])
        .unwrap();
    assert_eq!(
        message,
        format!(
            "alice|Add generated files from Claude Code (Thread: {})",
            plain.id
        )
    );
    let files = forge
        .git("team/drop", &["ls-tree", "-r", "--name-only", &drop_branch])
        .unwrap();
    assert_eq!(
        files, "README.md\nreport.md",
        "the repository's files and the report"
    );
    assert!(
        forge
            .reviews()
            .iter()
            .any(|r| r.repo == "team/drop" && r.source_branch == drop_branch),
        "{:?}",
        forge.reviews()
    );

    // The session's container never saw the token.
    let session = session_id(&env, &root.id).await;
    let client = env.pool().get().await.unwrap();
    let inspect = std::process::Command::new("docker")
        .args(["inspect", &format!("ccfleet-{session}")])
        .output()
        .unwrap();
    assert!(inspect.status.success(), "the session's container exists");
    let inspect = String::from_utf8_lossy(&inspect.stdout);
    assert!(
        !inspect.contains(TOKEN),
        "the token is not in the container"
    );
    // And the attempts are audited: bob refused, alice accepted.
    let audit: Vec<(String, String)> = client
        .query(
            "SELECT username, outcome FROM approval_answers a JOIN approvals p USING (approval_id)
             WHERE p.thread_id = $1 AND p.kind = 'push' ORDER BY a.id",
            &[&root.id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        audit.first(),
        Some(&("bob".to_owned(), "refused".to_owned())),
        "{audit:?}"
    );
    assert!(
        audit.contains(&("alice".to_owned(), "accepted".to_owned())),
        "{audit:?}"
    );
    fleet.stop().await;
    forge.shutdown().await;
}
