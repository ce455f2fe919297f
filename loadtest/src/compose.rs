//! The compose deployment (`deploy/compose/`) driven from Rust: build the images offline,
//! bring a fleet up with the simulator and the fake model as extra services, scale it,
//! stop its containers, tear it down. Used by the compose end-to-end test and meant for
//! the chaos suite.
//!
//! Each [`ComposeFleet`] is its own compose project with its own session network and NATS
//! prefix, so it never touches another fleet's containers, and [`ComposeFleet::down`]
//! removes everything it made (the session containers and volumes the workers started
//! included, found by their fleet label).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

/// The repository's root (this crate is one level below it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("loadtest is inside the workspace")
        .to_path_buf()
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not run {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("could not write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Unexpected(String),
}

/// Runs a command to completion; its stdout, or an error with its stderr.
pub async fn run(mut command: Command) -> Result<String, Error> {
    let text = format!("{:?}", command.as_std());
    let output = command
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| Error::Spawn {
            program: text.clone(),
            source,
        })?;
    if !output.status.success() {
        return Err(Error::Failed {
            command: text,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Builds the images a compose fleet needs offline: the product, loadtest (simulator and
/// fake model) and the stand-ins for the backing services (`deploy/images/build`, with the
/// debug binaries unless `release`), and the runner image (`deploy/runner/build`).
pub async fn build_images(release: bool) -> Result<(), Error> {
    let root = repo_root();
    let mut images = Command::new(root.join("deploy/images/build"));
    images.args([
        "--profile",
        if release { "release" } else { "debug" },
        "all",
    ]);
    run(images).await?;
    run(Command::new(root.join("deploy/runner/build"))).await?;
    Ok(())
}

/// `docker compose` when the plugin is there, else the standalone `docker-compose`.
async fn compose_program() -> Vec<String> {
    let plugin = Command::new("docker")
        .args(["compose", "version"])
        .output()
        .await
        .is_ok_and(|o| o.status.success());
    if plugin {
        vec!["docker".into(), "compose".into()]
    } else {
        vec!["docker-compose".into()]
    }
}

/// One compose project: `compose.yaml` + `compose.offline.yaml`, with its env file.
pub struct ComposeFleet {
    pub project: String,
    program: Vec<String>,
    files: Vec<PathBuf>,
    env_file: PathBuf,
    /// The settings written to the env file.
    pub env: BTreeMap<String, String>,
    _dir: tempfile::TempDir,
}

impl ComposeFleet {
    /// A project named `project` with these env settings (see deploy/compose/env.example);
    /// nothing runs yet.
    pub async fn new(project: &str, env: BTreeMap<String, String>) -> Result<Self, Error> {
        let dir = tempfile::tempdir().map_err(|source| Error::Write {
            path: std::env::temp_dir(),
            source,
        })?;
        let compose = repo_root().join("deploy/compose");
        let fleet = Self {
            project: project.to_owned(),
            program: compose_program().await,
            files: vec![
                compose.join("compose.yaml"),
                compose.join("compose.offline.yaml"),
            ],
            env_file: dir.path().join("fleet.env"),
            env,
            _dir: dir,
        };
        fleet.write_env()?;
        Ok(fleet)
    }

    fn write_env(&self) -> Result<(), Error> {
        let text: String = self.env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        std::fs::write(&self.env_file, text).map_err(|source| Error::Write {
            path: self.env_file.clone(),
            source,
        })
    }

    /// Changes one setting; it applies to containers created from now on.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), Error> {
        self.env.insert(key.to_owned(), value.to_owned());
        self.write_env()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.program[0]);
        command.args(&self.program[1..]);
        // Profiles are read from the environment (docker-compose 1.x does not read them
        // from the env file).
        if let Some(profiles) = self.env.get("COMPOSE_PROFILES") {
            command.env("COMPOSE_PROFILES", profiles);
        }
        command.args(["-p", &self.project, "--env-file"]);
        command.arg(&self.env_file);
        for file in &self.files {
            command.arg("-f").arg(file);
        }
        command.args(args);
        command
    }

    /// Runs `compose ARGS…` for this project.
    pub async fn compose(&self, args: &[&str]) -> Result<String, Error> {
        run(self.command(args)).await
    }

    /// `up -d` for these services, with `worker` scaled to `workers` when given.
    pub async fn up(&self, services: &[&str], workers: Option<usize>) -> Result<(), Error> {
        let scale = workers.map(|n| format!("worker={n}"));
        let mut args = vec!["up", "-d", "--no-recreate"];
        if let Some(scale) = &scale {
            args.extend(["--scale", scale]);
        }
        args.extend(services);
        self.compose(&args).await.map(drop)
    }

    /// The host address a service's container port is published on.
    pub async fn port(&self, service: &str, port: u16) -> Result<SocketAddr, Error> {
        let out = self.compose(&["port", service, &port.to_string()]).await?;
        out.trim()
            .parse()
            .map_err(|_| Error::Unexpected(format!("`port {service} {port}` printed {out:?}")))
    }

    /// The ids of a service's running containers.
    pub async fn containers(&self, service: &str) -> Result<Vec<String>, Error> {
        let out = self.compose(&["ps", "-q", service]).await?;
        Ok(out
            .lines()
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty())
            .collect())
    }

    /// `docker ARGS…` (for one container: stop, kill, pause, rm, …).
    pub async fn docker(&self, args: &[&str]) -> Result<String, Error> {
        let mut command = Command::new("docker");
        command.args(args);
        run(command).await
    }

    /// Waits until the container's health check passes (the images probe `/readyz`).
    pub async fn wait_healthy(&self, container: &str, within: Duration) -> Result<(), Error> {
        let healthy = wait_for(within, || async {
            let status = self
                .docker(&["inspect", "-f", "{{.State.Health.Status}}", container])
                .await
                .ok()?;
            (status.trim() == "healthy").then_some(())
        })
        .await;
        healthy.ok_or_else(|| {
            Error::Unexpected(format!(
                "container {container} not healthy within {within:?}"
            ))
        })
    }

    /// The last lines of every container's logs, for a failing test's message.
    pub async fn logs(&self, tail: usize) -> String {
        self.compose(&["logs", "--no-color", "--tail", &tail.to_string()])
            .await
            .unwrap_or_else(|e| e.to_string())
    }

    /// Removes the project (containers, its volumes and networks), then the session
    /// containers and volumes its workers started and the session network.
    pub async fn down(&self) {
        let _ = self
            .compose(&["down", "-v", "--remove-orphans", "--timeout", "5"])
            .await;
        let fleet = self.env.get("NATS_PREFIX").cloned().unwrap_or_default();
        if !fleet.is_empty() {
            let label = format!("label=ccfleet.fleet={fleet}");
            if let Ok(ids) = self.docker(&["ps", "-aq", "--filter", &label]).await {
                let ids: Vec<&str> = ids.split_whitespace().collect();
                if !ids.is_empty() {
                    let mut args = vec!["rm", "-f", "-v"];
                    args.extend(ids);
                    let _ = self.docker(&args).await;
                }
            }
            if let Ok(ids) = self
                .docker(&["volume", "ls", "-q", "--filter", &label])
                .await
            {
                for id in ids.split_whitespace() {
                    let _ = self.docker(&["volume", "rm", "-f", id]).await;
                }
            }
        }
        // Whatever `down` left of the project (it stops at the first error).
        let project = format!("label=com.docker.compose.project={}", self.project);
        let kinds: [(&[&str], &[&str]); 3] = [
            (&["ps", "-aq", "--filter"], &["rm", "-f", "-v"]),
            (&["volume", "ls", "-q", "--filter"], &["volume", "rm", "-f"]),
            (&["network", "ls", "-q", "--filter"], &["network", "rm"]),
        ];
        for (list, remove) in kinds {
            let mut args = list.to_vec();
            args.push(&project);
            if let Ok(ids) = self.docker(&args).await {
                for id in ids.split_whitespace() {
                    let mut args = remove.to_vec();
                    args.push(id);
                    let _ = self.docker(&args).await;
                }
            }
        }
        if let Some(network) = self.env.get("SESSION_NETWORK") {
            let _ = self.docker(&["network", "rm", network]).await;
        }
    }
}

/// Waits for `probe` to give a value, polling every 200 ms, for at most `within`.
pub async fn wait_for<T, F, Fut>(within: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = probe().await {
            return Some(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
