//! Pod addresses against the real kernel: the bridge, a veth per sandbox,
//! addresses from the pod CIDR, pod-to-pod traffic through the host, and
//! teardown. The whole test runs in a network namespace of its own (the test
//! thread unshares before the runtime starts, so every thread the runtime
//! makes inherits it): nothing touches the machine's own network.
//! Needs root (CI runs as root; locally this skips loudly).

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1 as cri;
use kedge_agent::cache::Cache;
use kedge_agent::net::NodeNetwork;
use kedge_agent::net::netlink::Netlink;
use kedge_agent::net::pod::{PodNet, host_veth};
use kedge_agent::runtime::{ContainerState, Options, Runtime};

const BUSYBOX: &str = "kedge.local/busybox:latest";

fn sandbox_config(name: &str, log_dir: &Path) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_dir.display().to_string(),
        labels: HashMap::from([("app".to_string(), name.to_string())]),
        ..Default::default()
    }
}

fn container(name: &str, command: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: name.into(), attempt: 0 }),
        image: Some(cri::ImageSpec { image: BUSYBOX.into(), ..Default::default() }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}/0.log"),
        ..Default::default()
    }
}

async fn run_pod(rt: &Runtime, name: &str, log_dir: &Path, command: &[&str]) -> (String, String, IpAddr) {
    let sb_config = sandbox_config(name, log_dir);
    let sb = rt.run_pod_sandbox(sb_config.clone(), String::new()).await.expect("sandbox");
    let id = rt.create_container(&sb, container(name, command), Some(&sb_config)).await.expect("create");
    rt.start_container(&id).await.expect("start");
    for _ in 0..200 {
        if rt.container_status(&id).expect("status").state == ContainerState::Running.cri() as i32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let status = rt.pod_sandbox_status(&sb).expect("sandbox status");
    let ip = status.network.expect("network status").ip.parse().expect("the sandbox reports an address");
    (sb, id, ip)
}

async fn exec(rt: &Runtime, id: &str, cmd: &[&str]) -> (i32, String) {
    let out = rt
        .exec_sync(id, cmd.iter().map(|s| s.to_string()).collect(), Some(Duration::from_secs(10)))
        .await
        .expect("exec");
    (out.exit_code, String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

#[test]
fn sandboxes_get_addresses_talk_through_the_host_and_give_them_back() {
    if kedge_tests::under_qemu_user("containers (qemu-user cannot create them)")
        || !kedge_tests::require(kedge_tests::is_root(), "root (namespaces, veths, a bridge)")
    {
        return;
    }
    // A network namespace of our own for this thread and every thread it starts.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare the test's network namespace");
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio").block_on(body());
}

async fn body() {
    let _ = tracing_subscriber::fmt().with_env_filter("warn,libcontainer::seccomp=error,libcgroups=error").try_init();
    let tmp = tempfile::tempdir().expect("tmp");
    let mut opts = Options::new(tmp.path().join("data"));
    opts.helper = kedge_tests::binary("kedge-agent").expect("kedge-agent builds");
    let rt = Runtime::open(opts).expect("runtime");
    let _unmount = scopeguard(rt.paths().ns());
    rt.images().import(&kedge_tests::busybox_image().expect("busybox image")).expect("import");

    let cache = Arc::new(Cache::open(&tmp.path().join("agent.redb")).expect("cache"));
    let net = Arc::new(PodNet::new(cache.clone()));
    let node = NodeNetwork {
        node: "n1".into(),
        node_ips: vec![],
        pod_cidr: "10.77.3.0/24".parse().expect("cidr"),
        cluster_cidr: "10.77.0.0/16".parse().expect("cidr"),
        bridge: "kedge0".into(),
        gateway: "10.77.3.1".parse().expect("ip"),
        overlay_headroom: false,
    };
    net.configure(node.clone()).expect("bridge comes up");
    rt.set_network(net.clone()).await.expect("network set");

    let logs = tmp.path().join("logs");
    let (web_sb, web, web_ip) = run_pod(
        &rt,
        "web",
        &logs,
        &["sh", "-c", "echo hello-from-web > /tmp/index.html; exec httpd -f -p 8080 -h /tmp"],
    )
    .await;
    let (client_sb, client, client_ip) = run_pod(&rt, "client", &logs, &["sleep", "3600"]).await;
    assert!(node.pod_cidr.contains(&web_ip) && node.pod_cidr.contains(&client_ip), "{web_ip} {client_ip}");
    assert_ne!(web_ip, client_ip);
    assert_ne!(web_ip, node.gateway);

    // Inside the pod: eth0 with its address, the default route via the gateway.
    let (code, out) = exec(&rt, &client, &["ip", "addr", "show", "eth0"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("{client_ip}/32")), "{out}");
    let (_, routes) = exec(&rt, &client, &["ip", "route"]).await;
    assert!(routes.contains("default via 10.77.3.1"), "{routes}");

    // Pod to pod on one node, through the host.
    let url = format!("http://{web_ip}:8080/index.html");
    let mut answer = String::new();
    for _ in 0..50 {
        // (Debian's busybox 1.35 wget crashes with -T: `timeout` bounds it.)
        let (code, out) = exec(&rt, &client, &["timeout", "5", "wget", "-qO-", &url]).await;
        answer = out;
        if code == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answer.contains("hello-from-web"), "client → web: {answer}");

    // The host end sits on the bridge.
    let mut nl = Netlink::open().expect("netlink");
    let bridge = nl.link("kedge0").expect("links").expect("bridge exists");
    let veth = nl.link(&host_veth(&web_sb)).expect("links").expect("the web pod's veth exists");
    assert_eq!(veth.master, Some(bridge.index));

    // Stopping a sandbox gives its address and its veth back.
    rt.stop_pod_sandbox(&web_sb).await.expect("stop");
    assert!(nl.link(&host_veth(&web_sb)).expect("links").is_none(), "veth removed");
    let held: BTreeSet<IpAddr> =
        kedge_agent::net::ipam::in_use(&cache).expect("ipam").into_iter().map(|(ip, _)| ip).collect();
    assert_eq!(held, BTreeSet::from([client_ip]));

    // Another pod afterwards gets a distinct address, not the one just freed.
    let (_, _, next_ip) = run_pod(&rt, "next", &logs, &["sleep", "3600"]).await;
    assert!(next_ip != client_ip && next_ip != web_ip, "{next_ip}");

    for sb in rt.list_pod_sandbox(None) {
        rt.remove_pod_sandbox(&sb.id).await.expect("remove");
    }
    let _ = client_sb;
    let _ = web;
    assert!(kedge_agent::net::ipam::in_use(&cache).expect("ipam").is_empty(), "every address released");
}

/// Unmounts the runtime's private `DATA/ns` mount when the test ends.
fn scopeguard(path: std::path::PathBuf) -> impl Drop {
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    Unmount(path)
}
