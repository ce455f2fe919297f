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
    // The turn above went through the runtime's egress gateway, which added the API key:
    // the container has only its session token, the key reached the fake model.
    let inspected = serde_json::to_string(&info).unwrap();
    assert!(!inspected.contains("sk-ant-test-fake"), "{inspected}");
    assert!(inspected.contains("ccfleet-session-"), "{inspected}");
    assert_eq!(
        h.last_request().credential,
        loadtest::fake_model::fingerprint("sk-ant-test-fake")
    );
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
    assert_eq!(h.runtime.cleanup_orphans(None).await.unwrap(), 1);
    let gone = docker_of(&h)
        .client()
        .inspect_container(&container, None::<InspectContainerOptions>)
        .await;
    assert!(gone.is_err(), "the orphan still exists");
    assert_eq!(h.runtime.cleanup_orphans(None).await.unwrap(), 0);
    // Removing the handle afterwards is harmless.
    session.remove().await.unwrap();
}

/// Waits until the pool holds `n` ready containers.
async fn pool_filled(rt: &worker::runtime::DockerRuntime, n: usize) {
    common::testsupport::eventually(
        std::time::Duration::from_secs(60),
        "the warm pool to fill",
        || async { (rt.pool_ready() >= n).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn a_warm_container_serves_a_new_session_and_is_replaced() {
    let h = Harness::docker_with_pool(None, 1).await;
    let rt = docker_of(&h).clone();
    let stop = tokio_util::sync::CancellationToken::new();
    let pool = tokio::spawn({
        let (rt, stop) = (rt.clone(), stop.clone());
        async move { rt.run_pool(stop).await }
    });
    pool_filled(&rt, 1).await;

    // A new session in another permission mode takes the warm container.
    let mut spec = h.spec();
    spec.permission_mode = worker::agent::PermissionMode::AcceptEdits;
    let mut session = h.runtime.start(spec.clone()).await.unwrap();
    assert_eq!(rt.pool_metrics().hits.get(), 1);
    // It carries the session's name, and works: a full turn against the fake model.
    // (The handle addresses it by id: see a_stale_owner_s_handle_leaves_…)
    let container = session.files().container().unwrap().to_owned();
    let info = rt
        .client()
        .inspect_container(&container, None::<InspectContainerOptions>)
        .await
        .unwrap();
    assert_eq!(
        info.name.as_deref(),
        Some(format!("/ccfleet-{}", spec.session_id).as_str())
    );
    let labels = info.config.unwrap().labels.unwrap();
    assert_eq!(
        labels.get(worker::runtime::LABEL_POOL).map(String::as_str),
        Some("true")
    );
    session.agent_handle().send_message("hello").await.unwrap();
    let (events, result) = turn_result(session.agent()).await;
    assert!(!result.is_error, "{result:#?}");
    assert!(h.last_request().transcript().contains("hello"));
    // The CLI started in the pool's mode runs in the session's.
    let init = events
        .iter()
        .find_map(|e| match e {
            worker::agent::Event::Init(init) => Some(init),
            _ => None,
        })
        .expect("the CLI's init");
    assert_eq!(init.permission_mode, "acceptEdits");

    // The pool refills in the background.
    pool_filled(&rt, 1).await;
    // A resumed session cannot use it: a cold start, counted as a miss.
    let mut resumed = h.spec();
    resumed.resume = Some(init.session_id.clone());
    resumed.restore = Some(std::sync::Arc::new(session.checkpoint(0).await.unwrap()));
    let cold = h.runtime.start(resumed).await.unwrap();
    assert_eq!(rt.pool_metrics().hits.get(), 1);
    assert_eq!(
        rt.pool_metrics()
            .misses
            .get_or_create(&vec![("reason", "resume")])
            .get(),
        1
    );
    assert_eq!(rt.pool_ready(), 1, "a miss leaves the pool alone");
    cold.remove().await.unwrap();
    session.remove().await.unwrap();

    // Stopping the pool removes its containers.
    stop.cancel();
    pool.await.unwrap();
    assert_eq!(rt.pool_ready(), 0);
    assert_eq!(
        h.runtime.cleanup_orphans(None).await.unwrap(),
        0,
        "nothing left behind"
    );
}

#[tokio::test]
async fn an_empty_pool_falls_back_to_a_cold_start() {
    // A pool that is never filled: every start is a miss and still works.
    let h = Harness::docker_with_pool(None, 1).await;
    let rt = docker_of(&h).clone();
    let mut session = h.runtime.start(h.spec()).await.unwrap();
    session.agent_handle().send_message("hello").await.unwrap();
    let (_, result) = turn_result(session.agent()).await;
    assert!(!result.is_error, "{result:#?}");
    assert_eq!(
        rt.pool_metrics()
            .misses
            .get_or_create(&vec![("reason", "empty")])
            .get(),
        1
    );
    assert_eq!(rt.pool_metrics().hits.get(), 0);
    session.remove().await.unwrap();
}

/// An image with nothing in it, imported from an empty tar: enough for a container that is
/// created (to hold a volume) and never started.
async fn scratch_image(docker: &bollard::Docker) -> &'static str {
    use futures::TryStreamExt;
    const IMAGE: &str = "ccfleet-test-scratch";
    if docker.inspect_image(IMAGE).await.is_ok() {
        return IMAGE;
    }
    let options = bollard::query_parameters::CreateImageOptionsBuilder::default()
        .from_src("-")
        .repo(IMAGE)
        .tag("latest")
        .build();
    let empty_tar = bytes::Bytes::from(vec![0u8; 1024]);
    docker
        .create_image(Some(options), Some(bollard::body_full(empty_tar)), None)
        .try_collect::<Vec<_>>()
        .await
        .expect("importing an empty image");
    IMAGE
}

/// Docker's own archive code on both ends of a checkpoint — extracting the upload into a
/// session volume, archiving the volume for the next checkpoint — keeps symlinks (absolute,
/// and relative ones leaving the volume), hard links, empty directories and modes.
#[tokio::test]
async fn a_checkpoint_goes_through_a_docker_volume_with_its_links() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::Path;

    use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType};
    use futures::TryStreamExt;
    use worker::runtime::archive;

    let docker = bollard::Docker::connect_with_local_defaults().expect("Docker is reachable");
    let image = scratch_image(&docker).await;
    let name = format!("ccfleet-test-archive-{}", uuid::Uuid::new_v4().simple());
    docker
        .create_container(
            Some(
                bollard::query_parameters::CreateContainerOptionsBuilder::default()
                    .name(&name)
                    .build(),
            ),
            ContainerCreateBody {
                image: Some(format!("{image}:latest")),
                cmd: Some(vec!["/never-started".to_owned()]),
                host_config: Some(HostConfig {
                    mounts: Some(vec![Mount {
                        typ: Some(MountType::VOLUME),
                        source: Some(name.clone()),
                        target: Some("/session".to_owned()),
                        ..Default::default()
                    }]),
                    readonly_rootfs: Some(true),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await
        .unwrap();

    let src = tempfile::tempdir().unwrap();
    let ws = src.path().join(archive::WORKSPACE);
    std::fs::create_dir_all(ws.join(".venv/bin")).unwrap();
    std::fs::create_dir_all(ws.join("empty/inner")).unwrap();
    std::fs::create_dir_all(src.path().join(archive::CLAUDE_STATE)).unwrap();
    std::os::unix::fs::symlink("/usr/bin/python3", ws.join(".venv/bin/python")).unwrap();
    std::os::unix::fs::symlink("../../../../etc", ws.join(".venv/up")).unwrap();
    std::os::unix::fs::symlink("../claude", ws.join("state")).unwrap();
    std::fs::write(ws.join("run.sh"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(ws.join("run.sh"), std::fs::Permissions::from_mode(0o750)).unwrap();
    std::fs::hard_link(ws.join("run.sh"), ws.join("again.sh")).unwrap();
    let checkpoint = archive::checkpoint_dir(src.path()).unwrap();

    let upload =
        archive::checkpoint_to_owned_tar(&checkpoint, 1000, 1000, Path::new("/session")).unwrap();
    let options = bollard::query_parameters::UploadToContainerOptionsBuilder::default()
        .path("/session")
        .build();
    let uploaded = docker
        .upload_to_container(&name, Some(options), bollard::body_full(upload.into()))
        .await;
    let options = bollard::query_parameters::DownloadFromContainerOptionsBuilder::default()
        .path("/session")
        .build();
    let downloaded: Vec<bytes::Bytes> = docker
        .download_from_container(&name, Some(options))
        .try_collect()
        .await
        .unwrap();
    let _ = docker
        .remove_container(
            &name,
            Some(
                bollard::query_parameters::RemoveContainerOptionsBuilder::default()
                    .force(true)
                    .build(),
            ),
        )
        .await;
    let _ = docker
        .remove_volume(
            &name,
            None::<bollard::query_parameters::RemoveVolumeOptions>,
        )
        .await;
    uploaded.expect("Docker extracts the checkpoint");

    let tar = downloaded.concat();
    let again = archive::session_tar_to_checkpoint(tar.as_slice(), "session", Vec::new()).unwrap();
    let dst = tempfile::tempdir().unwrap();
    archive::restore_dir(&again, dst.path()).unwrap();
    let ws = dst.path().join(archive::WORKSPACE);
    let link = |p: &str| std::fs::read_link(ws.join(p)).unwrap();
    assert_eq!(link(".venv/bin/python"), Path::new("/usr/bin/python3"));
    // Docker refuses a relative link leaving the volume: it went in as the absolute path
    // it names.
    assert_eq!(link(".venv/up"), Path::new("/etc"));
    assert_eq!(link("state"), Path::new("../claude"));
    let a = std::fs::metadata(ws.join("run.sh")).unwrap();
    let b = std::fs::metadata(ws.join("again.sh")).unwrap();
    assert_eq!(a.ino(), b.ino(), "still one file");
    assert_eq!((a.nlink(), a.mode() & 0o777), (2, 0o750));
    assert!(ws.join("empty/inner").is_dir());
    assert_eq!(
        std::fs::read_to_string(ws.join("again.sh")).unwrap(),
        "#!/bin/sh\n"
    );
}

#[tokio::test]
async fn a_dead_worker_s_containers_are_fenced_and_cleaned_up_by_another_worker() {
    let h = Harness::docker(None).await;
    let dead_id = format!("it-dead-{}", uuid::Uuid::new_v4().simple());
    let dead = h.docker_sibling(&dead_id).await;
    let session = dead.start(h.spec()).await.unwrap();
    let id = session.id().clone();
    let container = session.files().container().unwrap().to_owned();
    // The worker dies: its handle goes, the container stays.
    drop(session);
    let exists = |name: String| {
        let docker = docker_of(&h).client().clone();
        async move {
            docker
                .inspect_container(&name, None::<InspectContainerOptions>)
                .await
                .is_ok()
        }
    };
    // Another worker of the fleet starts while the owner still beats: not its to clean up.
    let alive = std::collections::BTreeSet::from([dead_id.clone()]);
    assert_eq!(h.runtime.cleanup_orphans(Some(&alive)).await.unwrap(), 0);
    assert!(exists(container.clone()).await);
    // As the session's new owner, it fences the session: the container is gone.
    assert_eq!(h.runtime.fence(&id).await.unwrap(), 1);
    assert!(
        !exists(container).await,
        "the old owner's container still exists"
    );
    assert_eq!(h.runtime.fence(&id).await.unwrap(), 0);

    // A second session of the dead worker, never taken over: a worker of the fleet that
    // starts once the owner's heartbeat lapsed removes it.
    let left = dead.start(h.spec()).await.unwrap();
    let left_id = left.id().clone();
    let left_container = left.files().container().unwrap().to_owned();
    drop(left);
    let none_alive = std::collections::BTreeSet::new();
    assert_eq!(
        h.runtime.cleanup_orphans(Some(&none_alive)).await.unwrap(),
        1
    );
    assert!(
        !exists(left_container).await,
        "the dead worker's container still exists"
    );
    dead.remove_data(&id).await.unwrap();
    dead.remove_data(&left_id).await.unwrap();
}

/// A worker frozen past its lease (SIGSTOP, a long GC pause) still holds its session's
/// handle when it wakes; its successor has fenced the session and started a container of
/// the same name. Ending the stale handle (as a lost lease does) must leave the
/// successor's container running (found by `loadtest chaos`: the woken worker removed
/// its successor's container by name and cut its turn).
#[tokio::test]
async fn a_stale_owner_s_handle_leaves_its_successor_s_container_alone() {
    let h = Harness::docker(None).await;
    let stale_id = format!("it-stale-{}", uuid::Uuid::new_v4().simple());
    let stale = h.docker_sibling(&stale_id).await;
    let spec = h.spec();
    let old = stale.start(spec.clone()).await.unwrap();
    let id = old.id().clone();
    assert_eq!(h.runtime.fence(&id).await.unwrap(), 1);
    let mut new = h.runtime.start(spec).await.unwrap();
    let successor = new.files().container().unwrap().to_owned();
    old.kill().await.unwrap();
    let info = docker_of(&h)
        .client()
        .inspect_container(&successor, None::<InspectContainerOptions>)
        .await
        .expect("the successor's container still exists");
    assert_eq!(info.state.and_then(|s| s.running), Some(true));
    new.agent_handle().send_message("hello").await.unwrap();
    let (_, result) = turn_result(new.agent()).await;
    assert!(!result.is_error, "{result:#?}");
    new.stop().await.unwrap();
    h.runtime.remove_data(&id).await.unwrap();
}

/// A deployment only names the session network (`worker.network`): the first worker to
/// start creates it, labelled with the fleet; workers starting together leave exactly one.
#[tokio::test]
async fn a_missing_session_network_is_created_once_even_by_workers_starting_together() {
    use std::collections::HashMap;

    let h = Harness::docker(None).await;
    let name = format!("ccfleet-it-net-{}", uuid::Uuid::new_v4().simple());
    let mut options = h.docker_options.clone().expect("a docker harness");
    options.network = name.clone();
    let (a, b, c) = tokio::join!(
        worker::runtime::DockerRuntime::connect(options.clone()),
        worker::runtime::DockerRuntime::connect(options.clone()),
        worker::runtime::DockerRuntime::connect(options.clone()),
    );
    a.unwrap();
    b.unwrap();
    c.unwrap();
    let docker = docker_of(&h).client().clone();
    let named = || {
        let docker = docker.clone();
        let name = name.clone();
        async move {
            let filters = HashMap::from([("name".to_owned(), vec![name.clone()])]);
            let options = bollard::query_parameters::ListNetworksOptionsBuilder::default()
                .filters(&filters)
                .build();
            docker
                .list_networks(Some(options))
                .await
                .unwrap()
                .into_iter()
                .filter(|n| n.name.as_deref() == Some(name.as_str()))
                .collect::<Vec<_>>()
        }
    };
    let networks = named().await;
    assert_eq!(networks.len(), 1, "{networks:#?}");
    let labels = networks[0].labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get(worker::runtime::LABEL_FLEET),
        Some(&options.fleet),
        "labelled with the fleet"
    );
    // A later start uses it as it is.
    worker::runtime::DockerRuntime::connect(options.clone())
        .await
        .unwrap();
    assert_eq!(named().await.len(), 1);
    docker.remove_network(&name).await.unwrap();
}
