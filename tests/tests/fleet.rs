//! End to end: the controller and real agents over MQTT (design.md §3–4).
//! Every agent is its own process with its own data dir and runs real
//! containers; the broker is the controller's embedded one, or Mosquitto
//! from Debian's packages. Needs root (containers) and kubectl; skips loudly
//! without them (a failure under CI=true).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use kedge_tests::agent::Agent;
use kedge_tests::{
    Controller, Kubectl, Sample, controller_and_kubectl, is_root, metric, parse_metrics, require, wait_for,
};
use serde_json::Value;

struct Cluster {
    dir: PathBuf,
    k: Kubectl,
    /// Each node's agent and the port of its `/metrics`.
    agents: Vec<(String, Agent, u16)>,
    // Dropped last: agents tear their pods down first.
    ctl: Controller,
    broker: String,
    /// `mosquitto_sub`/`mosquitto_pub` arguments that reach the broker as a
    /// client without a login (host, port and, over TLS, the CA).
    mqtt_args: Vec<String>,
    _tmp: tempfile::TempDir,
}

fn prerequisites() -> bool {
    require(is_root(), "root (agents run containers)")
        && require(which("mosquitto_sub") && which("mosquitto_pub"), "mosquitto-clients")
}

fn which(bin: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {bin}")]).output().is_ok_and(|o| o.status.success())
}

impl Cluster {
    /// A controller and one agent per node name; `external` is a broker
    /// both use instead of the embedded broker, each with its own login.
    fn start(nodes: &[&str], external: Option<&Mosquitto>, agent_extra: &[&str]) -> Result<Option<Cluster>> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().to_path_buf();
        let extra: Vec<String> = external.map(|b| b.login(CONTROLLER_USER)).transpose()?.unwrap_or_default();
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let Some((ctl, k)) = controller_and_kubectl(&dir, &extra)? else { return Ok(None) };
        let broker = ctl.broker.clone().context("the controller runs no fleet link")?;
        let token = ctl.token()?;
        let mut agents = Vec::new();
        for n in nodes {
            let login = match external {
                Some(b) => b.login(n)?,
                None => vec!["--broker".to_owned(), broker.clone()],
            };
            let mut args: Vec<&str> = login.iter().map(String::as_str).collect();
            args.extend_from_slice(&["--token", token.as_str(), "--node-name", n, "--backoff-base", "1s"]);
            let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let metrics = format!("127.0.0.1:{port}");
            args.extend_from_slice(&["--metrics-listen", &metrics]);
            args.extend_from_slice(agent_extra);
            let mut a = Agent::new(&dir.join(n), &args)?;
            a.start()?;
            agents.push((n.to_string(), a, port));
        }
        let mqtt_args = match external {
            Some(b) => b.anonymous(),
            None => {
                let (host, port) = broker.trim_start_matches("mqtt://").rsplit_once(':').context("broker url")?;
                vec!["-h".to_owned(), host.to_owned(), "-p".to_owned(), port.to_owned()]
            }
        };
        let c = Cluster { dir, k, agents, ctl, broker, mqtt_args, _tmp: tmp };
        for n in nodes {
            c.wait_node_ready(n)?;
        }
        Ok(Some(c))
    }

    fn dashboard_rejected(&self, node: &str) -> Result<u64> {
        let j = dashboard(self, &format!("kedge/v1/fleet/nodes/{node}"))?;
        Ok(j["rejected"]["by_controller"].as_u64().unwrap_or(0))
    }

    fn agent(&self, node: &str) -> &Agent {
        &self.agents.iter().find(|(n, ..)| n == node).expect("an agent of that name").1
    }

    fn agent_mut(&mut self, node: &str) -> &mut Agent {
        &mut self.agents.iter_mut().find(|(n, ..)| n == node).expect("an agent of that name").1
    }

    fn wait_node_ready(&self, node: &str) -> Result<()> {
        wait_for(&format!("node {node} Ready"), Duration::from_secs(30), || {
            Ok(ready(&self.k.json(&["get", "node", node])?).then_some(()))
        })
        .with_context(|| format!("agent log:\n{}", self.agent(node).log()))
    }

    fn apply(&self, name: &str, yaml: &str) -> Result<()> {
        let path = self.dir.join(format!("{name}.yaml"));
        std::fs::write(&path, yaml)?;
        self.k.ok(&["apply", "-f", &path.to_string_lossy()])?;
        Ok(())
    }

    fn pods(&self, selector: &str) -> Result<Vec<Value>> {
        let list = self.k.json(&["get", "pods", "-l", selector])?;
        Ok(list["items"].as_array().cloned().unwrap_or_default())
    }

    /// Waits until exactly `n` pods match and all are Running and Ready.
    fn wait_running(&self, selector: &str, n: usize, limit: Duration) -> Result<Vec<Value>> {
        wait_for(&format!("{n} running, ready pods {selector}"), limit, || {
            let pods = self.pods(selector)?;
            let ok = pods.len() == n && pods.iter().all(|p| p["status"]["phase"] == "Running" && ready(p));
            Ok(ok.then_some(pods))
        })
        .with_context(|| {
            let logs: Vec<String> =
                self.agents.iter().map(|(n, a, _)| format!("--- {n}:\n{}", tail(&a.log()))).collect();
            format!("{}\n{}", self.k.ok(&["get", "pods", "-o", "wide"]).unwrap_or_default(), logs.join("\n"))
        })
    }

    /// The names of the pods `node` runs whose names start with `prefix`, sorted.
    fn pods_on(&self, node: &str, prefix: &str) -> Result<Vec<String>> {
        let mut names: Vec<String> = self
            .agent(node)
            .ps()?
            .iter()
            .filter_map(|p| p["name"].as_str().filter(|n| n.starts_with(prefix)).map(str::to_owned))
            .collect();
        names.sort();
        Ok(names)
    }

    /// The agent's view of one pod: container name → (state, pid, restarts).
    fn on_node(&self, node: &str, pod: &str) -> Result<Vec<(String, String, i64, i64)>> {
        let ps = self.agent(node).ps()?;
        let p = ps.iter().find(|p| p["name"] == pod).with_context(|| format!("{pod} not on {node}: {ps:?}"))?;
        Ok(p["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                (
                    c["name"].as_str().unwrap_or_default().to_string(),
                    c["state"].as_str().unwrap_or_default().to_string(),
                    c["pid"].as_i64().unwrap_or(0),
                    c["restart_count"].as_i64().unwrap_or(0),
                )
            })
            .collect())
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// A Pod's or a Node's Ready condition is True.
fn ready(p: &Value) -> bool {
    p["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "Ready" && c["status"] == "True")
}

fn name(p: &Value) -> String {
    p["metadata"]["name"].as_str().unwrap_or_default().to_string()
}

fn node_of(p: &Value) -> String {
    p["spec"]["nodeName"].as_str().unwrap_or_default().to_string()
}

fn deployment(name: &str, replicas: u32, extra_spec: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      terminationGracePeriodSeconds: 1
{extra_spec}      containers:
      - name: main
        image: kedge.local/busybox:latest
        imagePullPolicy: IfNotPresent
        command: [sleep, '3600']
"
    )
}

