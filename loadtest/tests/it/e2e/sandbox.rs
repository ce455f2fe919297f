//! The docker runtime's sandbox, through the real path: the real CLI in the runner image,
//! its Bash tool driven by the fake model's `[[bash:CMD]]`. From inside a session: no
//! model credential anywhere the agent can read, no route out but the worker's egress
//! gateway, which refuses hosts not allowed (with a body naming them) and forwards the
//! allowed one; the model requests reach the fake model with the real key.
//!
//! Every probe targets listeners of this test's own, on this machine.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use base64::Engine;
use common::config::RuntimeKind;
use common::testsupport::TestEnv;

use super::support::{Probe, REPLY, answers, eventually, fleet_with};

const REAL_KEY: &str = "sk-ant-test-fake";

/// A container of the test's own on a Docker network of its own, listening on 9418 (git
/// daemon from the runner image); removed on drop.
struct OtherNetwork {
    docker: bollard::Docker,
    name: String,
    ip: IpAddr,
}

impl OtherNetwork {
    async fn start(image: &str) -> Self {
        let docker = bollard::Docker::connect_with_local_defaults().unwrap();
        let name = format!("ccfleet-it-other-{}", uuid::Uuid::new_v4().simple());
        docker
            .create_network(bollard::models::NetworkCreateRequest {
                name: name.clone(),
                driver: Some("bridge".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        let options = bollard::query_parameters::CreateContainerOptionsBuilder::default()
            .name(&name)
            .build();
        docker
            .create_container(
                Some(options),
                bollard::models::ContainerCreateBody {
                    image: Some(image.to_owned()),
                    entrypoint: Some(vec!["/usr/lib/git-core/git-daemon".into()]),
                    cmd: Some(
                        [
                            "--reuseaddr",
                            "--listen=0.0.0.0",
                            "--port=9418",
                            "--base-path=/tmp",
                            "--export-all",
                            "/tmp",
                        ]
                        .map(String::from)
                        .to_vec(),
                    ),
                    host_config: Some(bollard::models::HostConfig {
                        network_mode: Some(name.clone()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        docker.start_container(&name, None).await.unwrap();
        let info = docker.inspect_container(&name, None).await.unwrap();
        let ip = info
            .network_settings
            .and_then(|s| s.networks)
            .and_then(|mut n| n.remove(&name))
            .and_then(|n| n.ip_address)
            .and_then(|ip| ip.parse().ok())
            .expect("the other container's address");
        Self { docker, name, ip }
    }
}

impl Drop for OtherNetwork {
    fn drop(&mut self) {
        let (docker, name) = (self.docker.clone(), self.name.clone());
        // Removed from a thread of its own: drop may run outside the runtime's reach.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let options = bollard::query_parameters::RemoveContainerOptionsBuilder::default()
                    .force(true)
                    .build();
                let _ = docker.remove_container(&name, Some(options)).await;
                let _ = docker.remove_network(&name).await;
            });
        })
        .join()
        .unwrap();
    }
}

/// The probe script the agent runs; sections start with `==name`.
fn script(allowed: SocketAddr, refused: SocketAddr, other: IpAddr) -> String {
    let (a, r) = (allowed.port(), refused.port());
    format!(
        r#"p=${{HTTP_PROXY#http://}}; gw=${{p#*@}}; gh=${{gw%:*}}; gp=${{gw##*:}}
c=$(printf %s "${{p%@*}}" | base64 -w0)
headers() {{ while read -r l <&3; do l=${{l%$'\r'}}; [ -z "$l" ] && break; echo "$l"; done; }}
echo ==env; env
echo ==environ; cat /proc/[0-9]*/environ 2>/dev/null | tr '\0' '\n' | sort -u
echo ==route; cat /proc/net/route
echo ==ifaces; ls /sys/class/net
echo ==plain-refused
exec 3<>/dev/tcp/$gh/$gp; printf 'GET http://127.0.0.1:{r}/x HTTP/1.1\r\nHost: 127.0.0.1:{r}\r\nProxy-Authorization: Basic %s\r\nConnection: close\r\n\r\n' "$c" >&3; timeout 5 cat <&3; exec 3<&-
echo; echo ==connect-refused
exec 3<>/dev/tcp/$gh/$gp; printf 'CONNECT 127.0.0.1:{r} HTTP/1.1\r\nHost: 127.0.0.1:{r}\r\nProxy-Authorization: Basic %s\r\n\r\n' "$c" >&3; timeout 5 cat <&3; exec 3<&-
echo; echo ==git-http-refused; timeout 20 git ls-remote http://127.0.0.1:{r}/r.git 2>&1
echo ==git-https-refused; timeout 20 git ls-remote https://127.0.0.1:{r}/r.git 2>&1
echo ==bad-token
exec 3<>/dev/tcp/$gh/$gp; printf 'GET http://127.0.0.2:{a}/bad-token HTTP/1.1\r\nHost: 127.0.0.2:{a}\r\nProxy-Authorization: Basic %s\r\nConnection: close\r\n\r\n' "$(printf session:forged | base64 -w0)" >&3; timeout 5 cat <&3; exec 3<&-
echo; echo ==allowed-plain; timeout 20 git ls-remote http://127.0.0.2:{a}/allowed-plain.git 2>&1
echo ==allowed-tunnel
exec 3<>/dev/tcp/$gh/$gp; printf 'CONNECT 127.0.0.2:{a} HTTP/1.1\r\nHost: 127.0.0.2:{a}\r\nProxy-Authorization: Basic %s\r\n\r\n' "$c" >&3; headers; printf 'GET /allowed-tunnel HTTP/1.0\r\nHost: 127.0.0.2\r\n\r\n' >&3; timeout 5 cat <&3; exec 3<&-
echo; echo ==direct-loopback; timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/{a}' 2>&1; echo rc=$?
echo ==direct-host; timeout 5 bash -c "exec 3<>/dev/tcp/$gh/{a}" 2>&1; echo rc=$?
echo ==direct-other-network; timeout 5 bash -c 'exec 3<>/dev/tcp/{other}/9418' 2>&1; echo rc=$?
echo ==end
"#
    )
}

/// The text between `==name` and the next section.
fn section<'a>(output: &'a str, name: &str) -> &'a str {
    let marker = format!("=={name}\n");
    let start = output
        .find(&marker)
        .unwrap_or_else(|| panic!("no section {name} in {output}"))
        + marker.len();
    let end = output[start..]
        .find("\n==")
        .map_or(output.len(), |e| start + e);
    &output[start..end]
}

#[tokio::test]
async fn a_session_reaches_out_only_through_its_gateway_and_never_holds_the_model_key() {
    let env = TestEnv::new().await;
    // The allowed host is another loopback address than the refused one, so no client's
    // own rules for `localhost` blur the picture.
    let allowed = Probe::start(IpAddr::from([127, 0, 0, 2])).await;
    let refused = Probe::start(IpAddr::from([127, 0, 0, 1])).await;
    let image =
        std::env::var("CCFLEET_RUNNER_IMAGE").unwrap_or_else(|_| "ccfleet-runner:latest".into());
    let other = OtherNetwork::start(&image).await;
    // The other network's listener is live: the host reaches it.
    eventually(
        Duration::from_secs(20),
        "the other network's listener",
        || async { tokio::net::TcpStream::connect((other.ip, 9418)).await.ok() },
    )
    .await;
    let allow = format!("127.0.0.2:{}", allowed.addr.port());
    let fleet = fleet_with(
        &env,
        1,
        2,
        RuntimeKind::Docker,
        "bypassPermissions",
        |config| config.egress.allowed_hosts = vec![allow],
    )
    .await;

    let probe = script(allowed.addr, refused.addr, other.ip);
    let encoded = base64::engine::general_purpose::STANDARD.encode(probe);
    let root = fleet
        .demo()
        .post(
            fleet.channel_id(),
            &format!("@claude [[bash:echo {encoded} | base64 -d | bash]] probe"),
            None,
        )
        .await
        .unwrap();
    eventually(Duration::from_secs(240), "the probe's answer", || async {
        (!answers(&fleet, &root.id).await.is_empty()).then_some(())
    })
    .await;
    let output = fleet
        .model
        .message_requests()
        .iter()
        .map(|r| r.transcript())
        .find(|t| t.contains("==end"))
        .expect("the probe's output reached the model");

    // No model credential inside: the CLI's environment holds only its session token.
    let env_section = section(&output, "env");
    assert!(
        env_section.contains("HTTP_PROXY=http://session:ccfleet-session-"),
        "{env_section}"
    );
    let environ = section(&output, "environ");
    assert!(
        environ.contains("ANTHROPIC_API_KEY=ccfleet-session-"),
        "the CLI's own environment was read: {environ}"
    );
    for (what, text) in [("env", env_section), ("environ", environ)] {
        assert!(!text.contains(REAL_KEY), "the real key in {what}: {text}");
        assert!(
            !text.contains("sk-ant-"),
            "a model credential in {what}: {text}"
        );
    }
    let gateway = environ
        .lines()
        .find_map(|l| l.strip_prefix("ANTHROPIC_BASE_URL=http://"))
        .expect("ANTHROPIC_BASE_URL")
        .to_owned();
    assert!(
        env_section.contains(&format!("@{gateway}")),
        "HTTP(S)_PROXY is the gateway: {env_section}"
    );

    // One interface besides loopback, every route on it, every gateway on the session
    // network (the bridge's own address): nothing routes past the session network.
    let ifaces: Vec<&str> = section(&output, "ifaces").split_whitespace().collect();
    assert_eq!(ifaces, ["eth0", "lo"], "{ifaces:?}");
    let gateway_ip: std::net::Ipv4Addr = gateway.split(':').next().unwrap().parse().unwrap();
    let gateway_hex = format!("{:08X}", u32::from_le_bytes(gateway_ip.octets()));
    for line in section(&output, "route").lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields[0], "eth0", "{line}");
        assert!(
            fields[2] == "00000000" || fields[2] == gateway_hex,
            "a route via {} (the session network's gateway is {gateway_hex}): {line}",
            fields[2]
        );
    }

