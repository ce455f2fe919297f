//! `loadtest mmsim` as a process: a user created through the API posts in a channel and
//! receives its own `posted` event.

use std::process::Stdio;

use loadtest::mmsim::client::{Client, EventKind, SimControl};
use loadtest::mmsim::spec_path;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use super::{WAIT, spec_available};

#[tokio::test]
async fn standalone_simulator_delivers_own_posted_event() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_loadtest"));
    cmd.args(["mmsim", "--listen", "127.0.0.1:0"]);
    let checked = spec_available();
    if checked {
        cmd.arg("--contract-spec").arg(spec_path());
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn loadtest mmsim");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let base = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            if let Some(url) = line.strip_prefix("mmsim listening on ") {
                return url.to_owned();
            }
        }
        panic!("mmsim exited before listening");
    })
    .await
    .expect("mmsim starts in time");

    let anon = Client::new(&base);
    anon.sign_up("solo", "solo@example.com", "pw-12345")
        .await
        .expect("sign up");
    let me = anon.login("solo", "pw-12345").await.expect("login");
    let team = me.create_team("solo", "Solo").await.expect("team");
    let channel = me
        .create_channel(&team.id, "general", "General", false)
        .await
        .expect("channel");
    let mut ws = me.websocket().await.expect("websocket");
    let post = me
        .post(&channel.id, "hello myself", None)
        .await
        .expect("post");
    let ev = ws
        .wait_for(WAIT, |e| e.kind() == EventKind::Posted)
        .await
        .expect("own posted event");
    assert_eq!(ev.post().map(|p| p.id), Some(post.id));
    assert_eq!(ev.broadcast.channel_id, channel.id);
    if checked {
        let report = SimControl::new(&base).contract().await.expect("report");
        assert!(report.violations.is_empty(), "{:#?}", report.violations);
    }

    let pid = child.id().expect("pid").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("exits in time")
        .expect("wait");
    assert!(status.success(), "graceful exit on SIGTERM: {status}");
}
