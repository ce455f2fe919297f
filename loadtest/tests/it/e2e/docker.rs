use std::collections::HashMap;
use std::time::Duration;

use common::config::RuntimeKind;
use common::testsupport::TestEnv;

use super::support::{answers, eventually, fleet, link, wait_for_post};

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
        .len()
}

#[tokio::test]
async fn in_docker_a_page_is_generated_and_a_follow_up_reuses_the_same_container() {
    let env = TestEnv::new().await;
    let fleet = fleet(&env, 1, 2, RuntimeKind::Docker, "acceptEdits").await;
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
