//! The pod network end to end (issue 14's acceptance), on the real kernel:
//! a controller and two agents on separate lab machines (network
//! namespaces joined by a LAN), real containers, real nftables, real kubectl,
//! and the pods' own busybox as the client. A web Deployment spread over both
//! nodes behind a ClusterIP Service is reached by name from a client pod on
//! each node (same-node and cross-node), through a NodePort from a third
//! machine, refuses at once when scaled to zero and reaches both new
//! backends when scaled back, stops being routed to a
//! dead backend within two seconds with the controller gone, and keeps
//! working from the cache after an agent `kill -9` and restart with no
//! controller (pods keep their addresses; 20 more get distinct ones). A
//! foreign nftables table is untouched throughout, and `network cleanup`
//! leaves nothing of kedge behind. Two more: the same over VXLAN between
//! two subnets, and a pod CIDR overlapping the node's network reported as
//! `NetworkUnavailable` while hostNetwork pods run. Needs root and kubectl
//! (skips loudly without them; a failure under CI=true).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use kedge_tests::agent::Agent;
use kedge_tests::netlab::{Lab, Machine};
use kedge_tests::{Controller, Kubectl, is_root, metric, parse_metrics, require, wait_for};
use serde_json::Value;

const WORKLOAD: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: httpd
        image: kedge.local/busybox:latest
        imagePullPolicy: IfNotPresent
        command: [sh, -c, 'mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www']
        ports:
        - {name: http, containerPort: 8080}
        readinessProbe:
          tcpSocket: {port: 8080}
          initialDelaySeconds: 4
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports:
  - {port: 80, targetPort: http}
---
apiVersion: v1
kind: Service
metadata: {name: web-np}
spec:
  type: NodePort
  selector: {app: web}
  ports:
  - {port: 80, targetPort: http, nodePort: 30080}
";

fn client(node: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: client-{node}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: sh
    image: kedge.local/busybox:latest
    imagePullPolicy: IfNotPresent
    command: [sleep, '3600']
"
    )
}

/// A ready web pod: name, node, IP.
type WebPod = (String, String, String);

struct Cluster {
    // Dropped in this order: agents, the controller, the lab.
    agents: Vec<Agent>,
    ctl: Option<Controller>,
    k: Kubectl,
    nodes: Vec<Machine>,
    lan_client: Machine,
    lab: Lab,
    _tmp: tempfile::TempDir,
}

impl Cluster {
    fn logs(&self) -> String {
        self.agents.iter().map(|a| a.log()).collect::<Vec<_>>().join("\n----\n")
    }

    /// The pid of `pod`'s first container on agent `i`, from `kedge-agent ps`.
    fn pid(&self, i: usize, pod: &str) -> Result<Option<i64>> {
        let ps: Value = serde_json::from_str(&self.agents[i].cli(&["ps", "-o", "json"])?)?;
        Ok(ps
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["name"] == pod)
            .find_map(|p| p["containers"].as_array()?.iter().find(|c| c["state"] == "Running")?["pid"].as_i64()))
    }

    /// Runs `args` inside `pod` on agent `i` (its network, mount and uts
    /// namespaces: the pod's own busybox and resolv.conf).
    fn exec(&self, i: usize, pod: &str, args: &[&str]) -> Result<(bool, String)> {
        let pid = self.pid(i, pod)?.with_context(|| format!("{pod} runs no container on node {i}"))?;
        let out = std::process::Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-n", "-m", "-u", "--"])
            .args(args)
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        Ok((out.status.success(), text))
    }

    /// `wget` from a client pod: the page (a backend's pod name), or the error.
    fn fetch(&self, i: usize, url: &str) -> Result<std::result::Result<String, String>> {
        let pod = format!("client-{}", self.nodes[i].name());
        // (Debian's busybox 1.35 wget crashes with -T: `timeout` bounds it.)
        let (ok, out) = self.exec(i, &pod, &["timeout", "5", "wget", "-qO-", url])?;
        Ok(if ok { Ok(out.trim().to_owned()) } else { Err(out) })
    }

    /// Names of the backends reached in `tries` fetches.
    fn backends(&self, i: usize, url: &str, tries: usize) -> Result<BTreeSet<String>> {
        let mut seen = BTreeSet::new();
        for _ in 0..tries {
            if let Ok(page) = self.fetch(i, url)? {
                seen.insert(page);
            }
        }
        Ok(seen)
    }

    fn web_pods(&self) -> Result<Vec<WebPod>> {
        let list = self.k.json(&["get", "pods", "-l", "app=web"])?;
        Ok(list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| ready(p))
            .map(|p| {
                let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
                (s(&p["metadata"]["name"]), s(&p["spec"]["nodeName"]), s(&p["status"]["podIP"]))
            })
            .collect())
    }
}

