use proptest::prelude::*;
use proto::ThreadId;

use super::*;

#[test]
fn a_threads_branch_is_short_and_stable() {
    let t = ThreadId::new("k5xq1a9wjbfzjm3r8u7c1yqg4e");
    assert_eq!(branch_for(&t), "ccfleet/k5xq1a9wjb");
    assert_eq!(branch_for(&ThreadId::new("")), "ccfleet/thread");
    assert!(valid_branch(&branch_for(&t)));
}

#[test]
fn the_message_or_the_channel_chooses_the_repository() {
    let web_channels = vec!["chan-web".to_owned()];
    let none: Vec<String> = vec![];
    let repos: Vec<(&str, &[String])> = vec![("web", &web_channels), ("api", &none)];
    let chosen = |text: &str, channel: &str| choose_repository(text, channel, &repos);
    assert_eq!(
        chosen("@claude repo:api fix it", "chan-web").unwrap(),
        Some(Chosen {
            name: "api".into(),
            branch: None,
            by_default: false
        })
    );
    assert_eq!(
        chosen("@claude fix it branch:feature/x", "chan-web").unwrap(),
        Some(Chosen {
            name: "web".into(),
            branch: Some("feature/x".into()),
            by_default: true
        })
    );
    assert_eq!(chosen("@claude fix it", "elsewhere").unwrap(), None);
    let err = chosen("@claude repo:nope", "chan-web").unwrap_err();
    assert_eq!(
        err.plain_words(),
        "There is no repository `nope`. Known here: `web`, `api`."
    );
    assert!(matches!(
        chosen("repo:web branch:-f", "x"),
        Err(Unusable::BadBranch(_))
    ));
}

#[test]
fn branch_names_follow_gits_rules() {
    for ok in ["main", "feature/x", "ccfleet/abc", "v1.2", "a-b_c"] {
        assert!(valid_branch(ok), "{ok}");
    }
    for bad in [
        "", "-f", "--force", "/a", "a/", "a..b", "a b", "a~1", "a^", "a:b", "a?", "a*", "a[",
        "a\\b", "x.lock", "x.lock/y", "@", "a@{1}", ".hidden", "a/.b", "a//b", "a.",
    ] {
        assert!(!valid_branch(bad), "{bad:?}");
    }
}

#[test]
fn the_author_is_the_user_with_a_usable_email() {
    let a = Author::for_user(
        "alice",
        "Alice Example",
        "alice@example.com",
        "chat.example.com",
    );
    assert_eq!(a.name, "Alice Example");
    assert_eq!(a.email, "alice@example.com");
    let a = Author::for_user("bob<x>", "", "", "chat.example.com");
    assert_eq!(a.name, "bobx");
    assert_eq!(a.email, "bobx@users.noreply.chat.example.com");
}

#[test]
fn the_commit_message_has_title_body_and_trailers() {
    let t = ThreadId::new("thread1");
    let m = commit_message(
        "@claude repo:web [[write:src/page.html]] Add a landing page\nwith a big title",
        &t,
    );
    assert_eq!(
        m,
        "Add a landing page\n\nwith a big title\n\nCcfleet-Thread: thread1\nCo-authored-by: Claude <noreply@anthropic.com>\n"
    );
    let m = commit_message("[[write:a.txt]]", &t);
    assert!(m.starts_with("Changes from Claude Code\n\n"), "{m}");
    let (title, description) = review_text(&m, "http://chat/t/1");
    assert_eq!(title, "Changes from Claude Code");
    assert_eq!(
        description,
        "Opened by ccfleet from a Mattermost thread: http://chat/t/1"
    );
}

#[test]
fn secrets_and_large_files_are_held() {
    let c = |path: &str, head: &str, size: u64| Candidate {
        path: path.to_owned(),
        size,
        head: head.as_bytes().to_vec(),
    };
    let files = [
        c("src/page.html", "<p>hi</p>", 9),
        c(".env", "# nothing\nAPI_KEY=abc123\n", 20),
        c(".env.example", "API_KEY=changeme\n", 17),
        c("config/.env", "EMPTY=\n# X=1\n", 10),
        c(
            "deploy/key.pem",
            "-----BEGIN OPENSSH PRIVATE KEY-----\nabc",
            40,
        ),
        c("notes.md", "token glpat-abcdefghijklmnopqrst here", 30),
        c("big.bin", "", 101),
        c("id_ed25519", "", 1),
    ];
    let s = screen(&files, 100, false);
    assert_eq!(s.push, ["src/page.html", ".env.example", "config/.env"]);
    let held: Vec<&str> = s.held.iter().map(Held::path).collect();
    assert_eq!(
        held,
        [
            ".env",
            "deploy/key.pem",
            "notes.md",
            "big.bin",
            "id_ed25519"
        ]
    );
    assert!(matches!(
        s.held[3],
        Held::TooLarge {
            size: 101,
            limit: 100,
            ..
        }
    ));
    let confirmed = screen(&files, 100, true);
    assert_eq!(confirmed.held.len(), 1, "only the large file stays held");
    assert_eq!(screen(&files, 0, true).held, []);
}

