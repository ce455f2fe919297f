//! Approving a new host in the thread, through the real path: the real CLI in the runner
//! image, its Bash tool (driven by the fake model's `[[bash:CMD]]`) asking the worker's
//! egress gateway for hosts served by this test on loopback, reached only through the
//! gateway. A refused host gets a prompt in the thread; "allow for this session" lets the
//! agent's next try through, "deny" keeps it refused without asking again, and someone
//! who is neither the owner nor an approver changes nothing; the answers hold on the worker
//! that takes the thread over after its first one dies.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use common::config::RuntimeKind;
use common::testsupport::TestEnv;
use loadtest::fleet::LocalFleet;
use loadtest::mmsim::model::Post;

use super::support::{
    Probe, REPLY, answers, bot_posts, eventually, fleet_with, has_buttons, member,
    react_when_known, refused_privately, wait_for_post,
};

const TURN: Duration = Duration::from_secs(240);

/// The message whose turn asks `host` for `/name` through the session's proxy (the way
/// any HTTP client in the container would) and prints the answer between markers.
fn fetch(host: SocketAddr, name: &str) -> String {
    let script = format!(
        r#"p=${{HTTP_PROXY#http://}}; gw=${{p#*@}}; gh=${{gw%:*}}; gp=${{gw##*:}}
c=$(printf %s "${{p%@*}}" | base64 -w0)
echo =={name}
exec 3<>/dev/tcp/$gh/$gp; printf 'GET http://{host}/{name} HTTP/1.1\r\nHost: {host}\r\nProxy-Authorization: Basic %s\r\nConnection: close\r\n\r\n' "$c" >&3; timeout 5 cat <&3; exec 3<&-
echo; echo ==end-{name}
"#
    );
    let encoded = base64::engine::general_purpose::STANDARD.encode(script);
    format!("@claude [[bash:echo {encoded} | base64 -d | bash]] fetch {name}")
}

/// What the turn's fetch of `/name` printed, as the model saw it.
async fn fetched(fleet: &LocalFleet, name: &str) -> String {
    let end = format!("==end-{name}");
    let transcript = eventually(TURN, "the fetch's output", || async {
        fleet
            .model
            .message_requests()
            .iter()
            .map(|r| r.transcript())
            .find(|t| t.contains(&end))
    })
    .await;
    let start = transcript.find(&format!("=={name}\n")).unwrap() + name.len() + 3;
    let stop = transcript.find(&end).unwrap();
    transcript[start..stop].to_owned()
}

fn is_domain_prompt(host: SocketAddr) -> impl Fn(&Post) -> bool {
    let text = format!("Claude wants to reach `{host}`");
    move |p: &Post| p.message.contains(&text)
}