const DAEMONSET: &str = "apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent-ds}
spec:
  selector: {matchLabels: {app: agent-ds}}
  template:
    metadata: {labels: {app: agent-ds}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: kedge.local/busybox:latest
        imagePullPolicy: IfNotPresent
        command: [sh, -c, 'echo started on $NODE; exec sleep 3600']
        env:
        - name: NODE
          valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
";

fn alive(pid: i64) -> bool {
    pid > 0 && Path::new(&format!("/proc/{pid}")).exists()
}

/// Deployment + DaemonSet on two agents, checked the way a user would.
fn workloads_on_two_agents(c: &Cluster) -> Result<()> {
    let t = Instant::now();
    c.apply("web", &deployment("web", 4, ""))?;
    c.apply("ds", DAEMONSET)?;
    let web = c.wait_running("app=web", 4, Duration::from_secs(60))?;
    let ds = c.wait_running("app=agent-ds", 2, Duration::from_secs(60))?;
    eprintln!("apply → 6 pods Running on two agents: {:.1} s", t.elapsed().as_secs_f64());
    let ds_nodes: std::collections::BTreeSet<String> = ds.iter().map(node_of).collect();
    ensure!(ds_nodes == ["n1", "n2"].map(String::from).into(), "one DaemonSet pod per node: {ds_nodes:?}");
    for p in web.iter().chain(&ds) {
        let containers = c.on_node(&node_of(p), &name(p))?;
        ensure!(
            containers.iter().all(|(_, state, pid, _)| state == "Running" && alive(*pid)),
            "{} has a live process on {}: {containers:?}",
            name(p),
            node_of(p)
        );
    }
    let wide = c.k.ok(&["get", "pods", "-o", "wide"])?;
    for p in web.iter().chain(&ds) {
        let line = wide.lines().find(|l| l.starts_with(&name(p))).context("pod in the wide listing")?;
        ensure!(line.contains(&node_of(p)), "NODE column of {line}");
    }
    let nodes = c.k.json(&["get", "nodes"])?;
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    for n in nodes["items"].as_array().into_iter().flatten() {
        ensure!(n["metadata"]["labels"]["kubernetes.io/arch"] == arch, "arch label of {n}");
        ensure!(n["status"]["nodeInfo"]["architecture"] == arch, "nodeInfo of {n}");
        ensure!(n["status"]["capacity"]["cpu"].as_str().is_some_and(|c| !c.is_empty()), "capacity of {n}");
    }
    // The DaemonSet's env came from each pod's own field: its node's name,
    // in the log its node keeps, which `kubectl logs` reads through the
    // broker.
    for p in &ds {
        let (pod, node) = (name(p), node_of(p));
        let want = format!("started on {node}\n");
        wait_for(&format!("{want:?} from kubectl logs {pod}"), Duration::from_secs(20), || {
            Ok((c.k.ok(&["logs", &pod])? == want).then_some(()))
        })
        .with_context(|| tail(&c.agent(&node).log()))?;
    }
    Ok(())
}

const CHATTY: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: chatty}
spec:
  replicas: 2
  selector: {matchLabels: {app: chatty}}
  template:
    metadata: {labels: {app: chatty}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: count
        image: kedge.local/busybox:latest
        imagePullPolicy: IfNotPresent
        command: [sh, -c, 'for i in $(seq 1 20); do echo count $i; done; exec sleep 3600']
      - name: tick
        image: kedge.local/busybox:latest
        imagePullPolicy: IfNotPresent
        command: [sh, -c, 'while true; do echo tick; sleep 0.3; done']
---
apiVersion: v1
kind: Pod
metadata: {name: crasher, labels: {app: crasher}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: kedge.local/busybox:latest
    imagePullPolicy: IfNotPresent
    command: [sh, -c, 'echo run $(cat /proc/sys/kernel/random/uuid); sleep 1; exit 1']
";

/// `kubectl logs` as users type it, answered by the nodes through the
/// broker: `--tail`, `--since`, `--limit-bytes`, `--timestamps`, `-f`,
/// `--previous`, `-l` with `--all-containers`, and the errors.
fn logs_through_the_link(c: &Cluster) -> Result<()> {
    c.apply("chatty", CHATTY)?;
    let pods = c.wait_running("app=chatty", 2, Duration::from_secs(60))?;
    let count: String = (1..=20).map(|i| format!("count {i}\n")).collect();
    wait_for("count's 20 lines", Duration::from_secs(20), || {
        Ok((c.k.ok(&["logs", "deploy/chatty", "-c", "count"])? == count).then_some(()))
    })?;
    ensure!(c.k.ok(&["logs", "deploy/chatty", "-c", "count", "--tail", "5"])? == count[count.len() - 45..]);
    ensure!(c.k.ok(&["logs", "deploy/chatty", "-c", "count", "--tail", "0"])?.is_empty());
    ensure!(c.k.ok(&["logs", "deploy/chatty", "-c", "count", "--limit-bytes", "10"])? == count[..10]);
    std::thread::sleep(Duration::from_secs(2));
    ensure!(
        c.k.ok(&["logs", "deploy/chatty", "-c", "count", "--since", "1s"])?.is_empty(),
        "count wrote nothing lately"
    );
    let stamped = c.k.ok(&["logs", "deploy/chatty", "-c", "count", "--timestamps", "--tail", "1"])?;
    let (when, text) = stamped.trim_end().split_once(' ').context("a time, then the line")?;
    ensure!(text == "count 20" && when.parse::<jiff::Timestamp>().is_ok(), "{stamped:?}");

    // Both pods, every container: their lines, prefixed as asked.
    let all = c.k.ok(&["logs", "-l", "app=chatty", "--all-containers", "--prefix", "--tail", "3"])?;
    for p in &pods {
        for container in ["count", "tick"] {
            let prefix = format!("[pod/{}/{container}]", name(p));
            ensure!(all.lines().filter(|l| l.starts_with(&prefix)).count() == 3, "3 lines of {prefix} in\n{all}");
        }
    }

    // -f: each line arrives within a second of its being written (the
    // time the node wrote it down is on it).
    let mut follow =
        c.k.command(&["logs", "-f", "--timestamps", "--tail", "1", &format!("pod/{}", name(&pods[0])), "-c", "tick"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
    let out = follow.stdout.take().context("kubectl's stdout")?;
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(out));
    let mut lags = Vec::new();
    for _ in 0..6 {
        let line = lines.next().context("kubectl logs -f ended")??;
        let got = jiff::Timestamp::now();
        let (when, text) = line.split_once(' ').context("a time, then the line")?;
        ensure!(text == "tick", "{line}");
        lags.push(got.duration_since(when.parse::<jiff::Timestamp>()?).as_secs_f64());
    }
    let _ = follow.kill();
    let _ = follow.wait();
    // The client gone, every session ends on its node too.
    sessions_ended(c)?;
    // The first is the --tail line, written up to a tick before.
    ensure!(lags[1..].iter().all(|l| *l < 1.0), "-f lags {lags:?} s");
    eprintln!("kubectl logs -f: new lines after {:?} s", &lags[1..]);

    // --previous: what the crashed attempt wrote, not what the current one did.
    let (previous, current) = wait_for("crasher restarted", Duration::from_secs(60), || {
        let Ok(previous) = c.k.ok(&["logs", "crasher", "--previous"]) else { return Ok(None) };
        Ok(Some((previous, c.k.ok(&["logs", "crasher"])?)))
    })?;
    ensure!(
        previous.starts_with("run ") && current.starts_with("run ") && previous != current,
        "{previous:?} {current:?}"
    );

    // Errors name the problem.
    let e = c.k.fails(&["logs", "deploy/chatty", "-c", "nope"])?;
    ensure!(e.contains("container nope is not valid for pod"), "{e}");
    let e = c.k.fails(&["logs", "nothing-here"])?;
    ensure!(e.contains("not found"), "{e}");
    c.k.ok(&["delete", "deployment/chatty", "pod/crasher"])?;
    Ok(())
}

const SHELL: &str = "apiVersion: v1
kind: Pod
metadata: {name: shell}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: kedge.local/busybox:latest
    imagePullPolicy: IfNotPresent
    workingDir: /tmp
    env: [{name: GREETING, value: hello from the pod}]
    command: [sh, -c, 'echo shell is up; exec sleep 3600']
";

/// Runs kubectl with `args` on a pseudo-terminal driven by [`TTY_DRIVER`].
fn on_a_terminal(c: &Cluster, args: &[&str]) -> Result<Output> {
    let k = c.k.command(args);
    let mut py = Command::new("python3");
    py.arg("-c").arg(TTY_DRIVER).arg(k.get_program()).args(k.get_args());
    for (key, v) in k.get_envs() {
        match v {
            Some(v) => py.env(key, v),
            None => py.env_remove(key),
        };
    }
    Ok(py.output()?)
}

const TALKER: &str = "apiVersion: v1
kind: Pod
metadata: {name: talker}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: kedge.local/busybox:latest
    imagePullPolicy: IfNotPresent
    stdin: true
    command: [sh, -c, 'echo ready; while read l; do echo \"got $l\"; echo \"also $l\" >&2; done']
";

/// `kubectl attach` and `kubectl run -i/-it` through the broker: the
/// container's own process, its output live (stdout and stderr apart), its
/// stdin (to its end with `stdinOnce`, as `kubectl run -i` sets), and a
/// terminal with resizes and the exit code.
fn attach_through_the_link(c: &Cluster) -> Result<()> {
    let run = ["--image=kedge.local/busybox:latest", "--image-pull-policy=IfNotPresent", "--restart=Never"];
    // `kubectl run -i --rm`: stdin to its end reaches cat, whose output
    // comes back; the pod is gone afterwards.
    let mut args = vec!["run", "-i", "--rm", "cat-once"];
    args.extend_from_slice(&run);
    args.extend_from_slice(&["--", "cat"]);
    let mut child = c.k.command(&args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    child.stdin.take().context("stdin")?.write_all(b"hello through stdin\n")?;
    let o = child.wait_with_output()?;
    let out = String::from_utf8_lossy(&o.stdout);
    ensure!(o.status.success() && out.contains("hello through stdin"), "kubectl run -i: {o:?}");
    ensure!(c.k.run(&["get", "pod", "cat-once"])?.status.code() == Some(1), "kubectl run --rm left the pod");

    // `kubectl attach -i` to a running pod: a line in, its answers out,
    // stdout and stderr apart. (Its stdin is not `stdinOnce`: the process
    // never sees an end, so kubectl is stopped after a while.)
    c.apply("talker", TALKER)?;
    wait_pod_running(c, "talker")?;
    let cmd = format!("echo hi | timeout 8 {} attach -i talker", shell_words(&c.k.command(&[])));
    let o = Command::new("sh")
        .arg("-c")
        .arg(&cmd)
        .envs(c.k.command(&[]).get_envs().filter_map(|(k, v)| Some((k, v?))))
        .output()?;
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    ensure!(out.contains("got hi") && !out.contains("also hi") && err.contains("also hi"), "kubectl attach -i: {o:?}");
    // A container without `stdin: true` has none to attach to.
    let o = c.k.run(&["attach", "-i", "shell"])?;
    ensure!(!o.status.success(), "kubectl attach -i to a pod without stdin: {o:?}");
    delete_pod(c, "talker")?;

    // `kubectl run -it`: a terminal, resized, and the shell's exit code is
    // kubectl's once the pod has terminated.
    let mut args = vec!["run", "-it", "--rm", "tty-sh"];
    args.extend_from_slice(&run);
    args.extend_from_slice(&["--", "sh"]);
    let o = on_a_terminal(c, &args)?;
    ensure!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "7",
        "kubectl run -it: {o:?}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    sessions_ended(c)?;
    Ok(())
}

const TRAPPER: &str = "apiVersion: v1
kind: Pod
metadata: {name: trapper}
spec:
  terminationGracePeriodSeconds: 20
  containers:
  - name: main
    image: kedge.local/busybox:latest
    imagePullPolicy: IfNotPresent
    command: [sh, -c, 'trap \"echo got SIGTERM; sleep 3; exit 0\" TERM; echo ready; while true; do sleep 1 & wait $!; done']
    lifecycle:
      preStop:
        exec: {command: [sh, -c, 'echo preStop ran > /proc/1/fd/1']}
";

const STUBBORN: &str = "apiVersion: v1
kind: Pod
metadata: {name: stubborn}
spec:
  terminationGracePeriodSeconds: 3
  containers:
  - name: main
    image: kedge.local/busybox:latest
    imagePullPolicy: IfNotPresent
    command: [sleep, '3600']
";

/// Graceful termination as kubectl shows it: a deleted pod is
/// `Terminating` while its node runs the preStop hook and sends SIGTERM
/// (the container writes both to its log), and the object goes once the
/// container has exited; a container that ignores SIGTERM (a PID 1 without
/// a handler) is killed when its 3 s grace period is over; `--force
/// --grace-period=0` removes the object at once and the node follows.
fn graceful_termination(c: &Cluster) -> Result<()> {
    c.apply("trapper", TRAPPER)?;
    wait_pod_running(c, "trapper")?;
    let node = node_of(&c.k.json(&["get", "pod", "trapper"])?);
    let logs = c.k.command(&["logs", "-f", "trapper"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    wait_for("the log to start", Duration::from_secs(20), || {
        Ok(c.k.ok(&["logs", "trapper"])?.contains("ready").then_some(()))
    })?;
    let t = Instant::now();
    c.k.ok(&["delete", "pod", "trapper", "--wait=false"])?;
    // (Its SIGTERM handler takes 3 s: time to look.)
    let pod = c.k.json(&["get", "pod", "trapper"])?;
    ensure!(pod["metadata"]["deletionGracePeriodSeconds"] == 20, "{}", pod["metadata"]);
    let shown = c.k.ok(&["get", "pod", "trapper", "--no-headers"])?;
    ensure!(shown.contains("Terminating"), "kubectl get right after the delete: {shown}");
    wait_for("the trapper object to go", Duration::from_secs(30), || {
        Ok((c.k.run(&["get", "pod", "trapper"])?.status.code() == Some(1)).then_some(()))
    })?;
    ensure!(t.elapsed() < Duration::from_secs(15), "a container that exits on SIGTERM took {:?}", t.elapsed());
    let o = logs.wait_with_output()?;
    let out = String::from_utf8_lossy(&o.stdout);
    let (hook, term) = (out.find("preStop ran"), out.find("got SIGTERM"));
    ensure!(hook.is_some() && term.is_some() && hook < term, "the hook, then SIGTERM, in the log: {out:?}");
    c.agent(&node).wait_for("trapper to leave its node", Duration::from_secs(30), || {
        Ok(c.agent(&node).ps()?.iter().all(|p| p["name"] != "trapper").then_some(()))
    })?;

    c.apply("stubborn", STUBBORN)?;
    wait_pod_running(c, "stubborn")?;
    let t = Instant::now();
    c.k.ok(&["delete", "pod", "stubborn"])?; // kubectl waits for the object to go
    let took = t.elapsed();
    ensure!(took >= Duration::from_secs(3) && took < Duration::from_secs(15), "killed after {took:?} (grace 3 s)");

    c.apply("stubborn", &STUBBORN.replace("terminationGracePeriodSeconds: 3", "terminationGracePeriodSeconds: 300"))?;
    wait_pod_running(c, "stubborn")?;
    let node = node_of(&c.k.json(&["get", "pod", "stubborn"])?);
    let t = Instant::now();
    c.k.ok(&["delete", "pod", "stubborn", "--grace-period=0", "--force"])?;
    ensure!(c.k.run(&["get", "pod", "stubborn"])?.status.code() == Some(1), "forced: gone from the API at once");
    c.agent(&node).wait_for("the forced pod to leave its node", Duration::from_secs(30), || {
        Ok(c.agent(&node).ps()?.iter().all(|p| p["name"] != "stubborn").then_some(()))
    })?;
    ensure!(t.elapsed() < Duration::from_secs(20), "forced deletion took {:?} on the node", t.elapsed());
    Ok(())
}

/// The program and arguments of `cmd` as one line for `sh -c`.
fn shell_words(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| format!("'{}'", a.to_string_lossy().replace('\'', "'\\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Drives `kubectl exec -it` through a pseudo-terminal of 24x80, as a user's
/// terminal would: a command typed is answered, `stty size` follows a
/// resize to 30x100, and `exit 7` is kubectl's exit code. Prints the code.
const TTY_DRIVER: &str = r#"
import fcntl, os, select, struct, subprocess, sys, termios, time
m, s = os.openpty()
fcntl.ioctl(s, termios.TIOCSWINSZ, struct.pack('HHHH', 24, 80, 0, 0))
p = subprocess.Popen(sys.argv[1:], stdin=s, stdout=s, stderr=s, start_new_session=True,
                     preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
os.close(s)
buf = b''
def expect(pat, timeout=20):
    global buf
    end = time.time() + timeout
    while pat not in buf:
        left = end - time.time()
        if left <= 0:
            return False
        r, _, _ = select.select([m], [], [], left)
        if r:
            try:
                d = os.read(m, 4096)
            except OSError:
                d = b''
            if not d:
                sys.exit('the terminal closed waiting for %r; got %r' % (pat, buf))
            buf += d
    buf = buf[buf.index(pat) + len(pat):]
    return True
def need(pat):
    if not expect(pat):
        sys.exit('timed out waiting for %r; got %r' % (pat, buf))
os.write(m, b'echo $((6*7))\n'); need(b'42')
os.write(m, b'stty size\n'); need(b'24 80')
fcntl.ioctl(m, termios.TIOCSWINSZ, struct.pack('HHHH', 30, 100, 0, 0))
for _ in range(20):
    os.write(m, b'stty size\n')
    if expect(b'30 100', 0.5):
        break
else:
    sys.exit('the size did not follow the resize: %r' % buf)
os.write(m, b'exit 7\n')
print(p.wait(timeout=20))
"#;

/// Every session a node opened has ended (its client gone or done).
fn sessions_ended(c: &Cluster) -> Result<()> {
    for (n, a, _) in &c.agents {
        a.wait_for(&format!("every session on {n} ended"), Duration::from_secs(10), || {
            let log = a.log();
            Ok((log.matches("session opened").count() == log.matches("session ended").count()).then_some(()))
        })?;
    }
    Ok(())
}

/// Waits for pod `name` to be Running.
fn wait_pod_running(c: &Cluster, name: &str) -> Result<()> {
    wait_for(&format!("pod {name} running"), Duration::from_secs(60), || {
        Ok(c.k.ok(&["get", "pod", name, "-o", "jsonpath={.status.phase}"])?.eq("Running").then_some(()))
    })
}

/// Deletes pod `name` and waits until no agent runs it any more.
fn delete_pod(c: &Cluster, name: &str) -> Result<()> {
    c.k.ok(&["delete", &format!("pod/{name}")])?;
    for (n, a, _) in &c.agents {
        a.wait_for(&format!("pod {name} to leave {n}"), Duration::from_secs(60), || {
            Ok(a.ps()?.iter().all(|p| p["name"] != name).then_some(()))
        })?;
    }
    Ok(())
}

/// Runs tests/python/k8s_client.py (the official Python client) for
/// `what` on `pod`; `None` (skipped, loudly) without the `kubernetes`
/// package, which scripts/packages.sh installs into target/python.
fn python_client(c: &Cluster, what: &str, pod: &str) -> Result<Option<String>> {
    let root = kedge_tests::workspace_root();
    let path = root.join("target/python");
    let has = Command::new("python3").args(["-c", "import kubernetes"]).env("PYTHONPATH", &path).output();
    if !require(has.is_ok_and(|o| o.status.success()), "the Python kubernetes client (scripts/packages.sh)") {
        return Ok(None);
    }
    let o = Command::new("python3")
        .arg(root.join("tests/python/k8s_client.py"))
        .arg(&c.k.kubeconfig)
        .args([what, pod])
        .env("PYTHONPATH", &path)
        .output()?;
    ensure!(o.status.success(), "python client {what}: {}", String::from_utf8_lossy(&o.stderr));
    Ok(Some(String::from_utf8_lossy(&o.stdout).into_owned()))
}

/// `kubectl exec` and `kubectl cp` through the broker: output and exit
/// codes, stdin to its end, a terminal, files both ways, and errors that
/// name the problem.
fn exec_through_the_link(c: &Cluster) -> Result<()> {
    c.apply("shell", SHELL)?;
    wait_pod_running(c, "shell")?;
    // The command runs as the container's process would: its working
    // directory and environment.
    let out = c.k.ok(&["exec", "shell", "--", "sh", "-c", "pwd; echo $GREETING"])?;
    ensure!(out == "/tmp\nhello from the pod\n", "{out:?}");
    // stdout and stderr apart, and the exit code is kubectl's.
    let o = c.k.run(&["exec", "shell", "--", "sh", "-c", "echo out; echo err >&2; exit 3"])?;
    let (stdout, stderr) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    ensure!(o.status.code() == Some(3) && stdout == "out\n" && stderr.starts_with("err\n"), "{o:?}");
    // stdin to its end: cat ends when kubectl's input does.
    let mut cat = c.k.command(&["exec", "-i", "shell", "--", "sh", "-c", "cat; echo done"]);
    let mut cat = cat.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    cat.stdin.take().context("stdin")?.write_all(b"line one\nline two\n")?;
    let o = cat.wait_with_output()?;
    ensure!(o.status.success() && o.stdout == b"line one\nline two\ndone\n", "{o:?}");

    // The Python client: the log, and exec over v4.channel.k8s.io with its
    // exit code.
    if let Some(log) = python_client(c, "logs", "shell")? {
        ensure!(log == "shell is up\n", "{log:?}");
        let got: Value = serde_json::from_str(&python_client(c, "exec", "shell")?.unwrap_or_default())?;
        ensure!(got == serde_json::json!({"stdout": "got hello\n", "stderr": "oops\n", "code": 4}), "{got}");
    }

    // kubectl from 1.27 (SPDY) to 1.33 (WebSocket), and 1.32 told to use
    // SPDY: stdin to its end, stdout and stderr apart, the exit code.
    let versions = ["1.27", "1.29", "1.30", "1.32", "1.33"];
    for (v, spdy) in versions.iter().map(|v| (*v, false)).chain([("1.32", true)]) {
        let bin = PathBuf::from(format!("/usr/lib/google-cloud-sdk/bin/kubectl.{v}"));
        if !require(bin.exists(), &format!("kubectl {v} at {}", bin.display())) {
            continue;
        }
        let k = Kubectl { bin, kubeconfig: c.k.kubeconfig.clone(), cache: c.k.cache.clone() };
        let mut cmd = k.command(&["exec", "-i", "shell", "--", "sh", "-c", "cat; echo err >&2; exit 5"]);
        if spdy {
            cmd.env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false");
        }
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        child.stdin.take().context("stdin")?.write_all(format!("kubectl {v}\n").as_bytes())?;
        let o = child.wait_with_output()?;
        let (stdout, stderr) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        ensure!(
            o.status.code() == Some(5) && stdout == format!("kubectl {v}\n") && stderr.starts_with("err\n"),
            "kubectl {v} exec (spdy: {spdy}): {o:?}"
        );
    }

    // kubectl cp of 5 MB both ways keeps every byte.
    let dir = tempfile::tempdir()?;
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let data: Vec<u8> = (0..5 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let (local, back) = (dir.path().join("big.bin"), dir.path().join("back.bin"));
    std::fs::write(&local, &data)?;
    c.k.ok(&["cp", &local.display().to_string(), "shell:/tmp/big.bin"])?;
    let size = c.k.ok(&["exec", "shell", "--", "wc", "-c", "/tmp/big.bin"])?;
    ensure!(size.split_whitespace().next() == Some("5242880"), "{size}");
    c.k.ok(&["cp", "shell:/tmp/big.bin", &back.display().to_string()])?;
    ensure!(std::fs::read(&back)? == data, "the file came back changed");

    // A terminal: typed commands answered, resizes followed, exit code kept.
    let o = on_a_terminal(c, &["exec", "-it", "shell", "--", "sh"])?;
    ensure!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "7",
        "kubectl exec -it: {o:?}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // Errors name the problem.
    let e = c.k.fails(&["exec", "shell", "-c", "nope", "--", "true"])?;
    ensure!(e.contains("container nope is not valid for pod shell"), "{e}");
    let e = c.k.fails(&["exec", "nothing-here", "--", "true"])?;
    ensure!(e.contains("not found"), "{e}");
    let o = c.k.run(&["exec", "shell", "--", "/no/such/program"])?;
    ensure!(!o.status.success(), "{o:?}");
    sessions_ended(c)?;
    delete_pod(c, "shell")?;
    Ok(())
}

const PF: &str = "apiVersion: v1
kind: Pod
metadata: {name: pf}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: kedge.local/busybox:latest
    imagePullPolicy: IfNotPresent
    command: [sh, -c, 'mkdir -p /www && echo hello through the broker > /www/index.html && exec httpd -f -p 127.0.0.1:8080 -h /www']
";

/// Starts `kubectl port-forward` to `target` on a free local port; returns
/// it once kubectl listens, with the port.
fn port_forward(c: &Cluster, target: &str, websockets: bool) -> Result<(Child, u16)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut pf = c.k.command(&["port-forward", "pod/pf", &format!("{port}:{target}")]);
    pf.env("KUBECTL_PORT_FORWARD_WEBSOCKETS", if websockets { "true" } else { "false" });
    let mut pf = pf.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let out = pf.stdout.take().context("kubectl's stdout")?;
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(out));
    let line = lines.next().context("kubectl printed nothing")??;
    ensure!(line.starts_with(&format!("Forwarding from 127.0.0.1:{port}")), "{line}");
    // kubectl prints a line per connection: keep reading them.
    std::thread::spawn(move || lines.for_each(drop));
    Ok((pf, port))
}

/// `kubectl port-forward` through the broker, tunnelled in a WebSocket
/// (kubectl 1.31+) and as direct SPDY (up to 1.30): the pod's page, which
/// it serves on its own loopback only, to 20 curls at once.
fn port_forward_through_the_link(c: &Cluster) -> Result<()> {
    c.apply("pf", PF)?;
    wait_pod_running(c, "pf")?;
    wait_for("httpd to serve in pod pf", Duration::from_secs(20), || {
        Ok(c.k.run(&["exec", "pf", "--", "wget", "-qO-", "http://127.0.0.1:8080/"])?.status.success().then_some(()))
    })?;
    for websockets in [true, false] {
        let (mut pf, port) = port_forward(c, "8080", websockets)?;
        let url = format!("http://127.0.0.1:{port}/");
        let curls: Vec<Child> = (0..20)
            .map(|_| {
                Command::new("curl")
                    .args(["-sS", "--max-time", "30", &url])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
            })
            .collect::<Result<_, _>>()?;
        let outs: Vec<Output> = curls.into_iter().map(Child::wait_with_output).collect::<Result<_, _>>()?;
        let _ = pf.kill();
        let kubectl = pf.wait_with_output()?;
        for o in outs {
            ensure!(
                o.status.success() && o.stdout == b"hello through the broker\n",
                "curl through port-forward (websockets={websockets}): {o:?}\nkubectl: {}",
                String::from_utf8_lossy(&kubectl.stderr)
            );
        }
    }
    // The Python client's port-forward (the kubelet's older WebSocket protocol).
    if let Some(page) = python_client(c, "portforward", "pf")? {
        ensure!(page == "hello through the broker\n", "{page:?}");
    }
    // A port nothing listens on: kubectl says so.
    let (pf, port) = port_forward(c, "9999", true)?;
    let o = Command::new("curl").args(["-sS", "--max-time", "20", &format!("http://127.0.0.1:{port}/")]).output()?;
    ensure!(!o.status.success(), "{o:?}");
    let out = pf.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(stderr.contains("connection refused"), "kubectl port-forward to a closed port: {stderr}");
    sessions_ended(c)?;
    delete_pod(c, "pf")?;
    Ok(())
}

const BURNER: &str = "apiVersion: v1
kind: Pod
metadata: {name: burner, labels: {app: burner}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: kedge.local/busybox:latest
    imagePullPolicy: IfNotPresent
    command: [sh, -c, 'x=$(head -c 30000000 /dev/zero | tr \"\\\\0\" a); while :; do :; done']
";

/// The cgroup's own counters of process `pid`: CPU used so far (ns) and
/// memory working set (bytes), cgroup v1 or v2.
fn cgroup_counters(pid: i64) -> Result<(u64, u64)> {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    let path = |controller: &str| {
        cgroups.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, list, path) = (f.next()?, f.next()?, f.next()?);
            // The hierarchy is mounted under the name of its controllers.
            list.split(',').any(|c| c == controller).then(|| format!("/sys/fs/cgroup/{list}{path}"))
        })
    };
    let stat = |text: &str, key: &str| -> u64 {
        text.lines().find_map(|l| l.strip_prefix(key)?.trim().parse().ok()).unwrap_or(0)
    };
    let read = |p: String| std::fs::read_to_string(&p).with_context(|| p.clone());
    match (path("cpuacct"), path("memory")) {
        (Some(cpu), Some(mem)) => {
            let cpu_ns: u64 = read(format!("{cpu}/cpuacct.usage"))?.trim().parse()?;
            let m = mem;
            let usage: u64 = read(format!("{m}/memory.usage_in_bytes"))?.trim().parse()?;
            let inactive = stat(&read(format!("{m}/memory.stat"))?, "total_inactive_file ");
            Ok((cpu_ns, usage.saturating_sub(inactive)))
        }
        _ => {
            let unified = cgroups.lines().find_map(|l| l.strip_prefix("0::")).context("no cgroup of the process")?;
            let d = format!("/sys/fs/cgroup{unified}");
            let cpu_ns = stat(&read(format!("{d}/cpu.stat"))?, "usage_usec ") * 1000;
            let current: u64 = read(format!("{d}/memory.current"))?.trim().parse()?;
            let inactive = stat(&read(format!("{d}/memory.stat"))?, "inactive_file ");
            Ok((cpu_ns, current.saturating_sub(inactive)))
        }
    }
}

/// A `metrics.k8s.io` quantity ("123456n", "2048Ki") in nanocores or bytes.
fn quantity(q: &str) -> Result<f64> {
    let (n, mult) = match q {
        q if q.ends_with('n') => (&q[..q.len() - 1], 1.0),
        q if q.ends_with("Ki") => (&q[..q.len() - 2], 1024.0),
        q if q.ends_with("Mi") => (&q[..q.len() - 2], 1024.0 * 1024.0),
        q => (q, 1.0),
    };
    Ok(n.parse::<f64>()? * mult)
}

/// `kubectl top` through the broker: a pod burning a core and holding
/// 30 MB shows what its cgroup counts, within 10 %; the nodes show theirs.
fn top_through_the_link(c: &Cluster) -> Result<()> {
    c.apply("burner", BURNER)?;
    let pod = c.wait_running("app=burner", 1, Duration::from_secs(60))?.remove(0);
    let agent = c.agent(&node_of(&pod));
    let pid = wait_for("burner's process", Duration::from_secs(20), || {
        Ok(agent.container("burner", "main")?.and_then(|c| c["pid"].as_i64()))
    })?;
    // The node measures CPU between one ask and the next (asks within 10 s
    // get the controller's last answer): the first ask starts its window,
    // the cgroup is read right after it and right before the second ask,
    // which ends the window; both windows are the same 11 s, give or take
    // a request's time.
    let path = "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/burner";
    std::thread::sleep(Duration::from_secs(2));
    c.k.ok(&["get", "--raw", path])?;
    let (cpu0, _) = cgroup_counters(pid)?;
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(11));
    let (cpu1, mem) = cgroup_counters(pid)?;
    let own_cores = (cpu1 - cpu0) as f64 / t0.elapsed().as_nanos() as f64;
    let raw = c.k.ok(&["get", "--raw", path])?;
    let m: Value = serde_json::from_str(&raw)?;
    ensure!(m["kind"] == "PodMetrics" && m["containers"][0]["name"] == "main", "{m}");
    let cores = quantity(m["containers"][0]["usage"]["cpu"].as_str().unwrap_or_default())? / 1e9;
    let bytes = quantity(m["containers"][0]["usage"]["memory"].as_str().unwrap_or_default())?;
    ensure!((cores - own_cores).abs() <= 0.1 * own_cores, "top says {cores} cores, the cgroup {own_cores}");
    ensure!((bytes - mem as f64).abs() <= 0.1 * mem as f64, "top says {bytes} B, the cgroup {mem} B");
    eprintln!("top: burner {cores:.3} cores (cgroup {own_cores:.3}), {bytes} B (cgroup {mem} B)");
    // kubectl top as users type it.
    let pods = c.k.ok(&["top", "pods", "-l", "app=burner"])?;
    ensure!(pods.lines().nth(1).is_some_and(|l| l.starts_with("burner ") && l.contains("Mi")), "{pods}");
    let nodes = c.k.ok(&["top", "nodes"])?;
    for (n, ..) in &c.agents {
        ensure!(nodes.lines().any(|l| l.starts_with(&format!("{n} "))), "{nodes}");
    }
    delete_pod(c, "burner")?;
    Ok(())
}

/// The controller's `/metrics` as `kubectl get --raw` fetches it.
fn controller_metrics(c: &Cluster) -> Result<Option<Vec<Sample>>> {
    parse_metrics(&c.k.ok(&["get", "--raw", "/metrics"])?, "prometheus")
}

/// `curl` of an agent's `/metrics`: (HTTP code, body).
fn curl_agent(c: &Cluster, node: &str, token: Option<&str>, openmetrics: bool) -> Result<(String, String)> {
    let port = c.agents.iter().find(|(n, ..)| n == node).context("no such agent")?.2;
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-w", "\n%{http_code}", &format!("http://127.0.0.1:{port}/metrics")]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    if openmetrics {
        cmd.args(["-H", "Accept: application/openmetrics-text; version=1.0.0"]);
    }
    let o = cmd.output()?;
    ensure!(o.status.success(), "curl: {}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, code) = out.rsplit_once('\n').context("curl output")?;
    Ok((code.to_owned(), body.to_owned()))
}

fn agent_metrics(c: &Cluster, node: &str) -> Result<Option<Vec<Sample>>> {
    let token = std::fs::read_to_string(c.agent(node).data.join("metrics.token"))?;
    let (code, body) = curl_agent(c, node, Some(token.trim()), false)?;
    ensure!(code == "200", "{code}: {body}");
    parse_metrics(&body, "prometheus")
}

const RESTARTER: &str = "apiVersion: v1
kind: Pod
metadata: {name: restarter}
spec:
  nodeName: n1
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: kedge.local/busybox:latest
    imagePullPolicy: IfNotPresent
    command: [sh, -c, 'exec sleep 3600']
  - name: blip
    image: kedge.local/busybox:latest
    imagePullPolicy: IfNotPresent
    command: [sh, -c, 'sleep 1; exit 1']
";

/// `/metrics` of the controller (through kubectl, behind its token) and of
/// an agent (`--metrics-listen`, behind its token file) parse with the
/// Prometheus project's own parsers, and the figures move with the cluster:
/// a pod created, run, exec'd into and restarting; a watch opened and closed.
fn metrics_of_both_binaries(c: &Cluster) -> Result<()> {
    // Without the tokens: refused.
    let o = Command::new("curl")
        .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("https://{}/metrics", c.ctl.addr))
        .output()?;
    ensure!(String::from_utf8_lossy(&o.stdout) == "401", "controller /metrics without a token: {o:?}");
    for token in [None, Some("0123456789abcdef0123456789abcdef")] {
        let (code, body) = curl_agent(c, "n1", token, false)?;
        ensure!(code == "401", "agent /metrics with token {token:?}: {code} {body}");
    }
    let Some(ctl0) = controller_metrics(c)? else { return Ok(()) };
    let Some(n1_0) = agent_metrics(c, "n1")? else { return Ok(()) };
    for state in ["joined", "online", "ready"] {
        ensure!(metric(&ctl0, "kedge_nodes", &[("state", state)]) == 2.0, "two nodes {state}: {ctl0:?}");
    }
    ensure!(metric(&ctl0, "kedge_fleet_connected", &[]) == 1.0, "connected");
    // Forgeries and garbage were published before this: counted.
    ensure!(metric(&ctl0, "kedge_fleet_rejected_messages_total", &[]) > 0.0, "no rejected messages counted");
    ensure!(metric(&ctl0, "kedge_store_size_bytes", &[]) > 0.0, "store size");
    ensure!(metric(&n1_0, "kedge_agent_link_up", &[]) == 1.0, "n1's link up");
    ensure!(metric(&n1_0, "kedge_agent_link_connects_total", &[]) >= 1.0, "n1 connected once at least");

    // A pod on n1 with a container that keeps exiting; an exec into it.
    let path = c.dir.join("restarter.yaml");
    std::fs::write(&path, RESTARTER)?;
    c.k.ok(&["create", "-f", &path.to_string_lossy()])?;
    wait_pod_running(c, "restarter")?;
    c.k.ok(&["exec", "restarter", "-c", "main", "--", "true"])?;
    let mut watch = c.k.command(&["get", "pods", "--watch"]).stdout(Stdio::null()).spawn()?;
    let watches0 = metric(&ctl0, "kedge_api_watches_open", &[]);
    let moved = wait_for("the controller's and n1's counters to move", Duration::from_secs(60), || {
        let (Some(ctl), Some(n1)) = (controller_metrics(c)?, agent_metrics(c, "n1")?) else { return Ok(None) };
        let more = |s: &[Sample], s0: &[Sample], name: &str, labels: &[(&str, &str)]| {
            metric(s, name, labels) > metric(s0, name, labels)
        };
        let api =
            more(&ctl, &ctl0, "kedge_api_requests_total", &[("verb", "POST"), ("resource", "pods"), ("code", "201")]);
        let exec = more(&ctl, &ctl0, "kedge_relay_sessions_total", &[("kind", "exec"), ("result", "started")]);
        let observed = more(&ctl, &ctl0, "kedge_fleet_snapshot_observed_seconds_count", &[]);
        let published = more(&ctl, &ctl0, "kedge_fleet_snapshots_published_total", &[]);
        let commits = more(&ctl, &ctl0, "kedge_store_commit_duration_seconds_count", &[]);
        let watching = metric(&ctl, "kedge_api_watches_open", &[]) > watches0;
        let pods = more(&n1, &n1_0, "kedge_agent_running_pods", &[]);
        let running = more(&n1, &n1_0, "kedge_agent_containers", &[("state", "running")]);
        let restarts = more(&n1, &n1_0, "kedge_agent_container_restarts_total", &[]);
        let all = [api, exec, observed, published, commits, watching, pods, running, restarts];
        eprintln!("metrics moved: {all:?}");
        Ok(all.iter().all(|m| *m).then_some(ctl))
    });
    let _ = watch.kill();
    let _ = watch.wait();
    let ctl1 = moved?;
    let latency = metric(&ctl1, "kedge_api_request_duration_seconds_count", &[("verb", "POST"), ("resource", "pods")]);
    ensure!(latency >= 1.0, "POST pods timed: {latency}");
    // The watch's end is counted too.
    wait_for("the watch to be counted closed", Duration::from_secs(20), || {
        let Some(ctl) = controller_metrics(c)? else { return Ok(Some(())) };
        Ok((metric(&ctl, "kedge_api_watches_open", &[]) == watches0).then_some(()))
    })?;
    // OpenMetrics when asked for, as Prometheus asks: the stricter parser takes it.
    let token = std::fs::read_to_string(c.agent("n1").data.join("metrics.token"))?;
    let (code, body) = curl_agent(c, "n1", Some(token.trim()), true)?;
    ensure!(code == "200" && body.ends_with("# EOF\n"), "{code}: {body}");
    parse_metrics(&body, "openmetrics")?;
    delete_pod(c, "restarter")?;
    Ok(())
}

/// `mosquitto_sub -t 'kedge/v1/fleet/#' -v` shows readable JSON per node.
fn dashboard_is_plain_json(c: &Cluster) -> Result<()> {
    wait_for("dashboard JSON of both nodes", Duration::from_secs(20), || {
        let out = Command::new("mosquitto_sub")
            .args(&c.mqtt_args)
            .args(["-t", "kedge/v1/fleet/#", "-v", "-W", "2"])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut seen = Vec::new();
        for line in text.lines() {
            let (topic, payload) = line.split_once(' ').context("topic and payload")?;
            let v: Value = serde_json::from_str(payload).with_context(|| format!("{topic} is not JSON: {payload}"))?;
            if let Some(node) = topic.strip_prefix("kedge/v1/fleet/nodes/") {
                ensure!(v["node"] == node && v["arch"].is_string() && v["pods"]["running"].is_u64(), "{line}");
                if v["ready"] == true && v["pods"]["running"].as_u64() >= Some(1) {
                    seen.push(node.to_string());
                }
            }
        }
        seen.sort();
        Ok((seen == ["n1", "n2"]).then_some(()))
    })
}

/// A client connecting with each node's name as its MQTT client id — what
/// the id used to be — knocks no node off the broker: a node's client id
/// is derived from its key.
fn no_client_takes_over_a_node(c: &Cluster) -> Result<()> {
    let lost = |n: &str| c.agent(n).log().matches("lost the broker").count();
    let before = (lost("n1"), lost("n2"));
    for id in ["n1", "n2"] {
        let out = Command::new("mosquitto_sub")
            .args(&c.mqtt_args)
            .args(["-i", id, "-t", "kedge/v1/fleet/summary", "-C", "1", "-W", "5"])
            .output()?;
        ensure!(out.status.success() && !out.stdout.is_empty(), "a client with id {id} connected: {out:?}");
    }
    // Nothing to wait for if it holds: a window for a reconnect to show.
    std::thread::sleep(Duration::from_secs(2));
    ensure!(
        (lost("n1"), lost("n2")) == before,
        "both nodes stayed connected:\n{}\n{}",
        tail(&c.agent("n1").log()),
        tail(&c.agent("n2").log())
    );
    Ok(())
}

/// Garbage on both node topics: both sides keep running and say why.
fn garbage_is_dropped(c: &Cluster) -> Result<()> {
    let (host, port) = c.broker.trim_start_matches("mqtt://").rsplit_once(':').context("broker url")?;
    for topic in ["kedge/v1/nodes/n1/desired", "kedge/v1/nodes/n1/status"] {
        let st = Command::new("mosquitto_pub")
            .args(["-h", host, "-p", port, "-t", topic, "-m", "\u{1}garbage that is not CBOR"])
            .status()?;
        ensure!(st.success(), "mosquitto_pub to {topic}");
    }
    wait_for("the agent to log the rejected snapshot", Duration::from_secs(10), || {
        Ok(c.agent("n1").log().contains("desired snapshot rejected").then_some(()))
    })?;
    // The controller writes nothing for what it cannot verify (no Event a
    // forger could fill the API with); it counts it on n1's dashboard.
    wait_for("n1's dashboard to count the garbage", Duration::from_secs(15), || {
        let j = dashboard(c, "kedge/v1/fleet/nodes/n1")?;
        Ok((j["rejected"]["by_controller"].as_u64() > Some(0)).then_some(()))
    })?;
    // Both still work: a scale-down converges on the nodes.
    c.k.ok(&["scale", "deployment/web", "--replicas=2"])?;
    c.wait_running("app=web", 2, Duration::from_secs(60))?;
    c.wait_node_ready("n1")?;
    Ok(())
}

/// The retained dashboard JSON on `topic`, as `mosquitto_sub` shows it.
fn dashboard(c: &Cluster, topic: &str) -> Result<Value> {
    let out = Command::new("mosquitto_sub").args(&c.mqtt_args).args(["-t", topic, "-C", "1", "-W", "5"]).output()?;
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// A second joined node (n2, with its own key from its data dir) publishes
/// a report under n1's name — claiming n1 runs nothing and sits under disk
/// pressure — and an unsigned one, and replays n1's own old report: the
/// controller takes none of it; n1's status and pods stay as they were.
fn reports_under_another_name_are_dropped(c: &Cluster) -> Result<()> {
    use kedge_common::envelope;
    use kedge_common::sign::{Purpose, SigningKey};
    use kedge_common::wire::NodeReport;
    let (host, port) = c.broker.trim_start_matches("mqtt://").rsplit_once(':').context("broker url")?;
    let topic = "kedge/v1/nodes/n1/status";
    let genuine = Command::new("mosquitto_sub")
        .args(["-h", host, "-p", port, "-t", topic, "-C", "1", "-N", "-W", "5"])
        .output()?;
    let old: NodeReport = envelope::decode(&genuine.stdout, usize::MAX)?;
    let n2_key = SigningKey::from_pkcs8(&std::fs::read(c.agent("n2").data.join("node.key"))?)?;
    let mut forged = NodeReport { pods: Vec::new(), seq: old.seq + (1 << 40), ..old.clone() };
    // The opposite of what n1 says (a CI machine's disk may be full).
    forged.pressure.disk = !old.pressure.disk;
    let disk_was = if old.pressure.disk { "True" } else { "False" };
    let dir = tempfile::tempdir()?;
    let publish = |payload: &[u8]| -> Result<()> {
        let file = dir.path().join("payload");
        std::fs::write(&file, payload)?;
        let st = Command::new("mosquitto_pub")
            .args(["-h", host, "-p", port, "-t", topic, "-q", "1", "-f"])
            .arg(&file)
            .status()?;
        ensure!(st.success(), "mosquitto_pub to {topic}");
        Ok(())
    };
    let pods_on_n1 = || -> Result<Vec<String>> {
        let listed = c.k.json(&["get", "pods", "--field-selector", "spec.nodeName=n1"])?;
        let mut v: Vec<String> = listed["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| format!("{} {}", p["metadata"]["name"], p["status"]["phase"]))
            .collect();
        v.sort();
        Ok(v)
    };
    let before = c.dashboard_rejected("n1")?;
    let pods_before = pods_on_n1()?;
    publish(&envelope::encode_signed(&forged, Purpose::Report, &n2_key)?)?;
    publish(&envelope::encode(&forged)?)?;
    publish(&genuine.stdout)?;
    wait_for("the three counted on n1's dashboard", Duration::from_secs(15), || {
        Ok((c.dashboard_rejected("n1")? >= before + 3).then_some(()))
    })?;
    let n1 = c.k.json(&["get", "node", "n1"])?;
    let disk = n1["status"]["conditions"].as_array().into_iter().flatten().find(|c| c["type"] == "DiskPressure");
    ensure!(disk.is_some_and(|d| d["status"] == disk_was), "n1's status untouched: {n1}");
    ensure!(ready(&n1), "n1 still Ready");
    ensure!(pods_on_n1()? == pods_before, "n1's pods untouched");
    Ok(())
}

/// The broker is hostile (design.md §3a): a client with no keys publishes,
/// retained, what would own node n1 as root — valid CBOR, a far higher
/// generation, a privileged pod mounting the host's `/` — and a network
/// table; then replays n1's own old signed snapshot. The agent takes none
/// of it, says why, and its pods run on.
fn forgeries_are_refused(c: &Cluster) -> Result<()> {
    use kedge_common::envelope;
    use kedge_common::wire::NodeDesired;
    let (host, port) = c.broker.trim_start_matches("mqtt://").rsplit_once(':').context("broker url")?;
    let topic = "kedge/v1/nodes/n1/desired";
    // n1's genuine snapshot as the broker holds it (signed by the controller).
    let genuine = Command::new("mosquitto_sub")
        .args(["-h", host, "-p", port, "-t", topic, "-C", "1", "-N", "-W", "5"])
        .output()?;
    ensure!(!genuine.stdout.is_empty(), "n1's retained snapshot: {genuine:?}");
    // Sealed to n1: no one else reads even its generation. Any higher one does.
    // n1's pods and their processes, as its agent shows them.
    let running = || -> Result<Vec<(String, i64)>> {
        let mut v: Vec<(String, i64)> = c
            .agent("n1")
            .ps()?
            .iter()
            .flat_map(|p| {
                let pod = p["name"].as_str().unwrap_or_default().to_owned();
                let pids: Vec<i64> =
                    p["containers"].as_array().into_iter().flatten().map(|c| c["pid"].as_i64().unwrap_or(0)).collect();
                pids.into_iter().map(move |pid| (pod.clone(), pid))
            })
            .collect();
        v.sort();
        Ok(v)
    };
    // Once n1 runs exactly what the API has for it (the scale-down before
    // has settled).
    let before = wait_for("n1 to run what the API has for it", Duration::from_secs(30), || {
        let listed = c.k.json(&["get", "pods", "--field-selector", "spec.nodeName=n1"])?;
        let mut want: Vec<String> = listed["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| p["metadata"]["name"].as_str().unwrap_or_default().to_owned())
            .collect();
        want.sort();
        let now = running()?;
        let mut have: Vec<String> = now.iter().map(|(pod, _)| pod.clone()).collect();
        have.dedup();
        Ok((!want.is_empty() && have == want).then_some(now))
    })?;
    let evil_pod: kedge_common::pod::Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "evil", "namespace": "default", "uid": "evil-uid"},
        "spec": {"hostPID": true, "containers": [{"name": "root", "image": "kedge.local/busybox:latest",
            "imagePullPolicy": "IfNotPresent", "command": ["sleep", "3600"],
            "securityContext": {"privileged": true}, "volumeMounts": [{"name": "host", "mountPath": "/host"}]}],
            "volumes": [{"name": "host", "hostPath": {"path": "/"}}]}
    }))?;
    let forged =
        NodeDesired { node: "n1".into(), generation: u64::MAX / 4, pods: vec![evil_pod], delete_volumes: Vec::new() };
    let table = kedge_common::network::ClusterNetwork { generation: u64::MAX / 2, ..Default::default() };
    let dir = tempfile::tempdir()?;
    let publish = |topic: &str, payload: &[u8]| -> Result<()> {
        let file = dir.path().join("payload");
        std::fs::write(&file, payload)?;
        let st = Command::new("mosquitto_pub")
            .args(["-h", host, "-p", port, "-t", topic, "-r", "-q", "1", "-f"])
            .arg(&file)
            .status()?;
        ensure!(st.success(), "mosquitto_pub to {topic}");
        Ok(())
    };
    publish(topic, &envelope::encode(&forged)?)?;
    publish("kedge/v1/cluster/network", &envelope::encode(&table)?)?;
    c.agent("n1").wait_for("the forged snapshot and table refused", Duration::from_secs(15), || {
        let log = c.agent("n1").log();
        Ok((log.contains("unsigned desired message") && log.contains("unsigned network message")).then_some(()))
    })?;
    // The genuine old snapshot again: not newer than what n1 applied.
    let ignored = |log: &str| log.matches("desired snapshot not newer than the one applied").count();
    let seen = ignored(&c.agent("n1").log());
    publish(topic, &genuine.stdout)?;
    c.agent("n1").wait_for("the replayed snapshot ignored", Duration::from_secs(15), || {
        Ok((ignored(&c.agent("n1").log()) > seen).then_some(()))
    })?;
    std::thread::sleep(Duration::from_secs(2));
    let pods = c.agent("n1").ps()?;
    ensure!(pods.iter().all(|p| p["name"] != "evil"), "no forged pod on n1: {pods:?}");
    let after = running()?;
    ensure!(after == before, "n1's pods run on untouched: {before:?} → {after:?}");
    wait_for("a SnapshotRejected event", Duration::from_secs(15), || {
        let ev = c.k.json(&["get", "events", "--field-selector", "reason=SnapshotRejected"])?;
        Ok(ev["items"].as_array().is_some_and(|i| !i.is_empty()).then_some(()))
    })?;
    Ok(())
}

/// Sessions on the broker: a log read through it is not readable there; a
/// recorded session open replayed, and one signed by another key, are
/// refused by the node (logged, an Event) and serve nothing.
fn sessions_refuse_forgeries_and_replays(c: &Cluster) -> Result<()> {
    let (host, port) = c.broker.trim_start_matches("mqtt://").rsplit_once(':').context("broker url")?;
    let pod = c.pods("app=agent-ds")?.into_iter().find(|p| node_of(p) == "n1").context("the DaemonSet pod on n1")?;
    let sub = |topic: &str, count: &str, wait: &str| -> Result<Child> {
        Ok(Command::new("mosquitto_sub")
            .args(["-h", host, "-p", port, "-t", topic, "-C", count, "-N", "-W", wait])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?)
    };
    // Everything of n1's sessions, and the open alone, while kubectl reads the log.
    let everything = sub("kedge/v1/nodes/n1/rpc/#", "1000", "8")?;
    let open = sub("kedge/v1/nodes/n1/rpc/open", "1", "8")?;
    std::thread::sleep(Duration::from_millis(500));
    let log = c.k.ok(&["logs", &name(&pod)])?;
    ensure!(log == "started on n1\n", "{log:?}");
    let open = open.wait_with_output()?.stdout;
    let everything = everything.wait_with_output()?.stdout;
    ensure!(!open.is_empty() && everything.len() > open.len(), "the session's messages were seen on the broker");
    ensure!(!everything.windows(10).any(|w| w == b"started on"), "the log is not readable on the broker");

    let refused = |log: &str| log.matches("session message refused").count();
    let publish = |topic: &str, payload: &[u8]| -> Result<()> {
        let file = c.dir.join("session-payload");
        std::fs::write(&file, payload)?;
        let st = Command::new("mosquitto_pub")
            .args(["-h", host, "-p", port, "-t", topic, "-q", "1", "-f"])
            .arg(&file)
            .status()?;
        ensure!(st.success(), "mosquitto_pub to {topic}");
        Ok(())
    };
    // A forged open: sealed to n1 (its sealing key is on its Node), signed
    // by a key that is not the controller's.
    let node = c.k.json(&["get", "node", "n1"])?;
    let seal: kedge_common::seal::SealPublic = node["metadata"]["annotations"]["kedge.io/node-seal-key"]
        .as_str()
        .context("n1's sealing key")?
        .parse()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let (forger, _) = kedge_common::sign::SigningKey::generate()?;
    let forged = kedge_common::session::SessionOpen {
        node: "n1".into(),
        sid: "forged".into(),
        counter: u64::MAX,
        key: vec![7; 32].into(),
        window: 1 << 20,
        request: kedge_common::session::Request::Logs(kedge_common::session::LogsRequest {
            namespace: "default".into(),
            pod: name(&pod),
            container: "main".into(),
            ..Default::default()
        }),
    };
    let forged =
        kedge_common::envelope::encode_sealed(&forged, kedge_common::sign::Purpose::SessionOpen, &forger, Some(&seal))?;
    for (what, payload) in [("the replayed open", open.as_slice()), ("the forged open", forged.as_slice())] {
        let answers = sub("kedge/v1/nodes/n1/rpc/+/out", "1", "4")?;
        std::thread::sleep(Duration::from_millis(300));
        let seen = refused(&c.agent("n1").log());
        publish("kedge/v1/nodes/n1/rpc/open", payload)?;
        c.agent("n1").wait_for(&format!("{what} refused"), Duration::from_secs(10), || {
            Ok((refused(&c.agent("n1").log()) > seen).then_some(()))
        })?;
        let answered = answers.wait_with_output()?.stdout;
        ensure!(answered.is_empty(), "{what}: the node served nothing ({} bytes went out)", answered.len());
    }
    let log = c.agent("n1").log();
    ensure!(log.contains("refused as a replay") && log.contains("does not verify"), "the reasons are logged");
    wait_for("SessionRefused events", Duration::from_secs(15), || {
        let ev = c.k.json(&["get", "events", "--field-selector", "reason=SessionRefused"])?;
        Ok(ev["items"].as_array().is_some_and(|i| !i.is_empty()).then_some(()))
    })?;
    // The genuine path still works.
    ensure!(c.k.ok(&["logs", &name(&pod)])? == "started on n1\n");
    Ok(())
}

#[test]
fn two_agents_on_the_embedded_broker() -> Result<()> {
    if !prerequisites() {
        return Ok(());
    }
    let Some(c) = Cluster::start(&["n1", "n2"], None, &[])? else { return Ok(()) };
    workloads_on_two_agents(&c)?;
    logs_through_the_link(&c)?;
    exec_through_the_link(&c)?;
    attach_through_the_link(&c)?;
    graceful_termination(&c)?;
    port_forward_through_the_link(&c)?;
    top_through_the_link(&c)?;
    dashboard_is_plain_json(&c)?;
    no_client_takes_over_a_node(&c)?;
    garbage_is_dropped(&c)?;
    forgeries_are_refused(&c)?;
    sessions_refuse_forgeries_and_replays(&c)?;
    reports_under_another_name_are_dropped(&c)?;
    metrics_of_both_binaries(&c)?;
    c.k.ok(&["delete", "deployment/web", "daemonset/agent-ds"])?;
    Ok(())
}

/// The controller's user name on the external broker.
const CONTROLLER_USER: &str = "kedge-controller";

/// Mosquitto from Debian's packages, as a careful customer runs it: TLS
/// with their own CA on two loopback ports — one where clients log in with
/// a password (or not at all, as dashboards), one where they show a client
/// certificate — and the ACL from `kedge-controller broker-acl`.
struct Mosquitto {
    child: Child,
    dir: PathBuf,
    /// The password listener.
    url: String,
    /// The client-certificate listener.
    cert_url: String,
    /// Users who log in with a client certificate.
    cert_users: Vec<String>,
    /// Users who log in with a password, and their passwords.
    passwords: Vec<(String, String)>,
}

impl Mosquitto {
    fn start(dir: &Path, password_users: &[&str], cert_users: &[&str]) -> Result<Mosquitto> {
        std::fs::create_dir_all(dir)?;
        let free = || -> Result<u16> { Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()) };
        let (port, cert_port) = (free()?, free()?);
        // The customer's CA, the broker's certificate, and a client
        // certificate per certificate user (CN: the node's name).
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name.push(rcgen::DnType::CommonName, "customer CA");
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = rcgen::Issuer::new(ca, ca_key);
        std::fs::write(dir.join("ca.pem"), ca_cert.pem())?;
        let issue = |name: &str, cn: &str| -> Result<()> {
            let key = rcgen::KeyPair::generate()?;
            let mut p = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
            p.distinguished_name.push(rcgen::DnType::CommonName, cn);
            std::fs::write(dir.join(format!("{name}.pem")), p.signed_by(&key, &issuer)?.pem())?;
            std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem())?;
            Ok(())
        };
        issue("server", "localhost")?;
        for u in cert_users {
            issue(u, u)?;
        }
        let passwd = dir.join("passwd");
        std::fs::write(&passwd, "")?;
        let mut passwords = Vec::new();
        for user in password_users {
            let password = format!("pw-{user}-{}", std::process::id());
            let st =
                Command::new("mosquitto_passwd").arg("-b").arg(&passwd).args([user, &password.as_str()]).status()?;
            ensure!(st.success(), "mosquitto_passwd {user}");
            passwords.push((user.to_string(), password));
        }
        let acl = Command::new(kedge_tests::binary("kedge-controller")?)
            .args(["broker-acl", "--controller-user", CONTROLLER_USER])
            .output()?;
        ensure!(acl.status.success(), "broker-acl: {}", String::from_utf8_lossy(&acl.stderr));
        std::fs::write(dir.join("acl"), &acl.stdout)?;
        let d = dir.display();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "user root\npersistence false\nper_listener_settings false\nallow_anonymous true\n\
                 password_file {d}/passwd\nacl_file {d}/acl\n\
                 listener {port} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n\
                 listener {cert_port} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n\
                 require_certificate true\nuse_identity_as_username true\n"
            ),
        )?;
        Ok(Mosquitto {
            child: spawn_mosquitto(&conf, &[port, cert_port])?,
            dir: dir.to_path_buf(),
            url: format!("mqtts://127.0.0.1:{port}"),
            cert_url: format!("mqtts://127.0.0.1:{cert_port}"),
            cert_users: cert_users.iter().map(|u| u.to_string()).collect(),
            passwords,
        })
    }

    /// Kills the broker (SIGKILL: with `persistence false` its sessions and
    /// retained messages are gone) and starts it again after `down`.
    fn kill_and_restart(&mut self, down: Duration) -> Result<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(down);
        let port = |url: &str| -> Result<u16> { Ok(url.rsplit(':').next().context("port")?.parse()?) };
        self.child = spawn_mosquitto(&self.dir.join("mosquitto.conf"), &[port(&self.url)?, port(&self.cert_url)?])?;
        Ok(())
    }

    /// The flags that make `user` (a node, or the controller) log in.
    fn login(&self, user: &str) -> Result<Vec<String>> {
        let d = self.dir.display();
        let ca = format!("{d}/ca.pem");
        if self.cert_users.iter().any(|u| u == user) {
            return Ok([
                "--broker",
                &self.cert_url,
                "--broker-ca",
                &ca,
                "--broker-cert",
                &format!("{d}/{user}.pem"),
                "--broker-key",
                &format!("{d}/{user}.key"),
            ]
            .map(str::to_owned)
            .to_vec());
        }
        let password = self.passwords.iter().find(|(u, _)| u == user).map(|(_, p)| p.clone());
        let password = password.with_context(|| format!("{user} has no login on this broker"))?;
        if user == CONTROLLER_USER {
            let file = self.dir.join("controller.pass");
            std::fs::write(&file, &password)?;
            return Ok([
                "--broker",
                &self.url,
                "--broker-ca",
                &ca,
                "--broker-username",
                user,
                "--broker-password-file",
                &file.display().to_string(),
            ]
            .map(str::to_owned)
            .to_vec());
        }
        Ok(["--broker", &self.url, "--broker-ca", &ca, "--broker-username", user, "--broker-password", &password]
            .map(str::to_owned)
            .to_vec())
    }

    /// `mosquitto_sub` arguments of a client without a login.
    fn anonymous(&self) -> Vec<String> {
        let port = self.url.rsplit(':').next().unwrap_or_default();
        ["-h", "127.0.0.1", "-p", port, "--cafile", &format!("{}/ca.pem", self.dir.display())]
            .map(str::to_owned)
            .to_vec()
    }

    /// `mosquitto_sub` arguments of certificate user `user`.
    fn as_cert_user(&self, user: &str) -> Vec<String> {
        let port = self.cert_url.rsplit(':').next().unwrap_or_default();
        let d = self.dir.display();
        [
            "-h",
            "127.0.0.1",
            "-p",
            port,
            "--cafile",
            &format!("{d}/ca.pem"),
            "--cert",
            &format!("{d}/{user}.pem"),
            "--key",
            &format!("{d}/{user}.key"),
        ]
        .map(str::to_owned)
        .to_vec()
    }
}