#[test]
fn git_failures_in_plain_words() {
    let cases = [
        (
            "fatal: Authentication failed for 'http://h/x.git/'",
            Failure::AuthRefused,
        ),
        (
            "remote: GitLab: You are not allowed to push code to protected branches on this project.\n ! [remote rejected] main -> main (pre-receive hook declined)",
            Failure::BranchProtected,
        ),
        (
            "remote: error: GH006: Protected branch update failed for refs/heads/main.",
            Failure::BranchProtected,
        ),
        (
            " ! [rejected]        ccfleet/x -> ccfleet/x (fetch first)\nerror: failed to push some refs",
            Failure::RemoteMoved,
        ),
        (
            "remote: error: GH001: Large files detected.",
            Failure::TooLarge,
        ),
        (
            "remote: Repository not found.\nfatal: repository 'h' not found",
            Failure::NotFound,
        ),
        (
            "fatal: unable to access 'http://h/': Failed to connect to h port 80",
            Failure::ProviderDown,
        ),
        (
            "fatal: unable to access 'http://h/': The requested URL returned error: 502",
            Failure::ProviderDown,
        ),
    ];
    for (stderr, want) in cases {
        assert_eq!(classify_git(stderr, "tok"), want, "{stderr}");
        assert!(!want.plain_words("web", "main").is_empty());
    }
    assert_eq!(
        classify_git("weird thing with tok in it", "tok"),
        Failure::Other("weird thing with *** in it".to_owned())
    );
    assert_eq!(classify_api(Some(401), "", ""), Failure::AuthRefused);
    assert_eq!(classify_api(Some(503), "", ""), Failure::ProviderDown);
    assert_eq!(classify_api(None, "", ""), Failure::ProviderDown);
    assert!(
        matches!(classify_api(Some(422), "bad tok", "tok"), Failure::Other(m) if !m.contains("tok"))
    );
}

proptest! {
    #[test]
    fn every_threads_branch_is_valid(id in "[a-zA-Z0-9_-]{0,40}") {
        let b = branch_for(&ThreadId::new(id.clone()));
        prop_assert!(valid_branch(&b), "{b}");
        prop_assert!(b.starts_with(BRANCH_PREFIX));
        prop_assert!(b.len() <= BRANCH_PREFIX.len() + SHORT_ID_LEN.max(6));
        prop_assert_eq!(b, branch_for(&ThreadId::new(id)));
    }

    #[test]
    fn the_commit_message_keeps_its_shape(request in "\\PC{0,300}(\n\\PC{0,80}){0,4}", id in "[a-z0-9]{26}") {
        let m = commit_message(&request, &ThreadId::new(id.clone()));
        let title = m.lines().next().unwrap();
        prop_assert!(!title.trim().is_empty());
        prop_assert!(title.chars().count() <= TITLE_MAX);
        prop_assert_eq!(m.lines().nth(1), Some(""));
        let trailers = format!("\n\nCcfleet-Thread: {id}\n{CO_AUTHOR}\n");
        prop_assert!(m.ends_with(&trailers), "{}", m);
        let (t, d) = review_text(&m, "L");
        prop_assert_eq!(t, title);
        prop_assert!(d.ends_with("thread: L"));
    }

    #[test]
    fn classifying_never_repeats_the_secret(stderr in "\\PC{0,200}", secret in "[a-z]{8,20}") {
        let text = format!("{stderr} {secret} {stderr}");
        let words = classify_git(&text, &secret).plain_words("web", "main");
        prop_assert!(!words.contains(&secret));
        let api = classify_api(Some(422), &text, &secret).plain_words("web", "main");
        prop_assert!(!api.contains(&secret));
    }

    #[test]
    fn screening_partitions_the_files(
        files in proptest::collection::vec(("[a-z./]{1,12}", 0u64..100, "\\PC{0,40}"), 0..12),
        max in 0u64..100,
        confirmed in any::<bool>(),
    ) {
        let files: Vec<Candidate> = files
            .into_iter()
            .enumerate()
            .map(|(i, (path, size, head))| Candidate { path: format!("{i}/{path}"), size, head: head.into_bytes() })
            .collect();
        let s = screen(&files, max, confirmed);
        prop_assert_eq!(s.push.len() + s.held.len(), files.len());
        for h in &s.held {
            match h {
                Held::TooLarge { size, limit, .. } => prop_assert!(*limit > 0 && size > limit),
                Held::Secret { .. } => prop_assert!(!confirmed),
            }
        }
        for p in &s.push {
            let f = files.iter().find(|f| &f.path == p).unwrap();
            prop_assert!(max == 0 || f.size <= max);
        }
    }
}

#[test]
fn a_reply_edits_the_commit_message_only_with_its_prefix() {
    assert_eq!(
        edited_message("commit message: Add the pricing page\n\nWith a table"),
        Some("Add the pricing page\n\nWith a table".to_owned())
    );
    assert_eq!(
        edited_message("@claude  Commit Message:  Fix it"),
        Some("Fix it".to_owned())
    );
    assert_eq!(edited_message("commit message:   "), None);
    assert_eq!(edited_message("please write a commit message: no"), None);
    assert_eq!(edited_message("commit"), None);
    assert_eq!(edited_message("ü"), None);
    // The edited text makes the commit as a request would.
    assert_eq!(
        commit_title("Add the pricing page\n\nWith a table"),
        "Add the pricing page"
    );
    assert_eq!(commit_title("[[write:x]]"), "Changes from Claude Code");
}

proptest::proptest! {
    #[test]
    fn an_edit_never_panics_and_keeps_what_follows_the_prefix(text in "\\PC{0,80}") {
        if let Some(message) = edited_message(&text) {
            proptest::prop_assert!(!message.is_empty());
            proptest::prop_assert!(text.contains(message.as_str()));
        }
    }
}