    // Not allowed: refused, saying why, plain and CONNECT; git (libcurl, reading
    // http(s)_proxy) sees the 403 too. The refused listener saw nothing.
    let r = refused.addr.port();
    let plain = section(&output, "plain-refused");
    assert!(plain.starts_with("HTTP/1.1 403"), "{plain}");
    assert!(
        plain.contains(&format!(
            "request refused: 127.0.0.1:{r} is not on this session's allow-list"
        )),
        "{plain}"
    );
    let tunnel = section(&output, "connect-refused");
    assert!(tunnel.starts_with("HTTP/1.1 403"), "{tunnel}");
    assert!(
        tunnel.contains(&format!(
            "CONNECT refused: 127.0.0.1:{r} is not on this session's allow-list"
        )),
        "{tunnel}"
    );
    for name in ["git-http-refused", "git-https-refused"] {
        let git = section(&output, name);
        assert!(git.contains("403"), "{name}: {git}");
    }
    assert!(refused.seen().is_empty(), "{:?}", refused.seen());
    let forged = section(&output, "bad-token");
    assert!(forged.starts_with("HTTP/1.1 407"), "{forged}");

    // Allowed: forwarded, plain and tunnelled.
    let seen = allowed.seen();
    assert!(
        seen.iter()
            .any(|s| s.starts_with("GET /allowed-plain.git/info/refs")),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|s| s.starts_with("GET /allowed-tunnel ")),
        "{seen:?}"
    );
    assert!(!seen.iter().any(|s| s.contains("bad-token")), "{seen:?}");
    assert!(
        !seen
            .iter()
            .any(|s| s.to_ascii_lowercase().contains("proxy-authorization")),
        "the session's token is not passed on: {seen:?}"
    );
    let through = section(&output, "allowed-tunnel");
    assert!(through.contains(REPLY), "{through}");

    // Directly: nothing. Not the host's loopback (the container's own), not the host on
    // the gateway's address (the listener is on loopback), not another Docker network.
    for name in ["direct-loopback", "direct-host", "direct-other-network"] {
        let direct = section(&output, name);
        assert!(
            direct
                .trim_end()
                .lines()
                .last()
                .is_some_and(|l| l != "rc=0"),
            "{name}: {direct}"
        );
    }

    // The model requests went through the gateway and reached the fake model with the
    // real key; the real key is nowhere in the container's configuration.
    let requests = fleet.model.message_requests();
    assert!(!requests.is_empty());
    let real = loadtest::fake_model::fingerprint(REAL_KEY);
    for request in &requests {
        assert_eq!(request.credential, real, "{:?}", request.headers);
    }
    let docker = bollard::Docker::connect_with_local_defaults().unwrap();
    let filters = std::collections::HashMap::from([(
        "label".to_owned(),
        vec![format!("ccfleet.worker={}", fleet.workers[0].id)],
    )]);
    let containers = docker
        .list_containers(Some(
            bollard::query_parameters::ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .unwrap();
    assert!(!containers.is_empty());
    for container in containers {
        let info = docker
            .inspect_container(container.id.as_deref().unwrap(), None)
            .await
            .unwrap();
        let inspected = serde_json::to_string(&info).unwrap();
        assert!(!inspected.contains(REAL_KEY), "{inspected}");
        assert!(inspected.contains("ccfleet-session-"), "{inspected}");
        let host = info.host_config.unwrap();
        assert_eq!(
            host.network_mode.as_deref(),
            Some(loadtest::fleet::SESSION_NETWORK)
        );
    }
    let network = docker
        .inspect_network(
            loadtest::fleet::SESSION_NETWORK,
            None::<bollard::query_parameters::InspectNetworkOptions>,
        )
        .await
        .unwrap();
    assert_eq!(network.internal, Some(true));
    fleet.stop().await;
}
