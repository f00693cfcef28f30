//! The agent binary running static pods on real containers: what a user on
//! the node sees with `kedge-agent ps` and `kedge-agent logs`. Needs root.

use std::time::{Duration, Instant};

use anyhow::Result;
use kedge_tests::agent::Agent;
use serde_json::Value;

fn ready() -> bool {
    kedge_tests::require(kedge_tests::is_root(), "root (the agent runs real containers)")
}

const FAST: &[&str] = &["--backoff-base", "1s", "--backoff-max", "4s", "--no-cri-socket"];

/// An agent with busybox imported and short restart backoffs, running.
fn started(dir: &std::path::Path) -> Result<Agent> {
    let mut agent = Agent::new(dir, FAST)?;
    agent.start()?;
    Ok(agent)
}

fn state(c: &Value) -> &str {
    c["state"].as_str().unwrap_or("")
}

/// The process's cgroup path for `controller` (v1) or the v2 path.
fn cgroup_of(pid: i64, controller: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
            ctrls.split(',').any(|c| c == controller).then(|| format!("/sys/fs/cgroup/{controller}{path}"))
        })
        .or_else(|| text.lines().find_map(|l| l.strip_prefix("0::").map(|p| format!("/sys/fs/cgroup{p}"))))
}

const TWO_CONTAINERS: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: web
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: sleeper
    image: kedge.local/busybox:latest
    imagePullPolicy: IfNotPresent
    command: ["sleep", "3600"]
    resources:
      limits:
        memory: 40Mi
  - name: talker
    image: kedge.local/busybox:latest
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "i=0; while true; do echo line $i; i=$((i+1)); sleep 1; done"]
"#;

#[test]
fn static_pod_runs_logs_limits_and_is_removed_without_leftovers() -> Result<()> {
    if !ready() {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let agent = started(tmp.path())?;
    agent.write_manifest("web.yaml", TWO_CONTAINERS)?;
    let pids: Vec<i64> = agent.wait_for("both containers Running", Duration::from_secs(30), || {
        let s = agent.container("web", "sleeper")?;
        let t = agent.container("web", "talker")?;
        Ok(match (s, t) {
            (Some(s), Some(t)) if state(&s) == "Running" && state(&t) == "Running" => {
                Some(vec![s["pid"].as_i64().unwrap_or(0), t["pid"].as_i64().unwrap_or(0)])
            }
            _ => None,
        })
    })?;
    let table = agent.cli(&["ps"])?;
    assert!(table.contains("default/web-n1") && table.contains("sleeper") && table.contains("Running"), "{table}");

    // What the agent keeps (the cache, the containers' specs with their
    // environment, Secret volumes) is root's alone, whatever the umask and
    // whoever made the data dir (here `image import`, before `run`).
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.permissions().mode() & 0o777);
    assert_eq!(mode(&agent.data)?, 0o700, "the data dir");
    assert_eq!(mode(&agent.data.join("agent.redb"))?, 0o600, "the cache");
    for c in std::fs::read_dir(agent.data.join("containers"))?.flatten() {
        assert_eq!(mode(&c.path().join("config.json"))?, 0o600, "{}", c.path().display());
    }

    let logs = agent.wait_for("two lines of output", Duration::from_secs(15), || {
        let out = agent.cli(&["logs", "web", "talker"])?;
        Ok(out.contains("line 1").then_some(out))
    })?;
    assert!(logs.starts_with("line 0\nline 1\n"), "kedge-agent logs prints the lines as written: {logs:?}");

    // The manifest's memory limit is what the container's cgroup says.
    let memory = cgroup_of(pids[0], "memory").expect("memory cgroup");
    let limit = std::fs::read_to_string(format!("{memory}/memory.limit_in_bytes"))
        .or_else(|_| std::fs::read_to_string(format!("{memory}/memory.max")))?;
    assert_eq!(limit.trim(), (40u64 << 20).to_string());

    // Removing the manifest stops the pod and leaves nothing behind.
    std::fs::remove_file(agent.manifests.join("web.yaml"))?;
    agent.wait_for("the pod to go", Duration::from_secs(30), || Ok(agent.ps()?.is_empty().then_some(())))?;
    for pid in &pids {
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "process {pid} is gone");
    }
    assert!(!std::path::Path::new(&memory).exists(), "cgroup {memory} removed");
    let pod_cgroup = std::path::Path::new(&memory).parent().map(|p| p.to_path_buf()).unwrap_or_default();
    assert!(!pod_cgroup.exists(), "pod cgroup {} removed", pod_cgroup.display());
    let data = agent.data.display().to_string();
    let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")?
        .lines()
        .filter(|l| l.contains(&data))
        .map(str::to_string)
        .collect();
    assert!(
        mounts.iter().all(|m| m.split(' ').nth(4) == Some(&format!("{data}/ns"))),
        "only the pin folder stays mounted: {mounts:?}"
    );
    assert_eq!(std::fs::read_dir(agent.data.join("ns"))?.count(), 0, "no namespace pinned");
    assert_eq!(std::fs::read_dir(agent.data.join("containers"))?.count(), 0);
    let zombies = std::fs::read_dir("/proc")?
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|s| s.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')))
        .filter(|s| s.contains(&format!(" {} ", agent.pid().unwrap_or(0))))
        .count();
    assert_eq!(zombies, 0, "the agent leaves no zombie");
    Ok(())
}

