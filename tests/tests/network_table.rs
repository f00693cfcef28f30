//! End to end: the controller publishes the cluster network table
//! (design.md §3, §6) retained on `kedge/v1/cluster/network`, read with
//! `mosquitto_sub` (Debian's mosquitto-clients, not our code) and decoded
//! with `kedge_common::envelope`. No agents: the pod status an agent would
//! report is written through the API. Needs kubectl and mosquitto_sub;
//! skips loudly without them (a failure under CI=true).

use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use kedge_common::envelope;
use kedge_common::network::{ClusterNetwork, Protocol, ServiceKind};
use kedge_tests::{Controller, Kubectl, controller_and_kubectl, jiff_now, require, wait_for};

fn has(bin: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {bin}")]).output().is_ok_and(|o| o.status.success())
}

/// The retained table as a fresh subscriber receives it, if there is one.
fn retained(broker: &str) -> Result<Option<ClusterNetwork>> {
    let (host, port) = broker.trim_start_matches("mqtt://").rsplit_once(':').context("broker url")?;
    let out = Command::new("mosquitto_sub")
        .args(["-h", host, "-p", port, "-t", "kedge/v1/cluster/network", "-C", "1", "-N", "-W", "2"])
        .output()
        .context("running mosquitto_sub")?;
    if out.stdout.is_empty() {
        return Ok(None);
    }
    Ok(Some(envelope::decode(&out.stdout, envelope::DEFAULT_MAX_PAYLOAD).context("decoding the retained table")?))
}

/// Waits for a retained table that satisfies `ok`.
fn table_where(broker: &str, what: &str, ok: impl Fn(&ClusterNetwork) -> bool) -> Result<ClusterNetwork> {
    let mut last = None;
    wait_for(what, Duration::from_secs(20), || {
        let t = retained(broker)?;
        let found = t.as_ref().is_some_and(&ok);
        last = t.clone();
        Ok(found.then_some(t).flatten())
    })
    .with_context(|| format!("last table seen: {last:#?}"))
}

fn apply(k: &Kubectl, dir: &std::path::Path, name: &str, yaml: &str) -> Result<()> {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml)?;
    k.ok(&["apply", "-f", &path.to_string_lossy()])?;
    Ok(())
}

const OBJECTS: &str = "apiVersion: v1
kind: Node
metadata: {name: n1}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  sessionAffinity: ClientIP
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: dns, port: 53, protocol: UDP}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, labels: {app: web}}
spec:
  nodeName: n1
  hostname: web-1
  subdomain: web
  containers: [{name: main, image: kedge.local/busybox:latest}]
";

