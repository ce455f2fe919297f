use std::collections::HashMap;
use std::time::Duration;

use common::config::RuntimeKind;
use common::testsupport::TestEnv;

use super::support::{answers, eventually, fleet, link, wait_for_post, worker_metrics};

/// Containers of sessions (warm-pool containers not yet taken are left out).
async fn session_containers() -> usize {
    let docker = bollard::Docker::connect_with_local_defaults().expect("Docker is reachable");
    let filters: HashMap<String, Vec<String>> =
        HashMap::from([("label".into(), vec!["ccfleet.managed=true".into()])]);
    docker
        .list_containers(Some(bollard::query_parameters::ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .expect("list containers")
        .into_iter()
        .filter(|c| {
            !c.names
                .iter()
                .flatten()
                .any(|n| n.starts_with("/ccfleet-pool-"))
        })
        .count()
}

#[tokio::test]
async fn in_docker_a_page_is_generated_and_a_follow_up_reuses_the_same_container() {
    let env = TestEnv::new().await;
    let fleet = fleet(&env, 1, 2, RuntimeKind::Docker, "acceptEdits").await;
    // The worker's warm pool (2 by default) fills first; the new thread takes one.
    let worker::runtime::Runtime::Docker(docker) = &fleet.workers[0].runtime else {
        panic!("not the docker runtime");
    };
    eventually(Duration::from_secs(60), "the warm pool to fill", || async {
        (docker.pool_ready() == 2).then_some(())
    })
    .await;
    let before = session_containers().await;
    let root = fleet
        .demo()
        .post(
            fleet.channel_id(),
            "@claude [[write:index.html]] make a page",
            None,
        )
        .await
        .unwrap();
    let block = wait_for_post(
        &fleet,
        &root.id,
        Duration::from_secs(180),
        "the artifact block",
        |p| p.message.contains("Files from this turn"),
    )
    .await;
    let url = link(&block.message, "open page").unwrap();
    let page = reqwest::get(&url).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().to_lowercase().contains("<html"));
    let during = session_containers().await;
    assert_eq!(during, before + 1, "one container for the session");
    let metrics = worker_metrics(&fleet, 0).await;
    assert!(
        metrics.contains("ccfleet_worker_warm_pool_hits_total 1\n"),
        "{metrics}"
    );

    fleet
        .demo()
        .post(fleet.channel_id(), "thanks, and now?", Some(&root.id))
        .await
        .unwrap();
    eventually(Duration::from_secs(120), "the follow-up answer", || async {
        (answers(&fleet, &root.id).await.len() >= 2).then_some(())
    })
    .await;
    assert_eq!(
        session_containers().await,
        during,
        "the follow-up ran in the same container"
    );
    fleet.stop().await;
}