fn ready(v: &Value) -> bool {
    v["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "Ready" && c["status"] == "True")
}

const FOREIGN: &str = "table inet filter {\n\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n\t\ttcp dport 9999 counter accept\n\t}\n}";

fn nft_list(m: &Machine, what: &[&str]) -> Result<String> {
    m.run("nft", what)
}

#[test]
fn pods_reach_services_by_name_across_nodes_online_and_offline() -> Result<()> {
    if !require(is_root(), "root (network namespaces, containers, nftables)") {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let mut lab = Lab::new()?;
    let server = lab.machine("server")?;
    let nodes = vec![lab.machine("node-a")?, lab.machine("node-b")?];
    let lan_client = lab.machine("lan")?;
    for m in &nodes {
        let mut f = m.command("nft").args(["-f", "-"]).stdin(std::process::Stdio::piped()).spawn()?;
        use std::io::Write;
        f.stdin.take().context("stdin")?.write_all(FOREIGN.as_bytes())?;
        ensure!(f.wait()?.success(), "the foreign table loads");
    }
    let foreign_before = nft_list(&nodes[0], &["list", "table", "inet", "filter"])?;
    let Some(mut c) = Cluster::start(tmp, lab, &server, nodes, lan_client)? else { return Ok(()) };
    let result = scenario(&mut c, &foreign_before);
    result.with_context(|| c.logs())
}

/// The VXLAN overlay: the two nodes on different subnets joined by a
/// router, so `--overlay auto` picks VXLAN; pods on each reach the other's
/// by name, and their MTU leaves room for VXLAN's headers.
#[test]
fn pods_reach_each_other_over_vxlan_across_subnets() -> Result<()> {
    if !require(is_root(), "root (network namespaces, containers, nftables)") {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let mut lab = Lab::new()?;
    let far = lab.add_lan("192.168.78.0/24")?;
    let server = lab.machine("server")?;
    let nodes = vec![lab.machine("node-a")?, lab.machine_on("node-b", &[far])?];
    let lan_client = lab.machine("lan")?;
    let first = lab.lan();
    lab.router("router", &[first, far])?;
    let Some(mut c) = Cluster::start(tmp, lab, &server, nodes, lan_client)? else { return Ok(()) };
    let result = vxlan_scenario(&mut c);
    result.with_context(|| c.logs())
}

fn vxlan_scenario(c: &mut Cluster) -> Result<()> {
    let (web, names) = c.deploy()?;
    for (i, m) in c.nodes.iter().enumerate() {
        let link = m.run("ip", &["-d", "link", "show", "kedge.vxlan"])?;
        ensure!(link.contains("vxlan id 1") && link.contains("mtu 1450"), "{}: {link}", m.name());
        let (_, other, _) = web.iter().find(|p| p.1 != m.name()).context("a web pod on the other node")?;
        let cidr = c.k.ok(&["get", "node", other, "-o", "jsonpath={.spec.podCIDR}"])?;
        let route = m.run("ip", &["route", "show", cidr.trim()])?;
        ensure!(route.contains("dev kedge.vxlan"), "{}: route to {other}'s pods: {route}", m.name());
        let eth0 = c.exec(i, &format!("client-{}", m.name()), &["ip", "-o", "link", "show", "eth0"])?.1;
        ensure!(eth0.contains("mtu 1450"), "the client's eth0 on {}: {eth0}", m.name());
    }
    let url = "http://web.default.svc.cluster.local";
    for i in 0..2 {
        wait_for("a client reaches both backends over VXLAN", Duration::from_secs(60), || {
            Ok((c.backends(i, url, 12)? == names).then_some(()))
        })?;
    }
    // A reply bigger than one packet crosses the overlay whole.
    let (_, _, far_ip) = web.iter().find(|p| p.1 != c.nodes[0].name()).context("a web pod on node-b")?;
    let (ok, out) = c.exec(0, "client-node-a", &["ping", "-c", "1", "-W", "5", "-s", "1400", far_ip])?;
    ensure!(ok, "a 1400-byte ping to node-b's pod: {out}");
    Ok(())
}

impl Cluster {
    /// A controller on `server` and an agent with its pod network on each of
    /// `nodes`; None when kubectl is missing (skipped loudly).
    fn start(
        tmp: tempfile::TempDir,
        lab: Lab,
        server: &Machine,
        nodes: Vec<Machine>,
        lan_client: Machine,
    ) -> Result<Option<Cluster>> {
        let Some((ctl, k)) = lab.controller(server, &tmp.path().join("server"), &[])? else { return Ok(None) };
        let mut agents = Vec::new();
        for m in &nodes {
            let ip = m.ip().to_string();
            // Each machine is its own network namespace: one port serves all.
            let args = ["--node-ip", &ip, "--metrics-listen", "127.0.0.1:10249"];
            let mut a = lab.agent(&ctl, m, &tmp.path().join(m.name()), &args)?;
            a.start()?;
            agents.push(a);
        }
        Ok(Some(Cluster { agents, ctl: Some(ctl), k, nodes, lan_client, lab, _tmp: tmp }))
    }

    /// Both nodes Ready with a pod network, the web Deployment (one pod per
    /// node) and a client pod on each: the ready web pods (name, node, IP)
    /// and their names.
    fn deploy(&self) -> Result<(Vec<WebPod>, BTreeSet<String>)> {
        let c = self;
        wait_for("both nodes Ready with their pod network", Duration::from_secs(60), || {
            let list = c.k.json(&["get", "nodes"])?;
            let ok = list["items"].as_array().into_iter().flatten().filter(|n| ready(n)).filter(|n| {
                n["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "NetworkUnavailable" && c["status"] == "False")
            });
            Ok((ok.count() == 2).then_some(()))
        })?;
        c.apply("web", WORKLOAD)?;
        for i in 0..c.nodes.len() {
            let name = c.nodes[i].name().to_owned();
            c.apply(&format!("client-{name}"), &client(&name))?;
        }
        let web = wait_for("both web pods ready, one per node", Duration::from_secs(90), || {
            let pods = c.web_pods()?;
            let nodes: BTreeSet<&str> = pods.iter().map(|p| p.1.as_str()).collect();
            Ok((pods.len() == 2 && nodes.len() == 2).then_some(pods))
        })?;
        wait_for("the clients running", Duration::from_secs(60), || {
            let running = |i: usize| c.pid(i, &format!("client-{}", c.nodes[i].name())).ok().flatten().is_some();
            Ok((0..2).all(running).then_some(()))
        })?;
        let names = web.iter().map(|p| p.0.clone()).collect();
        Ok((web, names))
    }
}

/// The in-cluster contract: a pod has its ServiceAccount's token, the
/// cluster CA and its namespace mounted, `KUBERNETES_SERVICE_HOST` set, and
/// reaches the API through `https://kubernetes.default.svc` with that
/// token — refused (403) until a Role lets its account list pods, then
/// answered.
fn api_from_a_pod(c: &Cluster) -> Result<()> {
    let pod = format!("client-{}", c.nodes[0].name());
    let dir = "/var/run/secrets/kubernetes.io/serviceaccount";
    let (ok, ns) = c.exec(0, &pod, &["cat", &format!("{dir}/namespace")])?;
    ensure!(ok && ns == "default", "the mounted namespace: {ns:?}");
    let (ok, ca) = c.exec(0, &pod, &["cat", &format!("{dir}/ca.crt")])?;
    let want_ca = c.k.ok(&["get", "configmap", "kube-root-ca.crt", "-o", "jsonpath={.data.ca\\.crt}"])?;
    ensure!(ok && ca == want_ca && ca.starts_with("-----BEGIN CERTIFICATE-----"), "the mounted CA: {ca:?}");
    let (ok, token) = c.exec(0, &pod, &["cat", &format!("{dir}/token")])?;
    ensure!(ok && token.starts_with("eyJ"), "the mounted token: {token:?}");
    let (_, env) = c.exec(0, &pod, &["sh", "-c", "cat /proc/1/environ | tr '\\0' '\\n' | grep ^KUBERNETES_"])?;
    let svc_ip = c.k.ok(&["get", "service", "kubernetes", "-o", "jsonpath={.spec.clusterIP}"])?;
    ensure!(env.contains(&format!("KUBERNETES_SERVICE_HOST={svc_ip}\n")), "{env}");
    ensure!(env.contains("KUBERNETES_SERVICE_PORT=443\n"), "{env}");
    // The token is the pod's: bound to it, its account's identity.
    let who = c.k.ok(&["--token", &token, "auth", "whoami", "-o", "json"])?;
    ensure!(who.contains("system:serviceaccount:default:default") && who.contains(&pod), "{who}");

    // By name through the pod's DNS, then over TLS checked against the
    // mounted CA, from the pod's network (busybox's wget speaks no TLS
    // rustls accepts: host curl in the pod's network namespace does).
    let (ok, dns) = c.exec(0, &pod, &["nslookup", "kubernetes.default.svc.cluster.local"])?;
    ensure!(ok && dns.contains(&svc_ip), "kubernetes.default.svc resolves to {svc_ip}: {dns}");
    let ca_file = c.k.cache.with_file_name("pod-ca.crt");
    std::fs::write(&ca_file, &ca)?;
    let pid = c.pid(0, &pod)?.context("the client's pid")?;
    let curl = |path: &str| -> Result<(bool, String)> {
        let out = std::process::Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-n", "--", "curl", "-sS", "--max-time", "10"])
            .args(["--cacert", &ca_file.to_string_lossy()])
            .args(["--resolve", &format!("kubernetes.default.svc:443:{svc_ip}")])
            .args(["-H", &format!("Authorization: Bearer {token}")])
            .args(["-w", "\\n%{http_code}", &format!("https://kubernetes.default.svc{path}")])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        Ok((out.status.success(), text))
    };
    let list = "/api/v1/namespaces/default/pods";
    let (_, out) = curl(list)?;
    ensure!(out.ends_with("\n403"), "listing pods without a Role: {out}");
    ensure!(
        out.contains("pods is forbidden: User \\\"system:serviceaccount:default:default\\\" cannot list resource \\\"pods\\\" in API group \\\"\\\" in the namespace \\\"default\\\""),
        "Kubernetes' message: {out}"
    );
    c.k.ok(&["create", "role", "pod-lister", "--verb=list", "--resource=pods"])?;
    c.k.ok(&["create", "rolebinding", "default-lists", "--role=pod-lister", "--serviceaccount=default:default"])?;
    let (ok, out) = curl(list)?;
    ensure!(
        ok && out.ends_with("\n200") && out.contains("\"kind\":\"PodList\"") && out.contains(&pod),
        "with the Role: {out}"
    );
    c.k.ok(&["delete", "rolebinding", "default-lists"])?;
    c.k.ok(&["delete", "role", "pod-lister"])?;
    Ok(())
}

fn scenario(c: &mut Cluster, foreign_before: &str) -> Result<()> {
    let (web, names) = c.deploy()?;

    // Addresses from each node's pod CIDR; the Endpoints list both.
    for (name, node, ip) in &web {
        let cidr = c.k.ok(&["get", "node", node, "-o", "jsonpath={.spec.podCIDR}"])?;
        let net: ipnet::IpNet = cidr.trim().parse().with_context(|| format!("{node} has pod CIDR {cidr:?}"))?;
        ensure!(net.contains(&ip.parse::<std::net::IpAddr>()?), "{name} on {node} has {ip}, not from {cidr}");
    }
    let wide = c.k.ok(&["get", "pods", "-o", "wide"])?;
    ensure!(web.iter().all(|(_, _, ip)| wide.contains(ip.as_str())), "kubectl get pods -o wide shows the IPs:\n{wide}");
    let want: BTreeSet<String> = web.iter().map(|p| p.2.clone()).collect();
    wait_for("endpoints web lists both", Duration::from_secs(30), || {
        let eps = c.k.ok(&["get", "endpoints", "web"])?;
        Ok(want.iter().all(|ip| eps.contains(&format!("{ip}:8080"))).then_some(()))
    })?;

    // By name, from a client on each node: both backends answer.
    let url = "http://web.default.svc.cluster.local";
    for i in 0..2 {
        let seen = wait_for("a client reaches both backends by name", Duration::from_secs(60), || {
            let seen = c.backends(i, url, 12)?;
            Ok((seen == names).then_some(seen))
        })?;
        ensure!(seen == names, "client on {} saw {seen:?}", c.nodes[i].name());
    }

    api_from_a_pod(c)?;

    // The Service rules' loads show in the node's /metrics.
    let token = std::fs::read_to_string(c.agents[0].data.join("metrics.token"))?;
    let auth = format!("Authorization: Bearer {}", token.trim());
    let text = c.nodes[0].run("curl", &["-sSf", "-H", &auth, "http://127.0.0.1:10249/metrics"])?;
    if let Some(m) = parse_metrics(&text, "prometheus")? {
        let loads = metric(&m, "kedge_agent_rule_sync_duration_seconds_count", &[]);
        ensure!(loads >= 1.0, "{} loaded its Service rules {loads} times:\n{text}", c.nodes[0].name());
    }

    // NodePort from a third machine, on both nodes' addresses.
    for m in &c.nodes {
        let url = format!("http://{}:30080/", m.ip());
        let page = wait_for("the NodePort answers from the LAN", Duration::from_secs(20), || {
            let out = c.lan_client.command("timeout").args(["5", "busybox", "wget", "-qO-", &url]).output()?;
            Ok(out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned()))
        })?;
        ensure!(names.contains(&page), "{url} answered {page:?}");
    }

    // Scaled to zero, the ClusterIP refuses at once (not a timeout); scaled
    // back to two, both new backends answer again from both nodes.
    let cluster_ip = c.k.ok(&["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"])?;
    let by_ip = format!("http://{}/", cluster_ip.trim());
    c.k.ok(&["scale", "deployment", "web", "--replicas=0"])?;
    for i in 0..2 {
        let mut last = String::new();
        wait_for("the ClusterIP of a Service with no endpoints refuses at once", Duration::from_secs(30), || {
            let asked = Instant::now();
            let answer = c.fetch(i, &by_ip)?;
            let took = asked.elapsed();
            last = format!("{answer:?} after {took:?}");
            Ok(matches!(&answer, Err(e) if took < Duration::from_secs(2) && e.contains("refused")).then_some(()))
        })
        .with_context(|| format!("from node {i}, last: {last}\n{}", c.nft_tables()))?;
    }
    c.k.ok(&["scale", "deployment", "web", "--replicas=2"])?;
    let web = wait_for("two new web pods ready, one per node", Duration::from_secs(90), || {
        let pods = c.web_pods()?;
        let nodes: BTreeSet<&str> = pods.iter().map(|p| p.1.as_str()).collect();
        Ok((pods.len() == 2 && nodes.len() == 2 && pods.iter().all(|p| !names.contains(&p.0))).then_some(pods))
    })?;
    let names: BTreeSet<String> = web.iter().map(|p| p.0.clone()).collect();
    for i in 0..2 {
        wait_for("a client reaches both new backends", Duration::from_secs(30), || {
            Ok((c.backends(i, &by_ip, 12)? == names).then_some(()))
        })
        .with_context(|| {
            format!("{}\n{}", c.k.ok(&["get", "endpoints", "web", "-o", "yaml"]).unwrap_or_default(), c.nft_tables())
        })?;
    }

    // The controller gone: a backend killed on node-a leaves node-a's rules
    // within 2 s (its restart is unready for 4 s more), by local health alone.
    if let Some(mut ctl) = c.ctl.take() {
        ctl.kill();
    }
    let (local_name, ..) = web.iter().find(|p| p.1 == c.nodes[0].name()).context("a web pod on node-a")?.clone();
    let other: BTreeSet<String> = names.iter().filter(|n| **n != local_name).cloned().collect();
    let pid = c.pid(0, &local_name)?.context("the local backend's pid")?;
    std::process::Command::new("kill").args(["-9", &pid.to_string()]).status()?;
    let killed = Instant::now();
    std::thread::sleep(Duration::from_secs(2).saturating_sub(killed.elapsed()));
    let seen = c.backends(0, &by_ip, 6)?;
    ensure!(seen == other, "2 s after the kill, node-a routes only to {other:?}; saw {seen:?}");

    // Reboot autonomy: node-a's agent killed and restarted with no
    // controller: its pods are adopted, keep their addresses, and DNS names
    // and ClusterIPs work from the cached table.
    let client_ip_before = c.exec(0, "client-node-a", &["ip", "-4", "-o", "addr", "show", "eth0"])?.1;
    c.agents[0].kill();
    c.agents[0].start()?;
    wait_for("the restarted agent's Service rules", Duration::from_secs(30), || {
        Ok(c.log_has(0, "network table from the local cache").then_some(()))
    })?;
    let after = c.exec(0, "client-node-a", &["ip", "-4", "-o", "addr", "show", "eth0"])?.1;
    ensure!(after == client_ip_before, "the client kept its address: {client_ip_before} → {after}");
    wait_for("names and ClusterIPs work from the cache", Duration::from_secs(30), || {
        Ok((!c.backends(0, url, 6)?.is_empty()).then_some(()))
    })?;

    // 20 more pods after the kill -9, started offline from static
    // manifests: each gets an address of its own, none a running pod holds.
    for i in 0..20 {
        let manifest = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: more-{i}}}\nspec:\n  containers:\n  - name: sh\n    \
             image: kedge.local/busybox:latest\n    imagePullPolicy: IfNotPresent\n    command: [sleep, '3600']\n"
        );
        std::fs::write(c.agents[0].manifests.join(format!("more-{i}.yaml")), manifest)?;
    }
    let addresses = wait_for("20 more pods running, with addresses", Duration::from_secs(120), || {
        let ps: Value = serde_json::from_str(&c.agents[0].cli(&["ps", "-o", "json"])?)?;
        let pods: Vec<(String, String)> = ps
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p["name"].as_str()?.to_owned(), p["pod_ip"].as_str()?.to_owned())))
            .collect();
        let more = pods.iter().filter(|(name, _)| name.starts_with("more-")).count();
        Ok((more == 20).then_some(pods))
    })?;
    let distinct: BTreeSet<&str> = addresses.iter().map(|(_, ip)| ip.as_str()).collect();
    ensure!(distinct.len() == addresses.len(), "addresses handed out twice: {addresses:?}");
    ensure!(addresses.iter().any(|(name, _)| name == "client-node-a"), "the client is among them: {addresses:?}");

    // The foreign table was never touched.
    ensure!(nft_list(&c.nodes[0], &["list", "table", "inet", "filter"])? == foreign_before, "foreign table changed");

    // All pods gone and `network cleanup`: nothing of kedge is left.
    for a in c.agents.drain(..) {
        drop(a);
    }
    for m in &c.nodes {
        let bin = kedge_tests::binary("kedge-agent")?;
        let out = m.command(&bin).args(["network", "cleanup", "--pod-bridge", "kedge0"]).output()?;
        ensure!(out.status.success(), "cleanup on {}: {}", m.name(), String::from_utf8_lossy(&out.stderr));
        let links = m.run("ip", &["-o", "link", "show"])?;
        let names: Vec<&str> =
            links.lines().filter_map(|l| l.split(": ").nth(1)).map(|n| n.split('@').next().unwrap_or(n)).collect();
        ensure!(names.iter().all(|n| *n == "lo" || *n == "eth0"), "links left on {}: {names:?}", m.name());
        let routes = m.run("ip", &["route", "show", "proto", "107"])?;
        ensure!(routes.trim().is_empty(), "routes left on {}: {routes}", m.name());
        let tables = nft_list(m, &["list", "tables"])?;
        ensure!(!tables.contains("kedge") && tables.contains("inet filter"), "tables on {}: {tables}", m.name());
    }
    ensure!(nft_list(&c.nodes[0], &["list", "table", "inet", "filter"])? == foreign_before, "foreign table changed");
    let _ = &c.lab;
    Ok(())
}