#[test]
fn the_network_table_follows_the_api_and_survives_a_restart() -> Result<()> {
    if !require(has("mosquitto_sub"), "mosquitto_sub (Debian's mosquitto-clients)") {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    // A fixed broker port, so the restarted controller's broker is found again.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let listen = format!("127.0.0.1:{port}");
    let Some((mut ctl, k)) = controller_and_kubectl(tmp.path(), &["--mqtt-listen", &listen])? else { return Ok(()) };
    let broker = ctl.broker.clone().context("the controller runs no fleet link")?;

    apply(&k, tmp.path(), "objects", OBJECTS)?;
    // What n1's agent would report: the node Ready with its address, and
    // its pod running and ready with an IP. (A node that is not Ready would
    // have its pods marked not ready by the node lifecycle.)
    let now = jiff_now();
    let node_status = format!(
        r#"{{"status":{{"addresses":[{{"type":"InternalIP","address":"192.168.77.11"}},{{"type":"Hostname","address":"n1"}}],"conditions":[{{"type":"Ready","status":"True","reason":"KubeletReady","lastHeartbeatTime":"{now}","lastTransitionTime":"{now}"}}]}}}}"#
    );
    let (code, body) =
        ctl.api()?.request("PATCH", "/api/v1/nodes/n1/status", "application/merge-patch+json", &node_status)?;
    ensure!(code == 200, "node status: {code} {body}");
    let (code, body) = ctl.api()?.request(
        "PATCH",
        "/api/v1/namespaces/default/pods/web-1/status",
        "application/merge-patch+json",
        r#"{"status":{"phase":"Running","podIP":"10.42.0.5","podIPs":[{"ip":"10.42.0.5"}],"conditions":[{"type":"Ready","status":"True"}]}}"#,
    )?;
    ensure!(code == 200, "pod status: {code} {body}");

    let svc = k.json(&["get", "service", "web"])?;
    let cluster_ip: IpAddr = svc["spec"]["clusterIP"].as_str().context("clusterIP")?.parse()?;
    let pod_cidr = wait_for("n1's pod CIDR", Duration::from_secs(10), || {
        Ok(k.json(&["get", "node", "n1"])?["spec"]["podCIDR"].as_str().map(str::to_owned))
    })?;
    let pod_ip: IpAddr = "10.42.0.5".parse()?;
    let first = table_where(&broker, "web with its endpoint and n1 in the table", |t| {
        t.services.iter().any(|s| s.name == "web" && s.subsets.iter().any(|ss| ss.ready.iter().any(|e| e.ip == pod_ip)))
            && t.node("n1").is_some_and(|n| !n.addresses.is_empty())
    })?;
    let web = first.services.iter().find(|s| s.namespace == "default" && s.name == "web").context("web")?;
    ensure!(web.kind == ServiceKind::ClusterIP && web.cluster_ips == [cluster_ip], "{web:?}");
    ensure!(web.affinity_seconds == Some(10_800), "ClientIP affinity with the default timeout: {web:?}");
    let ports: Vec<(&str, Protocol, u16)> = web.ports.iter().map(|p| (p.name.as_str(), p.protocol, p.port)).collect();
    ensure!(ports == [("http", Protocol::TCP, 80), ("dns", Protocol::UDP, 53)], "{ports:?}");
    let subset = &web.subsets[0];
    ensure!(
        subset.ready[0].hostname.as_deref() == Some("web-1"),
        "hostname of a pod whose subdomain is web: {subset:?}"
    );
    let eports: Vec<(&str, u16)> = subset.ports.iter().map(|p| (p.name.as_str(), p.port)).collect();
    ensure!(eports.contains(&("http", 8080)) && eports.contains(&("dns", 53)), "endpoint ports: {eports:?}");
    let n1 = first.node("n1").context("n1")?;
    ensure!(n1.pod_cidr.to_string() == pod_cidr, "pod CIDR {} vs {pod_cidr}", n1.pod_cidr);
    ensure!(n1.addresses == ["192.168.77.11".parse::<IpAddr>()?], "only InternalIP: {:?}", n1.addresses);
    ensure!(first.cluster_cidr.map(|c| c.to_string()).as_deref() == Some("10.42.0.0/16"), "{:?}", first.cluster_cidr);
    ensure!(first.service_cidr.map(|c| c.to_string()).as_deref() == Some("10.43.0.0/16"), "{:?}", first.service_cidr);

    // A second change: a higher generation.
    k.ok(&["create", "service", "nodeport", "api", "--tcp=443:8443"])?;
    let second = table_where(&broker, "the NodePort Service api in the table", |t| {
        t.services.iter().any(|s| s.name == "api" && s.ports.first().is_some_and(|p| p.node_port.is_some()))
    })?;
    ensure!(second.generation > first.generation, "{} after {}", second.generation, first.generation);

    // A restarted controller (its embedded broker forgot everything)
    // republishes the same table, with a generation that did not go down.
    // (On the same API address: the `kubernetes` Service's Endpoints name it.)
    let api = ctl.addr.to_string();
    ctl.terminate()?;
    ctl = Controller::start_with(&tmp.path().join("data"), &api, &["--mqtt-listen", &listen])?;
    let again = table_where(&broker, "the table republished after the restart", |_| true)?;
    ensure!(again.generation >= second.generation, "{} after {}", again.generation, second.generation);
    ensure!(
        ClusterNetwork { generation: 0, ..again.clone() } == ClusterNetwork { generation: 0, ..second.clone() },
        "the same content: {again:#?} vs {second:#?}"
    );
    drop(ctl);
    Ok(())
}
