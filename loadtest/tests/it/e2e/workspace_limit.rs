//! One prompt cannot take a worker down: a turn that writes gigabytes leaves the worker's
//! memory bounded (checkpoints and artifacts are streamed, the workspace is capped), the
//! other threads are answered meanwhile, and the thread is told why its turn was not
//! saved; the session stays usable.

use std::time::Duration;

use common::config::RuntimeKind;
use common::testsupport::TestEnv;

use super::checkpoints::{checkpointed, take_over, turn};
use super::support::{bot_posts, fleet, link, wait_for_post};

/// The peak resident set of this process (the whole fleet runs in it), in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status")
}

/// Removes the sessions directory (gigabytes) however the test ends.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn a_turn_writing_gigabytes_leaves_the_worker_bounded_and_the_thread_told() {
    let env = TestEnv::new().await;
    let _cleanup = RemoveOnDrop(std::env::temp_dir().join(format!("ccfleet-e2e-{}", env.prefix)));
    // The default limit (2 GiB) is what is exceeded here.
    let fleet = fleet(&env, 1, 4, RuntimeKind::Process, "default").await;
    let (other, _) = turn(
        &fleet,
        None,
        "@claude [[bash:echo small > small.txt]] hello",
    )
    .await;
    checkpointed(&env, &other, 1).await;
    let baseline = peak_rss_kib();

    // 3 GB in one file, while another thread asks something.
    let big = turn(
        &fleet,
        None,
        "@claude [[bash:head -c 3000000000 /dev/zero > big.bin && echo wrote]] make it big",
    );
    let meanwhile = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        turn(
            &fleet,
            Some(&other),
            "[[bash:echo still here]] are you there",
        )
        .await
    };
    let ((root, wrote), (_, answered)) = tokio::join!(big, meanwhile);
    assert!(wrote.message.contains("Done: wrote"), "{}", wrote.message);
    assert!(
        answered.message.contains("Done: still here"),
        "the other thread is answered: {}",
        answered.message
    );
    let grown_mib = peak_rss_kib().saturating_sub(baseline) / 1024;
    eprintln!("peak memory grew by {grown_mib} MiB during the 3 GB turn");
    assert!(
        grown_mib < 300,
        "the worker's peak memory grew by {grown_mib} MiB"
    );
    let notice = wait_for_post(
        &fleet,
        &root,
        Duration::from_secs(120),
        "the notice that the workspace is over its limit",
        |p| p.message.contains("over this session's"),
    )
    .await;
    assert!(
        notice.message.contains("2.8 GiB")
            && notice.message.contains("2.0 GiB limit")
            && notice.message.contains("turn 1 was not saved"),
        "{}",
        notice.message
    );
    // The file is named, not uploaded.
    wait_for_post(
        &fleet,
        &root,
        Duration::from_secs(10),
        "the note that big.bin was not uploaded",
        |p| p.message.contains("Not uploaded") && p.message.contains("`big.bin` (2.8 GiB)"),
    )
    .await;

    // The session stays usable: deleting the file makes it savable again.
    let (_, gone) = turn(
        &fleet,
        Some(&root),
        "[[bash:rm big.bin && echo gone]] clean up",
    )
    .await;
    assert!(gone.message.contains("Done: gone"), "{}", gone.message);
    checkpointed(&env, &root, 2).await;
    assert!(
        !bot_posts(&fleet, &root)
            .await
            .iter()
            .any(|p| p.message.contains("could not start")),
        "no failure on the way"
    );
    let grown_mib = peak_rss_kib().saturating_sub(baseline) / 1024;
    assert!(grown_mib < 300, "peak memory grew by {grown_mib} MiB");
    fleet.stop().await;
}

/// The first SHA-256 (64 hex digits) in `text`.
fn sha256_in(text: &str) -> Option<&str> {
    text.split(|c: char| !c.is_ascii_hexdigit())
        .find(|word| word.len() == 64)
}

/// Files larger than one upload part go up in parts and come back whole: 20 MB of random
/// bytes (which gzip cannot shrink) make a multipart checkpoint and a multipart artifact;
/// the next owner restores the file bit for bit, and its link serves all of it.
#[tokio::test]
async fn large_files_go_up_in_parts_and_come_back_whole() {
    let env = TestEnv::new().await;
    let _cleanup = RemoveOnDrop(std::env::temp_dir().join(format!("ccfleet-e2e-{}", env.prefix)));
    let mut fleet = fleet(&env, 1, 4, RuntimeKind::Process, "default").await;
    let (root, made) = turn(
        &fleet,
        None,
        "@claude [[bash:head -c 20000000 /dev/urandom > noise.bin && sha256sum noise.bin]] make noise",
    )
    .await;
    let sum = sha256_in(&made.message)
        .unwrap_or_else(|| panic!("a checksum: {}", made.message))
        .to_owned();
    let block = wait_for_post(
        &fleet,
        &root,
        Duration::from_secs(60),
        "the artifact block",
        |p| p.message.contains("Files from this turn"),
    )
    .await;
    let url = link(&block.message, "`noise.bin`").expect("a link to noise.bin");
    let served = reqwest::get(&url).await.unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(served.bytes().await.unwrap().len(), 20_000_000);
    checkpointed(&env, &root, 1).await;
    let stored: i64 = env
        .pool()
        .get()
        .await
        .unwrap()
        .query_one(
            "SELECT size_bytes FROM checkpoints WHERE thread_id = $1 AND turn = 1",
            &[&root],
        )
        .await
        .unwrap()
        .get(0);
    assert!(stored > 16 << 20, "more than two parts: {stored} bytes");

    take_over(&mut fleet).await;
    let (_, again) = turn(&fleet, Some(&root), "[[bash:sha256sum noise.bin]] check").await;
    assert_eq!(
        sha256_in(&again.message),
        Some(sum.as_str()),
        "restored bit for bit: {}",
        again.message
    );
    fleet.stop().await;
}