async fn domain_rows(env: &TestEnv, thread: &str) -> Vec<(String, String, Option<String>)> {
    let client = env.pool().get().await.unwrap();
    client
        .query(
            "SELECT tool_name, status, answer FROM approvals
             WHERE thread_id = $1 AND kind = 'domain' ORDER BY created_at",
            &[&thread],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

async fn turn(fleet: &LocalFleet, root: &str, text: &str, answered: usize) {
    fleet
        .demo()
        .post(fleet.channel_id(), text, Some(root))
        .await
        .unwrap();
    eventually(TURN, "the turn's answer", || async {
        (answers(fleet, root).await.len() > answered).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_refused_host_is_asked_about_in_the_thread_and_the_answer_holds() {
    let env = TestEnv::new().await;
    let allowed_later = Probe::start([127, 0, 0, 3].into()).await;
    let denied = Probe::start([127, 0, 0, 4].into()).await;
    let mut fleet = fleet_with(&env, 1, 2, RuntimeKind::Docker, "bypassPermissions", |_| {}).await;
    let bob = member(&fleet, "bob").await;

    // Not allowed yet: refused, and the thread is asked.
    let root = fleet
        .demo()
        .post(
            fleet.channel_id(),
            &fetch(allowed_later.addr, "first"),
            None,
        )
        .await
        .unwrap();
    let first = fetched(&fleet, "first").await;
    assert!(first.starts_with("HTTP/1.1 403"), "{first}");
    assert!(
        first.contains("not on this session's allow-list"),
        "{first}"
    );
    let prompt = wait_for_post(
        &fleet,
        &root.id,
        TURN,
        "the host's prompt",
        is_domain_prompt(allowed_later.addr),
    )
    .await;
    assert!(has_buttons(&prompt), "{:?}", prompt.props);
    eventually(TURN, "the first turn's answer", || async {
        (!answers(&fleet, &root.id).await.is_empty()).then_some(())
    })
    .await;

    // Bob may not answer: told so, privately; the host stays refused.
    refused_privately(&bob, &prompt.id, "domainsession", "alice").await;
    assert!(has_buttons(
        &fleet.demo().get_post(&prompt.id).await.unwrap()
    ));
    assert_eq!(domain_rows(&env, &root.id).await[0].1, "pending");

    // The owner allows it for the session: the agent's next try gets through.
    fleet
        .demo()
        .click(&prompt.id, "domainsession")
        .await
        .unwrap();
    eventually(TURN, "the prompt shows the verdict", || async {
        let post = fleet.demo().get_post(&prompt.id).await.ok()?;
        (post
            .message
            .contains("**Allowed for this session** by @alice")
            && !has_buttons(&post))
        .then_some(())
    })
    .await;
    turn(&fleet, &root.id, &fetch(allowed_later.addr, "second"), 1).await;
    let second = fetched(&fleet, "second").await;
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    assert!(second.contains(REPLY), "{second}");
    assert!(
        allowed_later
            .seen()
            .iter()
            .any(|l| l.starts_with("GET /second ")),
        "{:?}",
        allowed_later.seen()
    );
    assert!(
        !allowed_later.seen().iter().any(|l| l.contains("/first")),
        "the refused request never left: {:?}",
        allowed_later.seen()
    );

    // Another host, denied by reaction: it stays refused, and is not asked about again.
    turn(&fleet, &root.id, &fetch(denied.addr, "third"), 2).await;
    let third = fetched(&fleet, "third").await;
    assert!(third.starts_with("HTTP/1.1 403"), "{third}");
    let prompt2 = wait_for_post(
        &fleet,
        &root.id,
        TURN,
        "the second host's prompt",
        is_domain_prompt(denied.addr),
    )
    .await;
    react_when_known(&fleet, &prompt2, "-1").await;
    eventually(TURN, "the denial shows", || async {
        let post = fleet.demo().get_post(&prompt2.id).await.ok()?;
        post.message.contains("**Denied** by @alice").then_some(())
    })
    .await;
    turn(&fleet, &root.id, &fetch(denied.addr, "fourth"), 3).await;
    let fourth = fetched(&fleet, "fourth").await;
    assert!(fourth.starts_with("HTTP/1.1 403"), "{fourth}");
    assert!(denied.seen().is_empty(), "{:?}", denied.seen());
    let prompts = bot_posts(&fleet, &root.id)
        .await
        .into_iter()
        .filter(is_domain_prompt(denied.addr))
        .count();
    assert_eq!(prompts, 1, "a denied host is not asked about again");

    // The worker dies; another takes the thread over: what was allowed and denied holds.
    fleet.add_worker().await.unwrap();
    fleet.workers.remove(0).kill();
    turn(&fleet, &root.id, &fetch(allowed_later.addr, "fifth"), 4).await;
    let fifth = fetched(&fleet, "fifth").await;
    assert!(fifth.starts_with("HTTP/1.1 200"), "{fifth}");
    turn(&fleet, &root.id, &fetch(denied.addr, "sixth"), 5).await;
    let sixth = fetched(&fleet, "sixth").await;
    assert!(sixth.starts_with("HTTP/1.1 403"), "{sixth}");
    assert!(denied.seen().is_empty(), "{:?}", denied.seen());
    let prompts = bot_posts(&fleet, &root.id)
        .await
        .into_iter()
        .filter(|p| p.message.contains("Claude wants to reach"))
        .count();
    assert_eq!(prompts, 2, "nothing is asked again after the failover");

    // Recorded per session, with who decided how.
    let rows = domain_rows(&env, &root.id).await;
    let host = |a: SocketAddr| a.ip().to_string();
    assert_eq!(
        rows,
        vec![
            (
                host(allowed_later.addr),
                "allowed".to_owned(),
                Some(r#"{"scope":"session"}"#.to_owned())
            ),
            (
                host(denied.addr),
                "denied".to_owned(),
                Some(r#"{"scope":"deny"}"#.to_owned())
            ),
        ]
    );
    fleet.stop().await;
}