impl Cluster {
    fn apply(&self, name: &str, yaml: &str) -> Result<()> {
        let path = self._tmp.path().join(format!("{name}.yaml"));
        std::fs::write(&path, yaml)?;
        self.k.ok(&["apply", "-f", &path.display().to_string()]).map(drop)
    }

    /// Both nodes' table `inet kedge`, for failure messages.
    fn nft_tables(&self) -> String {
        self.nodes
            .iter()
            .map(|m| {
                format!(
                    "{}:\n{}",
                    m.name(),
                    nft_list(m, &["list", "table", "inet", "kedge"]).unwrap_or_else(|e| e.to_string())
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn log_has(&self, i: usize, what: &str) -> bool {
        self.agents[i].log().matches(what).count() >= 1
    }
}

/// Bad input the node cannot use: a pod CIDR that overlaps its own network.
/// The node says why in its `NetworkUnavailable` condition, a pod that needs
/// the network waits `ContainerCreating` with that reason, and a
/// `hostNetwork` pod runs all the same.
#[test]
fn an_overlapping_pod_cidr_is_reported_and_host_network_pods_still_run() -> Result<()> {
    // The only /24 of this cluster range is the LAN the node sits on.
    let overlapping = kedge_tests::netlab::DEFAULT_LAN;
    unusable_network(&["--cluster-cidr", overlapping], None, &[], "overlaps", |_, _, _| Ok(()))
}

/// A node the controller has no pod CIDR for: the cluster range holds one
/// /24 and another Node took it first. The controller says so in an Event
/// on the node, the node in its condition.
#[test]
fn a_node_without_a_pod_cidr_is_reported_and_host_network_pods_still_run() -> Result<()> {
    let first = "apiVersion: v1\nkind: Node\nmetadata: {name: first}\n";
    unusable_network(&["--cluster-cidr", "10.77.0.0/24"], Some(first), &[], "no pod CIDR", |_, k, _| {
        let events = k.ok(&["get", "events", "-A", "--field-selector", "involvedObject.name=node-a"])?;
        ensure!(events.contains("CIDRNotAvailable"), "the controller's event on the node: {events}");
        Ok(())
    })
}

/// A missing part: a machine without the nftables package (nor conntrack:
/// `/usr/sbin` is empty for the agent). Reported as above, nothing of the
/// pod network is half-built, and once nft is there (the agent restarted
/// without the mask) the waiting pod starts.
#[test]
fn a_node_without_nftables_says_so_and_recovers_when_it_is_installed() -> Result<()> {
    unusable_network(&[], None, &["/usr/sbin"], "nftables package", |agent, k, node| {
        ensure!(agent.log().contains("install the nftables package"), "the agent's log says what to install");
        ensure!(node.run("ip", &["link", "show", "kedge0"]).is_err(), "no bridge was built");
        agent.kill();
        agent.hide(&[]);
        agent.start()?;
        wait_for("boxed running once nft is there", Duration::from_secs(60), || {
            let phase = k.ok(&["get", "pod", "boxed", "-o", "jsonpath={.status.phase}"])?;
            Ok((phase == "Running").then_some(()))
        })?;
        wait_for("NetworkUnavailable cleared", Duration::from_secs(30), || {
            let node = k.json(&["get", "node", "node-a"])?;
            Ok(node["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "NetworkUnavailable" && c["status"] == "False")
                .then_some(()))
        })
    })
}

/// One node whose pod network cannot work (controller flags `ctl_extra`,
/// `first` applied before the agent starts, agent directories `hide`
/// masked): its `NetworkUnavailable` condition
/// and a networked pod's waiting message both name `problem`, a
/// `hostNetwork` pod runs; then `more` runs against the agent, kubectl and
/// the node.
fn unusable_network(
    ctl_extra: &[&str],
    first: Option<&str>,
    hide: &[&str],
    problem: &str,
    more: impl FnOnce(&mut Agent, &Kubectl, &Machine) -> Result<()>,
) -> Result<()> {
    if !require(is_root(), "root (network namespaces, containers, nftables)") {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let mut lab = Lab::new()?;
    let server = lab.machine("server")?;
    let node = lab.machine("node-a")?;
    let Some((ctl, k)) = lab.controller(&server, &tmp.path().join("server"), ctl_extra)? else { return Ok(()) };
    if let Some(yaml) = first {
        let file = tmp.path().join("first.yaml");
        std::fs::write(&file, yaml)?;
        k.ok(&["apply", "-f", &file.display().to_string()])?;
    }
    let ip = node.ip().to_string();
    let mut agent = lab.agent(&ctl, &node, &tmp.path().join("node-a"), &["--node-ip", &ip])?;
    agent.hide(hide);
    agent.start()?;
    let result = (|| -> Result<()> {
        let pods = tmp.path().join("pods.yaml");
        std::fs::write(
            &pods,
            "apiVersion: v1
kind: Pod
metadata: {name: boxed}
spec:
  nodeName: node-a
  terminationGracePeriodSeconds: 1
  containers:
  - {name: sh, image: kedge.local/busybox:latest, imagePullPolicy: IfNotPresent, command: [sleep, '3600']}
---
apiVersion: v1
kind: Pod
metadata: {name: on-host}
spec:
  nodeName: node-a
  hostNetwork: true
  terminationGracePeriodSeconds: 1
  containers:
  - {name: sh, image: kedge.local/busybox:latest, imagePullPolicy: IfNotPresent, command: [sleep, '3600']}
",
        )?;
        k.ok(&["apply", "-f", &pods.display().to_string()])?;
        let message = wait_for("node-a reports NetworkUnavailable", Duration::from_secs(60), || {
            let node = k.json(&["get", "node", "node-a"])?;
            Ok(node["status"]["conditions"].as_array().into_iter().flatten().find_map(|c| {
                (c["type"] == "NetworkUnavailable" && c["status"] == "True")
                    .then(|| c["message"].as_str().unwrap_or_default().to_owned())
            }))
        })?;
        ensure!(message.contains(problem), "the condition names the problem: {message:?}");
        wait_for("the hostNetwork pod running", Duration::from_secs(60), || {
            let phase = k.ok(&["get", "pod", "on-host", "-o", "jsonpath={.status.phase}"])?;
            Ok((phase == "Running").then_some(()))
        })?;
        let waiting = wait_for("the other pod waiting with the reason", Duration::from_secs(30), || {
            let pod = k.json(&["get", "pod", "boxed"])?;
            let w = &pod["status"]["containerStatuses"][0]["state"]["waiting"];
            Ok((w["reason"] == "ContainerCreating").then(|| w["message"].as_str().unwrap_or_default().to_owned()))
        })?;
        ensure!(waiting.contains(problem), "boxed waits with the reason: {waiting:?}");
        ensure!(k.ok(&["get", "pod", "boxed", "-o", "jsonpath={.status.phase}"])? == "Pending", "boxed stays Pending");
        more(&mut agent, &k, &node)
    })();
    let log = agent.log();
    drop(agent);
    drop(ctl);
    result.with_context(|| log)
}
