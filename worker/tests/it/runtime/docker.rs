//! Docker-only properties: the container's hardening and orphan cleanup.

use bollard::query_parameters::InspectContainerOptions;
use worker::runtime::{LABEL_SESSION, LABEL_WORKER, Runtime};

use super::harness::{Harness, turn_result};

fn docker_of(h: &Harness) -> &worker::runtime::DockerRuntime {
    match &h.runtime {
        Runtime::Docker(rt) => rt,
        other => panic!("not docker: {other:?}"),
    }
}

#[tokio::test]
async fn session_container_is_hardened() {
    let h = Harness::docker(None).await;
    let spec = h.spec();
    let mut session = h.runtime.start(spec.clone()).await.unwrap();
    // It works on the configured network: a full turn against the fake model.
    session.agent_handle().send_message("hello").await.unwrap();
    let (_, result) = turn_result(session.agent()).await;
    assert!(!result.is_error, "{result:#?}");

    let container = session.files().container().unwrap().to_owned();
    let info = docker_of(&h)
        .client()
        .inspect_container(&container, None::<InspectContainerOptions>)
        .await
        .unwrap();
    // The API key reached the CLI (the turn above succeeded) but not the container's
    // configuration.
    let inspected = serde_json::to_string(&info).unwrap();
    assert!(!inspected.contains("sk-ant-test-fake"), "{inspected}");
    let config = info.config.unwrap();
    let host = info.host_config.unwrap();
    assert_eq!(config.user.as_deref(), Some("1000:1000"));
    assert_eq!(host.cap_drop, Some(vec!["ALL".to_owned()]));
    assert!(host.cap_add.unwrap_or_default().is_empty());
    assert_eq!(host.privileged, Some(false));
    assert!(
        host.security_opt
            .unwrap_or_default()
            .iter()
            .any(|o| o.starts_with("no-new-privileges")),
    );
    assert_eq!(host.readonly_rootfs, Some(true));
    let tmpfs = host.tmpfs.unwrap_or_default();
    assert!(tmpfs.contains_key("/tmp"), "{tmpfs:?}");
    assert_eq!(host.memory, Some(1024 * 1024 * 1024));
    assert_eq!(host.memory_swap, Some(1024 * 1024 * 1024));
    assert_eq!(host.nano_cpus, Some(1_000_000_000));
    assert_eq!(host.pids_limit, Some(256));
    assert_eq!(host.network_mode.as_deref(), Some("bridge"));
    let mounts = info.mounts.unwrap_or_default();
    assert!(
        mounts
            .iter()
            .any(|m| m.destination.as_deref() == Some("/session")
                && m.name.as_deref() == Some(&format!("ccfleet-{}", spec.session_id))),
        "{mounts:?}"
    );
    assert!(
        !mounts
            .iter()
            .any(|m| m.source.as_deref() == Some("/var/run/docker.sock"))
    );
    let labels = config.labels.unwrap_or_default();
    assert_eq!(
        labels.get(LABEL_SESSION).map(String::as_str),
        Some(spec.session_id.as_str())
    );
    assert!(
        labels
            .get(LABEL_WORKER)
            .is_some_and(|w| w.starts_with("it-"))
    );
    session.remove().await.unwrap();
}

#[tokio::test]
async fn orphans_are_removed_by_label() {
    let h = Harness::docker(None).await;
    let session = h.runtime.start(h.spec()).await.unwrap();
    let container = session.files().container().unwrap().to_owned();
    // As if the worker had died: a fresh start of the same worker cleans up.
    assert_eq!(h.runtime.cleanup_orphans().await.unwrap(), 1);
    let gone = docker_of(&h)
        .client()
        .inspect_container(&container, None::<InspectContainerOptions>)
        .await;
    assert!(gone.is_err(), "the orphan still exists");
    assert_eq!(h.runtime.cleanup_orphans().await.unwrap(), 0);
    // Removing the handle afterwards is harmless.
    session.remove().await.unwrap();
}