#[test]
fn crashing_container_backs_off_and_never_policy_stays_exited() -> Result<()> {
    if !ready() {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let agent = started(tmp.path())?;
    let pod = |name: &str, policy: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  restartPolicy: {policy}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: kedge.local/busybox:latest\n    imagePullPolicy: IfNotPresent\n    command: [\"sh\", \"-c\", \"echo failing; exit 1\"]\n"
        )
    };
    agent.write_manifest("crash.yaml", &pod("crash", "Always"))?;
    agent.write_manifest("once.yaml", &pod("once", "Never"))?;
    // When each restart count first shows up: the gaps grow (immediate, 1 s, 2 s, 4 s).
    let start = Instant::now();
    let mut seen: Vec<(u64, Duration)> = Vec::new();
    agent.wait_for("three restarts", Duration::from_secs(40), || {
        let c = agent.container("crash", "c")?;
        let count = c.as_ref().and_then(|c| c["restart_count"].as_u64()).unwrap_or(0);
        if seen.last().is_none_or(|(n, _)| *n < count) {
            seen.push((count, start.elapsed()));
        }
        Ok((count >= 4).then_some(()))
    })?;
    let at = |n: u64| seen.iter().find(|(c, _)| *c >= n).map(|(_, t)| *t).unwrap_or_default();
    let gaps = [at(2) - at(1), at(3) - at(2), at(4) - at(3)];
    assert!(gaps[1] > gaps[0] && gaps[2] > gaps[1], "delays grow: {gaps:?} (seen {seen:?})");
    assert!(gaps[2] >= Duration::from_millis(3500), "the 4th restart waited ~4 s: {gaps:?}");
    let c = agent.container("crash", "c")?.expect("crash container");
    assert_eq!(c["last_exit_code"], 1);
    let table = agent.cli(&["ps"])?;
    let row: Vec<&str> =
        table.lines().find(|l| l.starts_with("default/crash-n1")).unwrap_or("").split_whitespace().collect();
    assert!(row.get(3).and_then(|r| r.parse::<u32>().ok()).is_some_and(|r| r >= 4), "RESTARTS column: {table}");
    assert_eq!(row.get(4), Some(&"1"), "LAST EXIT column: {table}");

    let once = agent.container("once", "c")?.expect("once container");
    assert_eq!(
        (state(&once), once["restart_count"].as_u64(), once["last_exit_code"].as_i64()),
        ("Exited", Some(0), Some(1))
    );
    assert_eq!(once["reason"], "Error");
    Ok(())
}

