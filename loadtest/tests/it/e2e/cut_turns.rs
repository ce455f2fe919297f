//! A prompt whose turn keeps being cut off (its worker dies mid-turn each time: killed,
//! out of memory) is not redelivered for ever: after a bounded number of starts the
//! thread is told it was not run, the prompt is acknowledged, and the thread goes on.

use std::time::Duration;

use common::config::RuntimeKind;
use common::testsupport::TestEnv;

use super::fencing::allowing;
use super::support::{bot_posts, fleet, session_id};

const TURN: Duration = Duration::from_secs(120);
/// How often a turn is started before its prompt is given up (`session::MAX_TURN_STARTS`).
const STARTS: usize = 3;

#[tokio::test]
async fn a_turn_cut_off_again_and_again_is_given_up_visibly() {
    let env = TestEnv::new().await;
    let mut fleet = fleet(&env, 1, 2, RuntimeKind::Process, "default").await;
    let root = fleet
        .demo()
        .post(
            fleet.channel_id(),
            "@claude [[bash:echo started >> started.txt; sleep 600]] run it",
            None,
        )
        .await
        .unwrap()
        .id;
    let session = session_id(&env, &root).await;
    let started = fleet
        .config
        .worker
        .sessions_dir
        .join(&session)
        .join("workspace/started.txt");
    let starts = || {
        std::fs::read_to_string(&started)
            .map(|text| text.lines().count())
            .unwrap_or(0)
    };
    for start in 1..=STARTS {
        allowing(&fleet, &root, TURN, "the turn to start", || async {
            (starts() == start).then_some(())
        })
        .await;
        // Its worker dies mid-turn; a new one takes the thread over.
        fleet.workers.remove(0).kill();
        fleet.add_worker().await.unwrap();
    }
    let notice = allowing(
        &fleet,
        &root,
        TURN,
        "the notice that the message was given up (or a fourth start)",
        || async {
            let given_up = bot_posts(&fleet, &root)
                .await
                .into_iter()
                .find(|p| p.message.contains("was not run"));
            given_up.or_else(|| {
                (starts() > STARTS).then(|| panic!("the turn was started a {}th time", starts()))
            })
        },
    )
    .await;
    assert!(
        notice.message.contains("each of the 3 attempts"),
        "{}",
        notice.message
    );
    assert_eq!(starts(), STARTS, "not started again");
    // The prompt was acknowledged: it does not come back, and the thread goes on.
    let (_, answer) =
        super::checkpoints::turn(&fleet, Some(&root), "[[bash:echo fine]] and now").await;
    assert!(answer.message.contains("Done: fine"), "{}", answer.message);
    assert_eq!(starts(), STARTS, "the given-up prompt was not run again");
    fleet.stop().await;
}