fn spawn_mosquitto(conf: &Path, ports: &[u16]) -> Result<Child> {
    // Appended: a restarted broker keeps the earlier runs' log.
    let log = std::fs::File::options().create(true).append(true).open(conf.with_extension("log"))?;
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting mosquitto")?;
    wait_for("mosquitto to listen", Duration::from_secs(10), || {
        Ok(ports.iter().all(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok()).then_some(()))
    })?;
    Ok(child)
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The broker's ACL from `broker-acl` holds: plain MQTT gets nowhere, a
/// client without a login reads no node's snapshot, n2's certificate
/// reads its own snapshot but not n1's (with n1's name as client id,
/// knocking no one off).
fn the_acl_confines_each_node(c: &Cluster, broker: &Mosquitto) -> Result<()> {
    let sub = |args: &[String], extra: &[&str]| -> Result<std::process::Output> {
        Ok(Command::new("mosquitto_sub").args(args).args(extra).args(["-C", "1", "-W", "4"]).output()?)
    };
    let port = broker.url.rsplit(':').next().context("port")?;
    let plain = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", port, "-t", "#", "-C", "1", "-W", "4"])
        .output()?;
    ensure!(!plain.status.success() && plain.stdout.is_empty(), "plain MQTT on the TLS port: {plain:?}");
    let anon = sub(&broker.anonymous(), &["-t", "kedge/v1/nodes/+/desired"])?;
    ensure!(anon.stdout.is_empty(), "a client without a login read a snapshot ({} bytes)", anon.stdout.len());
    let n2 = broker.as_cert_user("n2");
    let other = sub(&n2, &["-t", "kedge/v1/nodes/n1/desired"])?;
    ensure!(other.stdout.is_empty(), "n2's login read n1's snapshot ({} bytes)", other.stdout.len());
    let lost = |n: &str| c.agent(n).log().matches("lost the broker").count();
    let losses = (lost("n1"), lost("n2"));
    let own = sub(&n2, &["-i", "n1", "-t", "kedge/v1/nodes/n2/desired"])?;
    ensure!(own.status.success() && !own.stdout.is_empty(), "n2's login reads its own snapshot: {own:?}");
    std::thread::sleep(Duration::from_secs(2));
    ensure!((lost("n1"), lost("n2")) == losses, "both nodes stayed connected:\n{}", tail(&c.agent("n1").log()));
    no_client_takes_over_a_node(c)
}

#[test]
fn two_agents_through_mosquitto() -> Result<()> {
    if !prerequisites() || !require(which("mosquitto"), "mosquitto (the external broker)") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    // n1 logs in with a password, n2 with a client certificate.
    let broker = Mosquitto::start(dir.path(), &[CONTROLLER_USER, "n1"], &["n2"])?;
    let Some(c) = Cluster::start(&["n1", "n2"], Some(&broker), &[])? else { return Ok(()) };
    workloads_on_two_agents(&c)?;
    logs_through_the_link(&c)?;
    exec_through_the_link(&c)?;
    attach_through_the_link(&c)?;
    port_forward_through_the_link(&c)?;
    top_through_the_link(&c)?;
    dashboard_is_plain_json(&c)?;
    the_acl_confines_each_node(&c, &broker)?;
    c.k.ok(&["delete", "deployment/web", "daemonset/agent-ds"])?;
    drop(c);
    Ok(())
}

/// Chaos, short form: half a second ± 200 ms each way between the broker
/// and everyone (controller and node), through a delaying proxy (this
/// kernel has no `netem`). Connecting over TLS takes about four of those
/// delays, longer than the link's 1 s tick: both ends must connect anyway
/// (rumqttc's connect is not cancel-safe, and a tick used to drop it),
/// the node turns Ready and a Deployment converges with exactly its pods.
#[test]
fn a_slow_link_to_the_broker_still_connects_and_pods_converge() -> Result<()> {
    if !prerequisites() || !require(which("mosquitto"), "mosquitto (the external broker)") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let mut broker = Mosquitto::start(dir.path(), &[CONTROLLER_USER, "n1"], &[])?;
    let upstream: std::net::SocketAddr = broker.url.trim_start_matches("mqtts://").parse()?;
    let slow =
        kedge_tests::slowlink::SlowLink::start(upstream, Duration::from_millis(500), Duration::from_millis(200))?;
    broker.url = format!("mqtts://{}", slow.addr());
    let Some(c) = Cluster::start(&["n1"], Some(&broker), &[])? else { return Ok(()) };
    c.apply("slow", &deployment("slow", 3, ""))?;
    let pods = c.wait_running("app=slow", 3, Duration::from_secs(90))?;
    let mut want: Vec<String> = pods.iter().map(name).collect();
    want.sort();
    let running = c.pods_on("n1", "slow-")?;
    ensure!(running == want, "the node runs exactly the API's pods, no duplicate, none lost: {running:?} vs {want:?}");
    c.k.ok(&["delete", "deployment/slow"])?;
    c.agent("n1").wait_for("the node to remove the pods", Duration::from_secs(60), || {
        Ok(c.pods_on("n1", "slow-")?.is_empty().then_some(()))
    })?;
    drop(c);
    drop(slow);
    Ok(())
}

/// Chaos, short form: the broker killed every 4 s for a minute
/// (`KEDGE_CHAOS_SECONDS` makes it longer), each time losing every session
/// and retained message (Mosquitto without persistence), while a Deployment
/// scales up and down. Afterwards each node runs exactly the API's pods
/// placed on it: none lost, none twice.
#[test]
fn a_broker_killed_every_few_seconds_loses_and_doubles_no_pod() -> Result<()> {
    if !prerequisites() || !require(which("mosquitto"), "mosquitto (the external broker)") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let mut broker = Mosquitto::start(dir.path(), &[CONTROLLER_USER, "n1", "n2"], &[])?;
    let Some(c) = Cluster::start(&["n1", "n2"], Some(&broker), &[])? else { return Ok(()) };
    c.apply("chaos", &deployment("chaos", 4, ""))?;
    c.wait_running("app=chaos", 4, Duration::from_secs(90))?;
    let chaos = std::env::var("KEDGE_CHAOS_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    let (start, mut kills) = (Instant::now(), 0usize);
    while start.elapsed() < Duration::from_secs(chaos) {
        std::thread::sleep(Duration::from_secs(4));
        broker.kill_and_restart(Duration::from_millis(500))?;
        kills += 1;
        if kills % 3 == 1 {
            let replicas = [7, 2, 5][(kills / 3) % 3];
            c.k.ok(&["scale", "deployment/chaos", &format!("--replicas={replicas}")])?;
        }
    }
    c.k.ok(&["scale", "deployment/chaos", "--replicas=3"])?;
    let pods = c.wait_running("app=chaos", 3, Duration::from_secs(120))?;
    for n in ["n1", "n2"] {
        let mut want: Vec<String> = pods.iter().filter(|p| node_of(p) == n).map(name).collect();
        want.sort();
        c.agent(n).wait_for(&format!("{n} to run exactly its pods {want:?}"), Duration::from_secs(60), || {
            Ok((c.pods_on(n, "chaos-")? == want).then_some(()))
        })?;
    }
    eprintln!("chaos: {kills} broker kills in {:?}", start.elapsed());
    c.k.ok(&["delete", "deployment/chaos"])?;
    for n in ["n1", "n2"] {
        c.agent(n).wait_for("the node to remove the pods", Duration::from_secs(60), || {
            Ok(c.pods_on(n, "chaos-")?.is_empty().then_some(()))
        })?;
    }
    drop(c);
    Ok(())
}

#[test]
fn scale_down_while_a_node_is_offline() -> Result<()> {
    if !prerequisites() {
        return Ok(());
    }
    let Some(mut c) = Cluster::start(&["n1", "n2"], None, &[])? else { return Ok(()) };
    let pinned = "      nodeSelector: {kubernetes.io/hostname: n2}\n";
    c.apply("web", &deployment("web", 4, pinned))?;
    c.wait_running("app=web", 4, Duration::from_secs(60))?;
    c.agent_mut("n2").kill();
    // kubectl logs of a pod there: an answer in seconds, naming the node.
    let on_n2 = c.pods("app=web")?.into_iter().find(|p| node_of(p) == "n2").context("a pod on n2")?;
    let t = Instant::now();
    let e = c.k.fails(&["logs", &name(&on_n2)])?;
    ensure!(t.elapsed() < Duration::from_secs(6), "answered after {:?}: {e}", t.elapsed());
    ensure!(e.contains("node \"n2\"") && (e.contains("offline") || e.contains("did not answer")), "{e}");
    // So does kubectl exec (its WebSocket attempt, then its SPDY retry).
    let t = Instant::now();
    let e = c.k.fails(&["exec", &name(&on_n2), "--", "true"])?;
    ensure!(t.elapsed() < Duration::from_secs(6), "answered after {:?}: {e}", t.elapsed());
    ensure!(e.contains("node \"n2\"") && (e.contains("offline") || e.contains("did not answer")), "{e}");
    c.k.ok(&["scale", "deployment/web", "--replicas=1"])?;
    let deleting = |p: &Value| p["metadata"].get("deletionTimestamp").is_some();
    let left = wait_for("the API to keep one pod", Duration::from_secs(30), || {
        let pods: Vec<Value> = c.pods("app=web")?.into_iter().filter(|p| !deleting(p)).collect();
        Ok((pods.len() == 1).then_some(pods))
    })?;
    // The three others wait as Terminating for their node (design.md §4:
    // nothing is force-removed from a node that may come back).
    std::thread::sleep(Duration::from_secs(3));
    let shown = c.k.ok(&["get", "pods", "-l", "app=web", "--no-headers"])?;
    ensure!(shown.matches("Terminating").count() == 3, "while n2 is away: {shown}");
    ensure!(c.agent("n2").ps()?.len() == 4, "the offline node still runs its four pods");
    c.agent_mut("n2").start()?;
    let keep = name(&left[0]);
    c.agent("n2").wait_for("the reconnected node to remove its surplus pods", Duration::from_secs(30), || {
        let ps = c.agent("n2").ps()?;
        Ok((ps.len() == 1 && ps[0]["name"] == keep).then_some(()))
    })?;
    // Stopped there, the three are removed from the API too.
    c.wait_running("app=web", 1, Duration::from_secs(30))?;
    c.k.ok(&["delete", "deployment/web"])?;
    Ok(())
}

const HELD_BUDGET: &str = "apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: held}
spec:
  minAvailable: 2
  selector: {matchLabels: {app: held}}
";

/// `kubectl drain NODE --ignore-daemonsets` on real agents: the node is
/// cordoned, its pods are evicted (so replaced on the other node) except
/// DaemonSet pods, and a PodDisruptionBudget with `minAvailable: 2` over
/// two replicas holds the drain (kubectl retries the 429) until a third
/// replica lets one go.
#[test]
fn drain_is_held_by_a_disruption_budget() -> Result<()> {
    if !prerequisites() {
        return Ok(());
    }
    let Some(c) = Cluster::start(&["n1", "n2"], None, &[])? else { return Ok(()) };
    c.apply("agent-ds", DAEMONSET)?;
    // Both replicas on n2: n1 is cordoned while they are placed.
    c.k.ok(&["cordon", "n1"])?;
    c.apply("held", &deployment("held", 2, ""))?;
    c.wait_running("app=held", 2, Duration::from_secs(90))?;
    c.k.ok(&["uncordon", "n1"])?;
    c.wait_running("app=agent-ds", 2, Duration::from_secs(60))?;
    c.apply("held-budget", HELD_BUDGET)?;
    wait_for("the budget to be computed", Duration::from_secs(20), || {
        let b = c.k.json(&["get", "pdb", "held"])?;
        Ok((b["status"]["currentHealthy"] == 2 && b["status"]["observedGeneration"] == 1).then_some(()))
    })?;
    let shown = c.k.ok(&["get", "pdb", "held", "--no-headers"])?;
    ensure!(shown.split_whitespace().collect::<Vec<_>>()[..4] == ["held", "2", "N/A", "0"], "kubectl get pdb: {shown}");
    let on_n2 = |c: &Cluster| -> Result<Vec<String>> {
        Ok(c.pods("app=held")?.iter().filter(|p| node_of(p) == "n2").map(name).collect())
    };
    ensure!(on_n2(&c)?.len() == 2, "both held pods on n2");

    let drain =
        c.k.command(&["drain", "n2", "--ignore-daemonsets", "--timeout=120s"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
    std::thread::sleep(Duration::from_secs(8));
    let node = c.k.json(&["get", "node", "n2"])?;
    ensure!(node["spec"]["unschedulable"] == true, "cordoned: {}", node["spec"]);
    ensure!(on_n2(&c)?.len() == 2, "the budget holds both pods on n2");
    let events = c.k.ok(&["get", "pdb", "held", "-o", "jsonpath={.status.disruptionsAllowed}"])?;
    ensure!(events == "0", "no disruption allowed: {events}");

    // A third replica (on n1: n2 is cordoned) lets the drain go on.
    c.k.ok(&["scale", "deployment/held", "--replicas=3"])?;
    let o = drain.wait_with_output()?;
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    ensure!(o.status.success(), "kubectl drain: {out}\n{err}");
    ensure!(err.contains("disruption budget"), "kubectl saw the budget hold it: {err}");
    ensure!(out.contains("drained"), "{out}");
    let left: Vec<Value> = c.k.json(&["get", "pods", "--field-selector", "spec.nodeName=n2"])?["items"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    ensure!(
        left.iter().all(|p| p["metadata"]["labels"]["app"] == "agent-ds"),
        "only the DaemonSet pod stays on n2: {:?}",
        left.iter().map(name).collect::<Vec<_>>()
    );
    c.wait_running("app=held", 3, Duration::from_secs(60))?;
    ensure!(c.pods("app=held")?.iter().all(|p| node_of(p) == "n1"), "all held pods moved to n1");
    c.agent("n2").wait_for("n2 to stop the evicted pods", Duration::from_secs(30), || {
        Ok(c.agent("n2").ps()?.iter().all(|p| !p["name"].as_str().unwrap_or("").starts_with("held-")).then_some(()))
    })?;
    c.k.ok(&["uncordon", "n2"])?;
    Ok(())
}

/// A run-once pod template running `command`, indented by `indent` spaces.
fn run_once_template(command: &str, indent: usize) -> String {
    let lines = [
        "template:".to_owned(),
        "  spec:".to_owned(),
        "    restartPolicy: Never".to_owned(),
        "    terminationGracePeriodSeconds: 1".to_owned(),
        "    containers:".to_owned(),
        "    - name: main".to_owned(),
        "      image: kedge.local/busybox:latest".to_owned(),
        "      imagePullPolicy: IfNotPresent".to_owned(),
        format!("      command: [sh, -c, '{command}']"),
    ];
    lines.iter().map(|l| format!("{}{l}\n", " ".repeat(indent))).collect()
}

fn job(name: &str, extra_spec: &str, command: &str) -> String {
    format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata: {{name: {name}}}\nspec:\n{extra_spec}{}",
        run_once_template(command, 2)
    )
}

/// Jobs on a real agent: `completions: 3, parallelism: 2` runs at most two
/// pods at a time until three have succeeded, and `kubectl wait
/// --for=condition=complete` returns; an Indexed Job gives each pod its
/// index; a failing Job stops at its `backoffLimit` (after the pod failure
/// backoff) with reason `BackoffLimitExceeded`.
#[test]
fn jobs_run_to_completion_or_to_their_backoff_limit() -> Result<()> {
    if !prerequisites() {
        return Ok(());
    }
    let Some(c) = Cluster::start(&["n1"], None, &[])? else { return Ok(()) };
    c.apply("count", &job("count", "  completions: 3\n  parallelism: 2\n", "echo working; sleep 2"))?;
    c.apply(
        "indexed",
        &job(
            "indexed",
            "  completions: 3\n  parallelism: 3\n  completionMode: Indexed\n",
            "echo index $JOB_COMPLETION_INDEX",
        ),
    )?;
    c.apply("fails", &job("fails", "  backoffLimit: 1\n", "echo failing; exit 3"))?;
    let mut most = 0;
    wait_for("job count to complete", Duration::from_secs(120), || {
        let j = c.k.json(&["get", "job", "count"])?;
        most = most.max(j["status"]["active"].as_i64().unwrap_or(0));
        Ok((j["status"]["succeeded"] == 3).then_some(()))
    })?;
    let o = c.k.ok(&["wait", "--for=condition=complete", "job/count", "--timeout=60s"])?;
    ensure!(o.contains("condition met"), "kubectl wait: {o}");
    ensure!(most <= 2, "at most parallelism pods at once: saw {most}");
    let row = c.k.ok(&["get", "job", "count", "--no-headers"])?;
    ensure!(
        row.split_whitespace().take(3).collect::<Vec<_>>() == ["count", "Complete", "3/3"],
        "kubectl get job: {row}"
    );
    let pods = c.pods("job-name=count")?;
    ensure!(pods.len() == 3 && pods.iter().all(|p| p["status"]["phase"] == "Succeeded"), "three pods succeeded");

    c.k.ok(&["wait", "--for=condition=complete", "job/indexed", "--timeout=120s"])?;
    let j = c.k.json(&["get", "job", "indexed"])?;
    ensure!(j["status"]["completedIndexes"] == "0-2", "{}", j["status"]);
    let mut said: Vec<String> = c
        .pods("job-name=indexed")?
        .iter()
        .map(|p| c.k.ok(&["logs", &name(p)]).map(|l| l.trim().to_owned()))
        .collect::<Result<_>>()?;
    said.sort();
    ensure!(said == ["index 0", "index 1", "index 2"], "each pod its index: {said:?}");

    let o = c.k.ok(&["wait", "--for=condition=failed", "job/fails", "--timeout=120s"])?;
    ensure!(o.contains("condition met"), "kubectl wait: {o}");
    let j = c.k.json(&["get", "job", "fails"])?;
    let failed = j["status"]["conditions"].as_array().into_iter().flatten().find(|c| c["type"] == "Failed");
    ensure!(failed.is_some_and(|c| c["reason"] == "BackoffLimitExceeded"), "{}", j["status"]);
    ensure!(j["status"]["failed"] == 2, "backoffLimit 1: two failures, {}", j["status"]);
    // The replacement waited out the pod failure backoff (10 s).
    let mut started: Vec<i64> = c
        .pods("job-name=fails")?
        .iter()
        .filter_map(|p| p["status"]["startTime"].as_str()?.parse::<jiff::Timestamp>().ok())
        .map(|t| t.as_second())
        .collect();
    started.sort();
    ensure!(started.len() == 2 && started[1] - started[0] >= 9, "the second try after the backoff: {started:?}");

    // Deleting a Job takes its pods (their tracking finalizers released).
    c.k.ok(&["delete", "job", "count", "indexed", "fails"])?;
    wait_for("the jobs' pods to go", Duration::from_secs(60), || {
        Ok(c.k.json(&["get", "pods"])?["items"].as_array().is_some_and(Vec::is_empty).then_some(()))
    })?;
    Ok(())
}

fn cron_job(name: &str, extra_spec: &str, command: &str) -> String {
    format!(
        "apiVersion: batch/v1\nkind: CronJob\nmetadata: {{name: {name}}}\nspec:\n  schedule: '*/1 * * * *'\n{extra_spec}  jobTemplate:\n    spec:\n{}",
        run_once_template(command, 6)
    )
}

/// CronJobs on a real agent: `*/1 * * * *` runs twice in about two minutes
/// and keeps `successfulJobsHistoryLimit: 1` Job; beside it, one with
/// `concurrencyPolicy: Forbid` whose run outlasts a minute gets no second
/// Job while the first is active.
#[test]
fn cron_jobs_run_on_schedule() -> Result<()> {
    if !prerequisites() {
        return Ok(());
    }
    let Some(c) = Cluster::start(&["n1"], None, &[])? else { return Ok(()) };
    c.agent("n1").write_manifest("static-web.yaml", STATIC_WEB)?;
    c.apply("tick", &cron_job("tick", "  successfulJobsHistoryLimit: 1\n", "echo tick"))?;
    c.apply("slow", &cron_job("slow", "  concurrencyPolicy: Forbid\n", "sleep 100"))?;
    let row = c.k.ok(&["get", "cronjob", "tick", "--no-headers"])?;
    ensure!(row.split_whitespace().take(2).collect::<Vec<_>>() == ["tick", "*/1"], "kubectl get cronjob: {row}");
    let created = |cj: &str| -> Result<usize> {
        let ev = c.k.json(&[
            "get",
            "events",
            "--field-selector",
            &format!("involvedObject.name={cj},reason=SuccessfulCreate"),
        ])?;
        Ok(ev["items"].as_array().map_or(0, |i| i.iter().map(|e| e["count"].as_u64().unwrap_or(1) as usize).sum()))
    };
    wait_for("two runs of tick", Duration::from_secs(150), || Ok((created("tick")? >= 2).then_some(())))?;
    wait_for("the second run to finish and the first to leave the history", Duration::from_secs(60), || {
        let jobs = c.k.json(&["get", "jobs"])?;
        let ticks: Vec<&Value> = jobs["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|j| j["metadata"]["ownerReferences"][0]["name"] == "tick")
            .collect();
        let done = ticks.iter().all(|j| j["status"]["succeeded"] == 1);
        Ok((ticks.len() == 1 && done).then_some(()))
    })?;
    let cj = c.k.json(&["get", "cronjob", "tick"])?;
    ensure!(cj["status"]["lastSuccessfulTime"].is_string(), "{}", cj["status"]);
    // slow's first Job is still running (100 s) a minute or more after it started: no second one.
    let slow: Vec<Value> = c.k.json(&["get", "jobs"])?["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|j| j["metadata"]["ownerReferences"][0]["name"] == "slow")
        .cloned()
        .collect();
    ensure!(slow.len() == 1, "Forbid: one slow Job at a time, saw {}", slow.len());
    ensure!(created("slow")? == 1, "Forbid: created once");
    let cj = c.k.json(&["get", "cronjob", "slow"])?;
    ensure!(cj["status"]["active"].as_array().is_some_and(|a| a.len() == 1), "{}", cj["status"]);
    c.k.ok(&["delete", "cronjob", "tick", "slow"])?;

    // The node's Lease, as kubectl describe node shows it: renewed from the
    // fleet's liveness in memory, never rewritten in the store.
    let d = c.k.ok(&["describe", "node", "n1"])?;
    let lease: String = d.lines().skip_while(|l| !l.starts_with("Lease:")).take(4).collect::<Vec<_>>().join("\n");
    ensure!(
        lease.contains("HolderIdentity:  n1")
            && lease.contains("RenewTime:")
            && !lease.contains("RenewTime:       <unset>"),
        "kubectl describe node: {lease}"
    );
    let l1 = c.k.json(&["get", "lease", "n1", "-n", "kube-node-lease"])?;
    let renewed: jiff::Timestamp = l1["spec"]["renewTime"].as_str().context("renewTime")?.parse()?;
    let age = jiff::Timestamp::now().as_second() - renewed.as_second();
    ensure!((0..=90).contains(&age), "renewed {age} s ago");
    ensure!(l1["metadata"]["ownerReferences"][0]["kind"] == "Node", "{}", l1["metadata"]);
    std::thread::sleep(Duration::from_secs(5));
    let l2 = c.k.json(&["get", "lease", "n1", "-n", "kube-node-lease"])?;
    ensure!(l1["metadata"]["resourceVersion"] == l2["metadata"]["resourceVersion"], "the Lease is not rewritten");
    mirror_pods(&c)
}

const STATIC_WEB: &str = "apiVersion: v1
kind: Pod
metadata: {name: static-web, labels: {app: static-web}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: kedge.local/busybox:latest
    imagePullPolicy: IfNotPresent
    command: [sleep, '3600']
    env: [{name: PASSWORD, value: hunter2}]
";

/// A static pod shows in the API as its mirror pod `NAME-NODE`, with its
/// status, owned by its Node; the mirror is read-only, deleting it does not
/// stop the static pod (the mirror comes back), and it goes with the file.
/// What stays on the node: env values (reports cross the broker unsealed).
fn mirror_pods(c: &Cluster) -> Result<()> {
    let p = wait_for("the mirror pod static-web-n1 Running", Duration::from_secs(60), || {
        let o = c.k.run(&["get", "pod", "static-web-n1", "-o", "json"])?;
        let p: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        Ok((p["status"]["phase"] == "Running").then_some(p))
    })?;
    ensure!(p["metadata"]["annotations"]["kubernetes.io/config.mirror"].is_string(), "{}", p["metadata"]);
    ensure!(p["metadata"]["ownerReferences"][0]["kind"] == "Node", "{}", p["metadata"]);
    ensure!(p["spec"]["nodeName"] == "n1" && p["metadata"]["labels"]["app"] == "static-web", "{p}");
    ensure!(
        p["spec"]["containers"][0]["env"][0]["value"].as_str().unwrap_or("") != "hunter2",
        "env values stay on the node"
    );
    let pid = |c: &Cluster| -> Result<i64> { Ok(c.on_node("n1", "static-web-n1")?.first().map_or(0, |x| x.2)) };
    let before = pid(c)?;
    ensure!(before > 0, "the static pod runs");
    let e = c.k.fails(&["annotate", "pod", "static-web-n1", "kubernetes.io/config.mirror-"])?;
    ensure!(e.contains("mirror"), "removing the mirror annotation is refused: {e}");
    let uid = p["metadata"]["uid"].clone();
    c.k.ok(&["delete", "pod", "static-web-n1"])?;
    wait_for("the mirror pod back", Duration::from_secs(20), || {
        let o = c.k.run(&["get", "pod", "static-web-n1", "-o", "json"])?;
        let p: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        Ok((p["metadata"]["uid"].is_string() && p["metadata"]["uid"] != uid).then_some(()))
    })?;
    ensure!(pid(c)? == before, "the static pod did not stop");
    std::fs::remove_file(c.agent("n1").manifests.join("static-web.yaml"))?;
    wait_for("the mirror pod to go with the file", Duration::from_secs(60), || {
        Ok((c.k.run(&["get", "pod", "static-web-n1"])?.status.code() == Some(1)).then_some(()))
    })?;
    Ok(())
}

/// The scheduler's inter-pod and spread plugins on three real agents (zones:
/// n1 and n2 in a, n3 in b): required anti-affinity on the hostname puts
/// three replicas on three nodes and leaves a fourth Pending with
/// kube-scheduler's message; a zone spread with maxSkew 1 places four pods
/// 2/2 over the zones; a preferred node affinity wins over least-allocated.
#[test]
fn affinity_and_spread_place_replicas() -> Result<()> {
    if !prerequisites() {
        return Ok(());
    }
    let Some(c) = Cluster::start(&["n1", "n2", "n3"], None, &[])? else { return Ok(()) };
    for (n, z) in [("n1", "a"), ("n2", "a"), ("n3", "b")] {
        c.k.ok(&["label", "node", n, &format!("topology.kubernetes.io/zone={z}")])?;
    }
    let apart = "      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - labelSelector: {matchLabels: {app: apart}}
            topologyKey: kubernetes.io/hostname
";
    c.apply("apart", &deployment("apart", 3, apart))?;
    let pods = c.wait_running("app=apart", 3, Duration::from_secs(90))?;
    let mut nodes: Vec<String> = pods.iter().map(node_of).collect();
    nodes.sort();
    ensure!(nodes == ["n1", "n2", "n3"], "one replica per node: {nodes:?}");
    c.k.ok(&["scale", "deployment/apart", "--replicas=4"])?;
    let pending = wait_for("the fourth replica to be refused", Duration::from_secs(30), || {
        Ok(c.pods("app=apart")?.into_iter().find(|p| {
            p["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["reason"] == "Unschedulable")
        }))
    })?;
    let cond =
        pending["status"]["conditions"].as_array().into_iter().flatten().find(|c| c["type"] == "PodScheduled").cloned();
    let msg = cond.as_ref().and_then(|c| c["message"].as_str()).unwrap_or_default().to_owned();
    ensure!(msg == "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules.", "message: {msg}");
    ensure!(pending["status"]["phase"] == "Pending" && node_of(&pending).is_empty(), "{}", pending["status"]);
    c.k.ok(&["delete", "deployment/apart"])?;

    let spread = "      topologySpreadConstraints:
      - maxSkew: 1
        topologyKey: topology.kubernetes.io/zone
        whenUnsatisfiable: DoNotSchedule
        labelSelector: {matchLabels: {app: spread}}
";
    c.apply("spread", &deployment("spread", 4, spread))?;
    let pods = c.wait_running("app=spread", 4, Duration::from_secs(90))?;
    let in_b = pods.iter().filter(|p| node_of(p) == "n3").count();
    ensure!(in_b == 2, "zone b (n3 alone) holds half: {in_b} of 4");

    // n3 is now the busiest node; a preferred node affinity still picks it.
    let prefer = "      affinity:
        nodeAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
          - weight: 10
            preference: {matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: [n3]}]}
";
    c.apply("prefer", &deployment("prefer", 1, prefer))?;
    let pods = c.wait_running("app=prefer", 1, Duration::from_secs(60))?;
    ensure!(node_of(&pods[0]) == "n3", "the preferred node, busiest as it is: {}", node_of(&pods[0]));
    c.k.ok(&["delete", "deployment/spread", "deployment/prefer"])?;
    Ok(())
}

#[test]
fn pods_outlive_the_controller_and_start_from_the_cache() -> Result<()> {
    if !prerequisites() {
        return Ok(());
    }
    let Some(mut c) = Cluster::start(&["n1"], None, &[])? else { return Ok(()) };
    c.apply("web", &deployment("web", 3, ""))?;
    let pods = c.wait_running("app=web", 3, Duration::from_secs(60))?;
    let names: Vec<String> = pods.iter().map(name).collect();
    let pid_of = |c: &Cluster, pod: &str| -> Result<i64> { Ok(c.on_node("n1", pod)?[0].2) };
    let before: Vec<i64> = names.iter().map(|n| pid_of(&c, n)).collect::<Result<_>>()?;

    // Controller and its broker gone for two minutes.
    let port = c.broker.rsplit(':').next().context("broker port")?.to_string();
    let lost = |c: &Cluster| c.agent("n1").log().matches("lost the broker").count();
    let losses = lost(&c);
    c.ctl.terminate()?;
    let down = Instant::now();
    c.agent("n1").wait_for("the agent to notice the broker is gone", Duration::from_secs(30), || {
        Ok((lost(&c) > losses).then_some(()))
    })?;
    // A container crashing meanwhile is still restarted by its node.
    Command::new("kill").args(["-9", &before[0].to_string()]).status()?;
    c.agent("n1").wait_for("the crashed container to be restarted offline", Duration::from_secs(30), || {
        let (_, state, pid, restarts) = c.on_node("n1", &names[0])?.remove(0);
        Ok((state == "Running" && restarts == 1 && pid != before[0] && alive(pid)).then_some(()))
    })?;
    // Two minutes of outage in which nothing else may happen to the pods:
    // a window to prove a negative, so a plain sleep.
    std::thread::sleep(Duration::from_secs(120).saturating_sub(down.elapsed()));
    for (n, pid) in names.iter().zip(&before).skip(1) {
        ensure!(pid_of(&c, n)? == *pid && alive(*pid), "{n} kept running through the outage");
    }

    // The controller comes back on the same broker address; the API converges.
    c.ctl =
        Controller::start_with(&c.dir.join("data"), "127.0.0.1:0", &["--mqtt-listen", &format!("127.0.0.1:{port}")])?;
    wait_for("kubectl to show the outage's restarts only", Duration::from_secs(60), || {
        let pods = c.pods("app=web")?;
        let restarts: Vec<i64> = names
            .iter()
            .map(|n| {
                pods.iter()
                    .find(|p| name(p) == *n)
                    .and_then(|p| p["status"]["containerStatuses"][0]["restartCount"].as_i64())
                    .unwrap_or(-1)
            })
            .collect();
        Ok((pods.len() == 3
            && pods.iter().all(|p| p["status"]["phase"] == "Running" && ready(p))
            && restarts == [1, 0, 0])
        .then_some(()))
    })?;
    for (n, pid) in names.iter().zip(&before).skip(1) {
        ensure!(pid_of(&c, n)? == *pid, "{n} was not restarted because of the outage");
    }

    // Reboot: agent and controller stop, every container process dies; the
    // agent starts alone, with no broker to reach.
    c.agent_mut("n1").kill();
    c.ctl.terminate()?;
    let pids: Vec<i64> = names.iter().map(|n| pid_of(&c, n)).collect::<Result<_>>()?;
    for pid in &pids {
        Command::new("kill").args(["-9", &pid.to_string()]).status()?;
    }
    wait_for("the containers to die", Duration::from_secs(10), || Ok(pids.iter().all(|p| !alive(*p)).then_some(())))?;
    let start = Instant::now();
    c.agent_mut("n1").start()?;
    c.agent("n1").wait_for("the cached pods to run again without a controller", Duration::from_secs(30), || {
        let running = names
            .iter()
            .map(|n| c.on_node("n1", n).map(|cs| cs.iter().all(|(_, s, pid, _)| s == "Running" && alive(*pid))))
            .collect::<Result<Vec<bool>>>()?;
        Ok(running.iter().all(|r| *r).then_some(()))
    })?;
    eprintln!("agent start → 3 cached pods running again, no broker: {:.2} s", start.elapsed().as_secs_f64());
    Ok(())
}

/// A replaced node (issue 19): its cache wiped, its key kept, it comes back
/// to the embedded broker, which kept its persistent session. Its pods come
/// back with the snapshot retained on the broker, which its subscribe on
/// connect brings again — nothing needs to change to republish it.
#[test]
fn a_node_whose_cache_was_wiped_gets_its_pods_back() -> Result<()> {
    if !prerequisites() {
        return Ok(());
    }
    let Some(mut c) = Cluster::start(&["n1"], None, &[])? else { return Ok(()) };
    c.apply("web", &deployment("web", 2, ""))?;
    let pods = c.wait_running("app=web", 2, Duration::from_secs(60))?;
    let pids = |c: &Cluster| -> Result<Vec<i64>> { pods.iter().map(|p| Ok(c.on_node("n1", &name(p))?[0].2)).collect() };
    let before = pids(&c)?;
    c.agent_mut("n1").kill();
    let cache = c.agent("n1").data.join("agent.redb");
    ensure!(cache.exists(), "the agent's cache at {}", cache.display());
    std::fs::remove_file(&cache)?;
    c.agent_mut("n1").start()?;
    c.agent("n1").wait_for("the controller's snapshot again", Duration::from_secs(30), || {
        Ok(c.agent("n1").log().contains("accepted the controller's snapshot").then_some(()))
    })?;
    c.wait_running("app=web", 2, Duration::from_secs(60))?;
    // Not taken for orphans while the controller was not heard from yet.
    ensure!(pids(&c)? == before, "the pods kept running: {before:?} → {:?}", pids(&c)?);
    ensure!(before.iter().all(|p| alive(*p)));
    Ok(())
}

/// Joining (design.md §3a): no token, a wrong one, an expired one and a
/// used-up one are refused — the agent says why, no Node appears — and a
/// good one joins, Ready.
#[test]
fn only_a_valid_token_joins() -> Result<()> {
    if !prerequisites() {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let Some((ctl, k)) = controller_and_kubectl(tmp.path(), &[])? else { return Ok(()) };
    let broker = ctl.broker.clone().context("fleet broker")?;
    let good = ctl.token()?;
    let (keep, secret) = good.rsplit_once('.').context("token")?;
    let wrong = format!("{keep}.{}", secret.chars().rev().collect::<String>());
    let expired = ctl.token_with(&["--ttl", "1s"])?;
    let once = ctl.token_with(&["--uses", "1"])?;
    std::thread::sleep(Duration::from_secs(2));
    let agent = |name: &str, token: Option<&str>| -> Result<Agent> {
        let mut args = vec!["--broker", broker.as_str(), "--node-name", name];
        if let Some(t) = token {
            args.extend(["--token", t]);
        }
        let mut a = Agent::new(&tmp.path().join(name), &args)?;
        a.start()?;
        Ok(a)
    };
    // The used-up token's one use goes to this node.
    let first = agent("first", Some(&once))?;
    wait_for("first Ready", Duration::from_secs(30), || Ok(ready(&k.json(&["get", "node", "first"])?).then_some(())))
        .with_context(|| first.log())?;
    let refused = [
        ("no-token", None, "no join token"),
        ("wrong", Some(wrong.as_str()), "wrong secret for token"),
        ("expired", Some(expired.as_str()), "expired at"),
        ("used-up", Some(once.as_str()), "is used up"),
    ];
    let agents: Vec<(&str, Agent, &str)> =
        refused.iter().map(|(name, token, why)| Ok((*name, agent(name, *token)?, *why))).collect::<Result<_>>()?;
    for (name, a, why) in &agents {
        a.wait_for(&format!("{name}: refused, saying {why:?}"), Duration::from_secs(30), || {
            Ok(a.log().contains(why).then_some(()))
        })?;
    }
    // They keep asking (with backoff); none of them becomes a Node.
    std::thread::sleep(Duration::from_secs(3));
    let nodes = k.json(&["get", "nodes"])?;
    let names: Vec<&str> =
        nodes["items"].as_array().into_iter().flatten().filter_map(|n| n["metadata"]["name"].as_str()).collect();
    ensure!(names == ["first"], "only the joined node is listed: {names:?}");
    let asked = agents[1].1.log().matches("asking the controller to join").count();
    ensure!(asked >= 2, "a refused agent asks again: {asked}");
    // The good token: the refused node joins.
    let mut late = agent("late", Some(&good))?;
    wait_for("late Ready", Duration::from_secs(30), || Ok(ready(&k.json(&["get", "node", "late"])?).then_some(())))
        .with_context(|| late.log())?;
    late.kill();
    drop(agents);
    drop(ctl);
    Ok(())
}

/// Revocation: `kubectl delete node n2` drops n2's key at once — its later
/// reports do not bring the Node back, its pods' status is not written
/// from it — and n2 joins again with a new token (and a new key).
#[test]
fn a_deleted_node_is_revoked_and_rejoins_with_a_new_token() -> Result<()> {
    if !prerequisites() {
        return Ok(());
    }
    let Some(mut c) = Cluster::start(&["n1", "n2"], None, &[])? else { return Ok(()) };
    let old_key = c.k.json(&["get", "node", "n2"])?["metadata"]["annotations"]["kedge.io/node-key"].clone();
    ensure!(old_key.is_string(), "n2's key recorded on its Node");
    c.k.ok(&["delete", "node", "n2"])?;
    // n2 reports (a restart of its agent reports at once): nothing comes back.
    c.agent_mut("n2").kill();
    c.agent_mut("n2").start()?;
    c.agent("n2").wait_for("n2 to report again", Duration::from_secs(20), || {
        Ok((c.agent("n2").log().matches("connected to the broker").count() >= 2).then_some(()))
    })?;
    std::thread::sleep(Duration::from_secs(3));
    let gone = c.k.run(&["get", "node", "n2"])?;
    ensure!(!gone.status.success(), "a revoked node's reports do not register it again");
    // A new token: a new key, joined, Ready.
    let token = c.ctl.token()?;
    let broker = c.broker.clone();
    c.agent_mut("n2").kill();
    c.agent_mut("n2").set_extra(&["--broker", &broker, "--token", &token, "--node-name", "n2", "--backoff-base", "1s"]);
    c.agent_mut("n2").start()?;
    c.wait_node_ready("n2")?;
    let new_key = c.k.json(&["get", "node", "n2"])?["metadata"]["annotations"]["kedge.io/node-key"].clone();
    ensure!(new_key.is_string() && new_key != old_key, "a new key: {old_key} → {new_key}");

    // `kedge-controller node revoke n1`: the Node stays, its key goes, and
    // nothing more is sent to it: its retained snapshot is cleared and a pod
    // bound to it after that does not reach it (unsealed, its Secrets would
    // be anyone's).
    let out = Command::new(kedge_tests::binary("kedge-controller")?)
        .arg("--data-dir")
        .arg(&c.ctl.data_dir)
        .args(["node", "revoke", "n1"])
        .output()?;
    ensure!(out.status.success(), "node revoke: {}", String::from_utf8_lossy(&out.stderr));
    let n1 = c.k.json(&["get", "node", "n1"])?;
    ensure!(n1["metadata"]["annotations"]["kedge.io/node-key"] == "revoked", "n1's key is gone: {n1}");
    ensure!(n1["metadata"]["annotations"]["kedge.io/node-seal-key"].is_null(), "and its sealing key: {n1}");
    c.apply(
        "after-revoke",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: after-revoke}\nspec:\n  nodeName: n1\n  terminationGracePeriodSeconds: 1\n  containers: [{name: c, image: kedge.local/busybox:latest, imagePullPolicy: IfNotPresent, command: [sleep, '3600']}]\n",
    )?;
    std::thread::sleep(Duration::from_secs(5));
    let ps = c.agent("n1").ps()?;
    ensure!(ps.iter().all(|p| p["name"] != "after-revoke"), "nothing reaches a revoked node: {ps:?}");
    let (host, port) = c.broker.trim_start_matches("mqtt://").rsplit_once(':').context("broker url")?;
    let retained = Command::new("mosquitto_sub")
        .args(["-h", host, "-p", port, "-t", "kedge/v1/nodes/n1/desired", "-C", "1", "-W", "3"])
        .output()?;
    ensure!(retained.stdout.iter().all(|b| *b == b'\n'), "n1's retained snapshot is cleared: {retained:?}");
    Ok(())
}

/// `kedge-agent rotate-key` on a running node: the controller records the
/// new key; pods still reach the node (sealed to its new sealing key) and
/// its reports are taken (signed with the new key); what the old key signs
/// — a report, a rotation to yet another key — is dropped.
#[test]
fn a_node_rotates_its_key_and_the_old_one_speaks_for_nothing() -> Result<()> {
    use kedge_common::envelope;
    use kedge_common::sign::{Purpose, SigningKey};
    use kedge_common::wire::{NodeReport, RotateRequest};
    if !prerequisites() {
        return Ok(());
    }
    let Some(c) = Cluster::start(&["n1"], None, &[])? else { return Ok(()) };
    let node_key = |c: &Cluster| -> Result<Value> {
        Ok(c.k.json(&["get", "node", "n1"])?["metadata"]["annotations"]["kedge.io/node-key"].clone())
    };
    let before = node_key(&c)?;
    let old = SigningKey::from_pkcs8(&std::fs::read(c.agent("n1").data.join("node.key"))?)?;
    ensure!(before == old.public().to_string(), "the Node has the agent's key: {before}");
    let genuine = Command::new("mosquitto_sub")
        .args(&c.mqtt_args)
        .args(["-t", "kedge/v1/nodes/n1/status", "-C", "1", "-N", "-W", "5"])
        .output()?;
    let old_report: NodeReport = envelope::decode(&genuine.stdout, usize::MAX)?;

    let out = c.agent("n1").cli(&["rotate-key", "--wait", "60s"])?;
    ensure!(out.contains("rotated"), "rotate-key: {out}");
    let new = SigningKey::from_pkcs8(&std::fs::read(c.agent("n1").data.join("node.key"))?)?;
    ensure!(new.public() != old.public(), "a new key in place");
    ensure!(node_key(&c)? == new.public().to_string(), "the Node has the new key");
    ensure!(!c.agent("n1").data.join("node.key.next").exists(), "nothing left waiting");

    // The node works on: a pod reaches it and runs, its status comes back.
    c.apply("web", &deployment("web", 1, ""))?;
    c.wait_running("app=web", 1, Duration::from_secs(60))?;
    c.wait_node_ready("n1")?;

    // The old key speaks for nothing.
    let rejected = c.dashboard_rejected("n1")?;
    let dir = tempfile::tempdir()?;
    let publish = |topic: &str, payload: &[u8]| -> Result<()> {
        let file = dir.path().join("payload");
        std::fs::write(&file, payload)?;
        let st = Command::new("mosquitto_pub")
            .args(&c.mqtt_args)
            .args(["-t", topic, "-q", "1", "-f"])
            .arg(&file)
            .status()?;
        ensure!(st.success(), "mosquitto_pub to {topic}");
        Ok(())
    };
    let forged = NodeReport { pods: Vec::new(), seq: old_report.seq + (1 << 40), ..old_report };
    publish("kedge/v1/nodes/n1/status", &envelope::encode_signed(&forged, Purpose::Report, &old)?)?;
    let (fresh, _) = SigningKey::generate()?;
    let seal = kedge_common::seal::SealSecret::generate()?.public();
    let rotation = RotateRequest::new("n1", &fresh, &seal, "stolen");
    publish("kedge/v1/nodes/n1/rotate", &envelope::encode_signed(&rotation, Purpose::Rotate, &old)?)?;
    wait_for("the old key's report counted as rejected", Duration::from_secs(15), || {
        Ok((c.dashboard_rejected("n1")? > rejected).then_some(()))
    })?;
    ensure!(node_key(&c)? == new.public().to_string(), "the old key rotated nothing");
    c.wait_running("app=web", 1, Duration::from_secs(10))?;
    c.k.ok(&["delete", "deployment/web"])?;
    Ok(())
}

/// A misbehaving node cannot hurt the controller: 10,000 events a second
/// for 10 s under n1's name, signed with n1's own key (a stolen key, the
/// worst case: forgeries cost even less). Events are taken at no more
/// than n1's rate (50/s after a burst of 100, the kubelet's defaults), the
/// excess is counted on n1's dashboard, what passes is correlated (similar
/// events combined, 25 per object at once), and the API keeps answering
/// kubectl throughout. (The controller's RSS and kubectl's latency under
/// the same flood are measured in `cargo bench --bench fleet`.)
#[test]
fn an_event_flood_from_a_node_is_rate_limited() -> Result<()> {
    if !prerequisites() {
        return Ok(());
    }
    let Some(c) = Cluster::start(&["n1"], None, &[])? else { return Ok(()) };
    let key = kedge_common::sign::SigningKey::from_pkcs8(&std::fs::read(c.agent("n1").data.join("node.key"))?)?;
    let (host, port) = c.broker.trim_start_matches("mqtt://").rsplit_once(':').context("broker url")?;
    let flood = kedge_tests::flood::events(host, port.parse()?, "n1", &key, 10_000, Duration::from_secs(10));
    let answered = std::thread::scope(|s| -> Result<usize> {
        let publisher = s.spawn(flood);
        let mut answered = 0;
        while !publisher.is_finished() {
            c.k.ok(&["get", "pods"])?;
            answered += 1;
            std::thread::sleep(Duration::from_millis(500));
        }
        let sent = publisher.join().map_err(|_| anyhow::anyhow!("the publisher panicked"))??;
        ensure!(sent >= 90_000, "the flood went out: {sent}");
        Ok(answered)
    })?;
    ensure!(answered >= 10, "kubectl answered throughout the flood: {answered} times");
    // Let the controller drain what the broker still holds.
    std::thread::sleep(Duration::from_secs(3));
    // What passed the node's rate is correlated as client-go's recorder
    // does: nine events, then one "(combined from similar events)" counted
    // on, within the source's burst of 25 for the object.
    let events = c.k.json(&["get", "events", "--field-selector", "reason=Flood"])?;
    let items = events["items"].as_array().cloned().unwrap_or_default();
    ensure!(!items.is_empty() && items.len() <= 10, "{} Flood events stored: {events}", items.len());
    let combined = items
        .iter()
        .find(|e| e["message"].as_str().is_some_and(|m| m.starts_with("(combined from similar events): flood ")));
    let count = combined.and_then(|e| e["count"].as_i64()).unwrap_or(0);
    ensure!(count >= 2, "the similar events were combined and counted: {events}");
    let total: i64 = items.iter().filter_map(|e| e["count"].as_i64()).sum();
    ensure!(total <= 25, "the source's burst for the object is 25 events, {total} were counted");
    // What reached the controller over the rate is counted (the broker
    // itself sheds QoS 0 messages a busy subscriber cannot take: most of
    // the 100,000 never reach it, which is the broker protecting it too).
    let counted = c.dashboard_rejected("n1")?;
    ensure!(counted >= 1_000, "the excess is counted: {counted}");
    Ok(())
}

const STATEFUL_WEB: &str = "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: None
  selector: {app: sts-web}
  ports: [{port: 80}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web}
spec:
  serviceName: web
  replicas: 2
  selector: {matchLabels: {app: sts-web}}
  template:
    metadata: {labels: {app: sts-web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: kedge.local/busybox:latest
        imagePullPolicy: IfNotPresent
        command: [sh, -c, 'hostname >> /data/starts; exec sleep 3600']
        readinessProbe:
          exec: {command: [test, -s, /data/starts]}
          periodSeconds: 1
        volumeMounts: [{name: data, mountPath: /data}]
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 16Mi}}
";

/// A StatefulSet with a `volumeClaimTemplate` on two real agents: `web-0`
/// then `web-1` (once `web-0` is Ready), each on its own `local-path`
/// volume made on the node it landed on; the data `web-0` wrote is there
/// after the pod is deleted and made again (back on its volume's node), and
/// after its agent restarts; deleting the claim removes the volume and the
/// node removes its data.
#[test]
fn a_stateful_set_keeps_its_data_on_node_local_volumes() -> Result<()> {
    if !prerequisites() {
        return Ok(());
    }
    let Some(mut c) = Cluster::start(&["n1", "n2"], None, &[])? else { return Ok(()) };
    let sc = c.k.ok(&["get", "storageclass", "--no-headers"])?;
    ensure!(
        sc.split_whitespace().take(5).collect::<Vec<_>>()
            == ["local-path", "(default)", "kedge.io/local-path", "Delete", "WaitForFirstConsumer"],
        "kubectl get storageclass: {sc}"
    );
    c.apply("web", STATEFUL_WEB)?;
    let pods = c.wait_running("app=sts-web", 2, Duration::from_secs(120))?;
    let by_name = |n: &str| pods.iter().find(|p| name(p) == n).cloned().context(n.to_owned());
    let (web0, web1) = (by_name("web-0")?, by_name("web-1")?);
    // In order: web-1 was made once web-0 was Ready.
    let ready_at = web0["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .and_then(|c| c["lastTransitionTime"].as_str())
        .context("web-0 Ready")?
        .parse::<jiff::Timestamp>()?;
    let made = web1["metadata"]["creationTimestamp"].as_str().context("created")?.parse::<jiff::Timestamp>()?;
    ensure!(made >= ready_at, "web-1 made at {made}, before web-0 was Ready at {ready_at}");
    ensure!(web0["spec"]["hostname"] == "web-0" && web0["spec"]["subdomain"] == "web", "{}", web0["spec"]);
    let o = c.k.ok(&["rollout", "status", "statefulset/web", "--timeout=30s"])?;
    ensure!(o.contains("complete"), "kubectl rollout status: {o}");

    let pvcs = c.k.ok(&["get", "pvc", "--no-headers"])?;
    for claim in ["data-web-0", "data-web-1"] {
        let row = pvcs.lines().find(|l| l.starts_with(claim)).with_context(|| format!("{claim} in {pvcs}"))?;
        let cols: Vec<&str> = row.split_whitespace().collect();
        ensure!(cols[1] == "Bound" && cols[3] == "16Mi" && cols[4] == "RWO" && cols[5] == "local-path", "{row}");
    }
    let volume_of = |c: &Cluster, claim: &str| -> Result<(String, String)> {
        let pv_name = c.k.ok(&["get", "pvc", claim, "-o", "jsonpath={.spec.volumeName}"])?;
        let pv = c.k.json(&["get", "pv", &pv_name])?;
        let node = pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"][0]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        Ok((pv_name, node))
    };
    let (pv0, node0) = volume_of(&c, "data-web-0")?;
    ensure!(node0 == node_of(&web0), "web-0's volume is on its node {}, not {node0}", node_of(&web0));
    ensure!(volume_of(&c, "data-web-1")?.1 == node_of(&web1), "web-1's volume on its node");
    // Through the node's link (which may still be reconnecting after a restart).
    let starts = |c: &Cluster| -> Result<Vec<String>> {
        // (After an agent restart the node's session comes back with its
        // reconnect, which a loaded machine may take a while over.)
        wait_for("web-0's /data/starts through kubectl exec", Duration::from_secs(90), || {
            let o = c.k.run(&["exec", "web-0", "--", "cat", "/data/starts"])?;
            ensure!(o.status.success(), "kubectl exec: {}", String::from_utf8_lossy(&o.stderr).trim());
            Ok(Some(String::from_utf8_lossy(&o.stdout).lines().map(str::to_owned).collect()))
        })
    };
    ensure!(starts(&c)? == ["web-0"], "first start");

    let recreated = |c: &Cluster, old_uid: &Value| -> Result<Value> {
        wait_for("web-0 made again and Ready", Duration::from_secs(90), || {
            let o = c.k.run(&["get", "pod", "web-0", "-o", "json"])?;
            let p: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
            Ok((p["metadata"]["uid"] != *old_uid && p["status"]["phase"] == "Running" && ready(&p)).then_some(p))
        })
    };
    c.k.ok(&["delete", "pod", "web-0"])?;
    let again = recreated(&c, &web0["metadata"]["uid"])?;
    ensure!(node_of(&again) == node0, "web-0 back on its volume's node {node0}, not {}", node_of(&again));
    ensure!(starts(&c)? == ["web-0", "web-0"], "the data outlived the pod: {:?}", starts(&c)?);

    // The agent restarts: the volume's data is still there for the next pod.
    let data = c.agent(&node0).data.join("storage").join(&pv0);
    ensure!(data.join("starts").exists(), "the data lives in {}", data.display());
    c.agent_mut(&node0).kill();
    c.agent_mut(&node0).start()?;
    c.wait_node_ready(&node0)?;
    c.k.ok(&["delete", "pod", "web-0"])?;
    recreated(&c, &again["metadata"]["uid"])?;
    ensure!(starts(&c)? == ["web-0", "web-0", "web-0"], "the data outlived the agent: {:?}", starts(&c)?);

    // A rolling update held at partition 1 renews web-1 only; undone, web-1
    // is back on the first revision (kubectl's rollout history and undo
    // read and apply the set's ControllerRevisions).
    c.k.ok(&["patch", "statefulset", "web", "-p", r#"{"spec":{"updateStrategy":{"rollingUpdate":{"partition":1}}}}"#])?;
    c.k.ok(&["rollout", "restart", "statefulset/web"])?;
    let o = c.k.ok(&["rollout", "status", "statefulset/web", "--timeout=90s"])?;
    ensure!(o.contains("partitioned roll out complete: 1 new pods have been updated"), "kubectl rollout status: {o}");
    let sts = c.k.json(&["get", "statefulset", "web"])?;
    let (current, update) = (sts["status"]["currentRevision"].clone(), sts["status"]["updateRevision"].clone());
    ensure!(current != update && update.is_string(), "{}", sts["status"]);
    let revision_of = |c: &Cluster, pod: &str| -> Result<Value> {
        Ok(c.k.json(&["get", "pod", pod])?["metadata"]["labels"]["controller-revision-hash"].clone())
    };
    ensure!(revision_of(&c, "web-1")? == update && revision_of(&c, "web-0")? == current, "only web-1 renewed");
    let history = c.k.ok(&["rollout", "history", "statefulset/web"])?;
    let revisions: Vec<&str> =
        history.lines().filter_map(|l| l.split_whitespace().next()).filter(|w| w.parse::<u32>().is_ok()).collect();
    ensure!(revisions == ["1", "2"], "kubectl rollout history: {history}");
    let o = c.k.ok(&["rollout", "undo", "statefulset/web"])?;
    ensure!(o.contains("rolled back"), "kubectl rollout undo: {o}");
    wait_for("web-1 back on the first revision", Duration::from_secs(90), || {
        let p = c.k.json(&["get", "pod", "web-1"])?;
        let back = p["metadata"]["labels"]["controller-revision-hash"] == current
            && p["status"]["phase"] == "Running"
            && ready(&p);
        Ok(back.then_some(()))
    })?;
    let o = c.k.ok(&["rollout", "status", "statefulset/web", "--timeout=60s"])?;
    ensure!(o.contains("complete"), "kubectl rollout status: {o}");

    // Claims are kept when the set goes (retention Retain); deleting one
    // deletes its volume (reclaim policy Delete), and the node its data.
    c.k.ok(&["delete", "statefulset", "web"])?;
    wait_for("the set's pods to go", Duration::from_secs(60), || Ok(c.pods("app=sts-web")?.is_empty().then_some(())))?;
    ensure!(
        c.k.ok(&["get", "pvc", "data-web-0", "-o", "name"])?.trim() == "persistentvolumeclaim/data-web-0",
        "claim kept"
    );
    c.k.ok(&["delete", "pvc", "data-web-0", "--timeout=60s"])?;
    wait_for("the volume to go", Duration::from_secs(30), || {
        Ok((c.k.run(&["get", "pv", &pv0])?.status.code() == Some(1)).then_some(()))
    })?;
    c.agent(&node0).wait_for("the node to remove the volume's data", Duration::from_secs(30), || {
        Ok((!data.exists()).then_some(()))
    })?;
    Ok(())
}