#[test]
fn agent_kill_9_keeps_containers_and_still_notices_their_exit() -> Result<()> {
    if !ready() {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let mut agent = started(tmp.path())?;
    agent.write_manifest("web.yaml", TWO_CONTAINERS)?;
    let running = |agent: &Agent| -> Result<Option<(i64, i64)>> {
        let s = agent.container("web", "sleeper")?;
        let t = agent.container("web", "talker")?;
        Ok(match (s, t) {
            (Some(s), Some(t)) if state(&s) == "Running" && state(&t) == "Running" => {
                Some((s["pid"].as_i64().unwrap_or(0), t["pid"].as_i64().unwrap_or(0)))
            }
            _ => None,
        })
    };
    let before = agent.wait_for("pod running", Duration::from_secs(30), || running(&agent))?;
    agent.kill();
    // `ps` reads the agent's state while the agent is down.
    assert_eq!(running(&agent)?, Some(before), "containers run on without the agent");
    let loaded = |agent: &Agent| agent.log().matches("static pod manifest loaded").count();
    let loads = loaded(&agent);
    agent.start()?;
    agent.wait_for("the new agent to load the manifest", Duration::from_secs(20), || {
        Ok((loaded(&agent) > loads).then_some(()))
    })?;
    // Its pod worker now has the pod: give it a window in which a wrong
    // restart would show (nothing to wait for when nothing is to happen).
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(running(&agent)?, Some(before), "the new agent adopted the containers without restarting them");
    let s = agent.container("web", "sleeper")?.expect("sleeper");
    assert_eq!(s["restart_count"], 0);
    assert!(agent.log().contains("adopted running container"));

    // A container killed by hand after the restart is noticed and restarted.
    nix_kill(before.0)?;
    let after = agent.wait_for("sleeper restarted", Duration::from_secs(20), || {
        let s = agent.container("web", "sleeper")?;
        Ok(s.filter(|s| state(s) == "Running" && s["restart_count"] == 1).map(|s| s["pid"].as_i64().unwrap_or(0)))
    })?;
    assert_ne!(after, before.0);
    assert_eq!(running(&agent)?.map(|r| r.1), Some(before.1), "the other container was left alone");
    let logs = agent.cli(&["logs", "web", "talker"])?;
    let last_line = logs.lines().last().unwrap_or("").to_string();
    agent.wait_for(
        &format!("output to still reach the log after the agent restart (last: {last_line})"),
        Duration::from_secs(10),
        || Ok((agent.cli(&["logs", "web", "talker"])?.len() > logs.len()).then_some(())),
    )?;
    Ok(())
}

fn nix_kill(pid: i64) -> Result<()> {
    let status = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status()?;
    anyhow::ensure!(status.success(), "kill -9 {pid} failed");
    Ok(())
}

#[test]
fn volumes_are_shared_and_an_edited_manifest_replaces_the_pod() -> Result<()> {
    if !ready() {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let host_dir = tmp.path().join("host-dir");
    let agent = started(tmp.path())?;
    let manifest = |greeting: &str| {
        format!(
            r#"
apiVersion: v1
kind: Pod
metadata:
  name: vols
spec:
  terminationGracePeriodSeconds: 1
  volumes:
  - name: shared
    emptyDir: {{}}
  - name: host
    hostPath: {{path: {host}, type: DirectoryOrCreate}}
  - name: config
    configMap:
      name: settings
      data: {{greeting: {greeting}}}
  containers:
  - name: writer
    image: kedge.local/busybox:latest
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "echo from-writer > /shared/f; cat /config/greeting > /host/out; touch /config/x 2>/dev/null || echo config-read-only; sleep 3600"]
    volumeMounts:
    - {{name: shared, mountPath: /shared}}
    - {{name: host, mountPath: /host}}
    - {{name: config, mountPath: /config, readOnly: true}}
  - name: reader
    image: kedge.local/busybox:latest
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "while [ ! -f /data/f ]; do sleep 0.2; done; cat /data/f; sleep 3600"]
    volumeMounts:
    - {{name: shared, mountPath: /data}}
"#,
            host = host_dir.display()
        )
    };
    agent.write_manifest("vols.yaml", &manifest("hello"))?;
    agent.wait_for("the reader to see the writer's file", Duration::from_secs(30), || {
        Ok(agent.cli(&["logs", "vols", "reader"]).ok().filter(|l| l.contains("from-writer")).map(|_| ()))
    })?;
    agent.wait_for("the host file", Duration::from_secs(10), || {
        Ok(std::fs::read_to_string(host_dir.join("out")).ok().filter(|s| s.trim() == "hello").map(|_| ()))
    })?;
    assert!(agent.cli(&["logs", "vols", "writer"])?.contains("config-read-only"));
    let old_pid = agent.container("vols", "writer")?.and_then(|c| c["pid"].as_i64()).expect("writer pid");

    // An edit is a new pod: the old one goes, the new one runs with the new data.
    agent.write_manifest("vols.yaml", &manifest("bonjour"))?;
    agent.wait_for("the edited pod", Duration::from_secs(30), || {
        Ok(std::fs::read_to_string(host_dir.join("out")).ok().filter(|s| s.trim() == "bonjour").map(|_| ()))
    })?;
    agent.wait_for("the old pod to be gone", Duration::from_secs(30), || {
        Ok((agent.ps()?.len() == 1 && !std::path::Path::new(&format!("/proc/{old_pid}")).exists()).then_some(()))
    })?;
    Ok(())
}

#[test]
fn a_broken_manifest_across_a_restart_keeps_the_pod_and_a_second_agent_is_refused() -> Result<()> {
    if !ready() {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let mut agent = started(tmp.path())?;
    agent.write_manifest("web.yaml", TWO_CONTAINERS)?;
    let pid = agent.wait_for("pod running", Duration::from_secs(30), || {
        Ok(agent.container("web", "sleeper")?.filter(|c| state(c) == "Running").and_then(|c| c["pid"].as_i64()))
    })?;
    // A second agent on the same data dir would fight the first over its containers.
    let second = std::process::Command::new(kedge_tests::binary("kedge-agent")?)
        .arg("--data-dir")
        .arg(&agent.data)
        .args(["run", "--no-cri-socket", "--manifests"])
        .arg(&agent.manifests)
        .output()?;
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("another kedge-agent already runs on this data dir"));

    agent.kill();
    agent.write_manifest("web.yaml", "kind: Pod\nspec: [this is not a pod")?;
    agent.start()?;
    agent.wait_for("the error to be logged", Duration::from_secs(10), || {
        Ok(agent.log().contains("not a valid Pod manifest").then_some(()))
    })?;
    // The pod must NOT be touched: a window after the error in which a wrong
    // teardown or restart would show.
    std::thread::sleep(Duration::from_secs(2));
    let c = agent.container("web", "sleeper")?.expect("still there");
    assert_eq!(
        (state(&c), c["pid"].as_i64(), c["restart_count"].as_u64()),
        ("Running", Some(pid), Some(0)),
        "the last accepted pod runs on"
    );
    Ok(())
}

const PROBED: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: probed
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: flaky
    image: kedge.local/busybox:latest
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "touch /tmp/healthy; sleep 3; rm /tmp/healthy; exec sleep 3600"]
    livenessProbe:
      exec: {command: ["cat", "/tmp/healthy"]}
      periodSeconds: 1
      failureThreshold: 2
  - name: web
    image: kedge.local/busybox:latest
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www"]
    ports: [{name: http, containerPort: 8080}]
    startupProbe:
      tcpSocket: {port: http}
      periodSeconds: 1
      failureThreshold: 30
    readinessProbe:
      httpGet: {path: /index.html, port: http}
      periodSeconds: 1
  - name: never-ready
    image: kedge.local/busybox:latest
    imagePullPolicy: IfNotPresent
    command: ["sleep", "3600"]
    readinessProbe:
      tcpSocket: {port: 9999}
      periodSeconds: 1
      failureThreshold: 1
"#;

#[test]
fn probes_restart_and_gate_readiness() -> Result<()> {
    if !ready() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let agent = started(dir.path())?;
    agent.write_manifest("probed.yaml", PROBED)?;
    // httpGet through the pod's own network namespace makes `web` ready;
    // nothing listens on 9999, so `never-ready` runs but is not ready.
    agent.wait_for("web ready, never-ready running but not ready", Duration::from_secs(30), || {
        let web = agent.container("probed", "web")?;
        let never = agent.container("probed", "never-ready")?;
        Ok(match (web, never) {
            (Some(w), Some(n)) => (w["ready"] == true && state(&n) == "Running" && n["ready"] == false).then_some(()),
            _ => None,
        })
    })?;
    // The liveness probe fails once /tmp/healthy is gone: the container is
    // stopped and restarted.
    agent.wait_for("flaky restarted by its liveness probe", Duration::from_secs(40), || {
        let c = agent.container("probed", "flaky")?;
        Ok(c.filter(|c| c["restart_count"].as_i64() >= Some(1) && state(c) == "Running").map(|_| ()))
    })?;
    let web = agent.container("probed", "web")?.map(|c| c["restart_count"].clone());
    assert_eq!(web, Some(Value::from(0)), "a passing startup probe restarts nothing");
    Ok(())
}

const DNS_PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: db
spec:
  terminationGracePeriodSeconds: 1
  hostname: db-0
  subdomain: db
  dnsConfig:
    options: [{name: edns0}]
  hostAliases:
  - ip: 10.1.2.3
    hostnames: [foo.local, bar.local]
  containers:
  - name: show
    image: kedge.local/busybox:latest
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "cat /etc/resolv.conf /etc/hosts; echo END; sleep 3600"]
---
apiVersion: v1
kind: Pod
metadata:
  name: own
spec:
  terminationGracePeriodSeconds: 1
  dnsPolicy: None
  dnsConfig:
    nameservers: [192.0.2.53]
    searches: [corp.example]
    options: [{name: ndots, value: "2"}]
  containers:
  - name: show
    image: kedge.local/busybox:latest
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "cat /etc/resolv.conf; echo END; sleep 3600"]
"#;

/// What a container sees in /etc/resolv.conf and /etc/hosts, per its
/// `dnsPolicy`, with the kubelet's `--cluster-dns` and `--cluster-domain`.
#[test]
fn pods_get_resolv_conf_per_dns_policy_and_a_managed_hosts_file() -> Result<()> {
    if !ready() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let mut agent = Agent::new(dir.path(), FAST)?;
    let mut extra: Vec<&str> = FAST.to_vec();
    extra.extend(["--cluster-dns", "10.42.0.1", "--cluster-domain", "kedge.test"]);
    agent.set_extra(&extra);
    agent.start()?;
    let (a, b) = DNS_PODS.split_once("---").expect("two manifests");
    agent.write_manifest("db.yaml", a)?;
    agent.write_manifest("own.yaml", b)?;
    let output = |pod: &'static str| {
        agent.wait_for(&format!("{pod}'s files in its log"), Duration::from_secs(30), || {
            let out = agent.cli(&["logs", pod, "show"]).unwrap_or_default();
            Ok(out.contains("END").then_some(out))
        })
    };
    let db = output("db")?;
    let lines: Vec<&str> = db.lines().collect();
    assert!(lines.contains(&"nameserver 10.42.0.1"), "{db}");
    let search = lines.iter().find(|l| l.starts_with("search ")).expect("a search line");
    assert!(search.starts_with("search default.svc.kedge.test svc.kedge.test kedge.test"), "{search}");
    assert!(lines.contains(&"options ndots:5 edns0"), "{db}");
    assert!(lines.contains(&"127.0.0.1\tlocalhost"), "{db}");
    assert!(
        lines.iter().any(|l| l.ends_with("\tdb-0.db.default.svc.kedge.test\tdb-0")),
        "the pod's FQDN from its subdomain: {db}"
    );
    assert!(lines.contains(&"10.1.2.3\tfoo.local") && lines.contains(&"10.1.2.3\tbar.local"), "{db}");

    let own = output("own")?;
    assert_eq!(own, "search corp.example\nnameserver 192.0.2.53\noptions ndots:2\nEND\n");
    Ok(())
}
