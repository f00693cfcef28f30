//! End to end: a Secret's and a ConfigMap's bytes reach a pod's files
//! unchanged — created with the real kubectl, through the controller's
//! snapshot (CBOR over the embedded broker), the agent's local cache and its
//! volume writer, read inside a real container. Needs root (containers) and
//! kubectl; skips loudly without them (a failure under CI=true).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use kedge_tests::agent::Agent;
use kedge_tests::{controller_and_kubectl, is_root, require, run_ok};

/// `n` random bytes that are not valid UTF-8 (as a DER key or keystore is not).
fn random_binary(n: usize) -> Result<Vec<u8>> {
    let mut bytes = vec![0; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    bytes[0] = 0xff;
    ensure!(std::str::from_utf8(&bytes).is_err(), "0xff is never UTF-8");
    Ok(bytes)
}

/// The host's `sha256sum` of a file: the digest, hex.
fn sha256(path: &Path) -> Result<String> {
    let out = run_ok(Command::new("sha256sum").arg(path))?;
    out.split_whitespace().next().map(str::to_string).context("sha256sum output")
}

const POD: &str = "apiVersion: v1
kind: Pod
metadata: {name: bytes-reader}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: kedge.local/busybox:latest
    imagePullPolicy: IfNotPresent
    command: [sh, -c, 'sha256sum /secret/key.der /config/blob.bin; exec sleep 3600']
    volumeMounts:
    - {name: secret, mountPath: /secret, readOnly: true}
    - {name: config, mountPath: /config, readOnly: true}
  volumes:
  - {name: secret, secret: {secretName: binary-key}}
  - {name: config, configMap: {name: binary-blob}}
";

#[test]
fn binary_secret_and_config_map_reach_the_container_byte_for_byte() -> Result<()> {
    if !require(is_root(), "root (the agent runs containers)") {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let Some((mut ctl, k)) = controller_and_kubectl(dir, &[])? else { return Ok(()) };
    let broker = ctl.broker.clone().context("the controller runs no fleet link")?;
    let token = ctl.token()?;
    let mut agent = Agent::new(&dir.join("n1"), &["--broker", &broker, "--token", &token, "--node-name", "n1"])?;
    agent.start()?;

    let key = dir.join("key.der");
    std::fs::write(&key, random_binary(4096)?)?;
    let blob = dir.join("blob.bin");
    std::fs::write(&blob, random_binary(1024)?)?;
    k.ok(&["create", "secret", "generic", "binary-key", &format!("--from-file=key.der={}", key.display())])?;
    // kubectl puts a file that is not UTF-8 under binaryData.
    k.ok(&["create", "configmap", "binary-blob", &format!("--from-file=blob.bin={}", blob.display())])?;
    let cm = k.json(&["get", "configmap", "binary-blob"])?;
    ensure!(cm["binaryData"]["blob.bin"].is_string(), "the ConfigMap carries binaryData: {cm}");

    let manifest = dir.join("pod.yaml");
    std::fs::write(&manifest, POD)?;
    k.ok(&["apply", "-f", &manifest.to_string_lossy()])?;
    let log = agent.wait_for("the pod's sha256sum output", Duration::from_secs(60), || {
        let log = agent.cli(&["logs", "bytes-reader", "main"]).unwrap_or_default();
        Ok((log.lines().count() >= 2).then_some(log))
    })?;
    assert_eq!(seen(&log, "/secret/key.der")?, sha256(&key)?, "the Secret's file in the container");
    assert_eq!(seen(&log, "/config/blob.bin")?, sha256(&blob)?, "the ConfigMap's binaryData file in the container");

    // Without its controller, a restarted agent runs the pod from its local
    // cache: the files it writes again come from there, byte for byte.
    ctl.terminate()?;
    agent.kill();
    let on_host = volume_file(&agent.data, "secret/key.der")?;
    std::fs::write(&on_host, b"overwritten on the host")?;
    agent.start()?;
    let pid = agent
        .wait_for("the running container's pid", Duration::from_secs(30), || {
            Ok(agent.container("bytes-reader", "main")?.and_then(|c| c["pid"].as_i64()).filter(|p| *p > 0))
        })?
        .to_string();
    run_ok(Command::new("kill").args(["-9", &pid]))?;
    let log = agent.wait_for("the restarted container's sha256sum output", Duration::from_secs(60), || {
        let restarted = agent.container("bytes-reader", "main")?.is_some_and(|c| c["restart_count"] == 1);
        let log = agent.cli(&["logs", "bytes-reader", "main"]).unwrap_or_default();
        Ok((restarted && log.lines().count() >= 2).then_some(log))
    })?;
    assert_eq!(seen(&log, "/secret/key.der")?, sha256(&key)?, "the Secret's file, written again from the cache");
    assert_eq!(seen(&log, "/config/blob.bin")?, sha256(&blob)?, "the ConfigMap's file, written again from the cache");
    drop(agent);
    Ok(())
}

/// The sha256 `sha256sum` printed for `file` in a container's log.
fn seen(log: &str, file: &str) -> Result<String> {
    log.lines()
        .find(|l| l.ends_with(file))
        .and_then(|l| l.split_whitespace().next())
        .map(str::to_string)
        .with_context(|| format!("no sha256 of {file} in the container's log: {log}"))
}

/// `<data>/volumes/<pod uid>/<rel>` on the host, for the one pod there is.
fn volume_file(data: &Path, rel: &str) -> Result<PathBuf> {
    for e in std::fs::read_dir(data.join("volumes"))? {
        let p = e?.path().join(rel);
        if p.exists() {
            return Ok(p);
        }
    }
    anyhow::bail!("no {rel} under {}", data.join("volumes").display())
}

/// The broker is hostile (design.md §3a): a subscriber to everything
/// (`mosquitto_sub -t 'kedge/v1/#'`, payloads as hex) captures every payload
/// while a pod with a Secret volume and a Secret env var starts. The
/// Secret's value is in none of them — not as bytes, not as base64 — for
/// the node's snapshot is sealed to that node; the pod sees the right value.
#[test]
fn a_secret_crosses_the_broker_sealed() -> Result<()> {
    if !require(is_root(), "root (the agent runs containers)")
        || !require(Command::new("mosquitto_sub").arg("--help").output().is_ok(), "mosquitto_sub (mosquitto-clients)")
    {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let Some((_ctl, k)) = controller_and_kubectl(dir, &[])? else { return Ok(()) };
    let broker = _ctl.broker.clone().context("the controller runs no fleet link")?;
    let (host, port) = broker.trim_start_matches("mqtt://").rsplit_once(':').context("broker url")?;
    let capture = dir.join("capture.txt");
    let mut sub = Command::new("mosquitto_sub")
        .args(["-h", host, "-p", port, "-t", "kedge/v1/#", "-F", "%t %x"])
        .stdout(std::fs::File::create(&capture)?)
        .spawn()?;
    let token = _ctl.token()?;
    let mut agent = Agent::new(&dir.join("n1"), &["--broker", &broker, "--token", &token, "--node-name", "n1"])?;
    agent.start()?;
    let value = format!("sealed-{}", hex(&random_binary(12)?));
    k.ok(&["create", "secret", "generic", "db", &format!("--from-literal=password={value}")])?;
    let manifest = dir.join("pod.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1
kind: Pod
metadata: {name: secret-reader}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: kedge.local/busybox:latest
    imagePullPolicy: IfNotPresent
    command: [sh, -c, 'echo \"env=$PASSWORD\"; echo \"file=$(cat /secret/password)\"; exec sleep 3600']
    env:
    - name: PASSWORD
      valueFrom: {secretKeyRef: {name: db, key: password}}
    volumeMounts:
    - {name: secret, mountPath: /secret, readOnly: true}
  volumes:
  - {name: secret, secret: {secretName: db}}
",
    )?;
    k.ok(&["apply", "-f", &manifest.to_string_lossy()])?;
    let log = agent.wait_for("the pod to print its secret", Duration::from_secs(60), || {
        let log = agent.cli(&["logs", "secret-reader", "main"]).unwrap_or_default();
        Ok((log.lines().count() >= 2).then_some(log))
    })?;
    ensure!(log.contains(&format!("env={value}")) && log.contains(&format!("file={value}")), "the pod sees it: {log}");
    std::thread::sleep(Duration::from_secs(1));
    let _ = sub.kill();
    let _ = sub.wait();
    let captured = std::fs::read_to_string(&capture)?;
    let topics: std::collections::BTreeMap<&str, usize> =
        captured.lines().filter_map(|l| l.split(' ').next()).fold(Default::default(), |mut m, t| {
            *m.entry(t).or_default() += 1;
            m
        });
    ensure!(
        topics.contains_key("kedge/v1/nodes/n1/desired"),
        "n1's snapshot was captured; the capture holds, by topic: {topics:?}"
    );
    ensure!(captured.lines().count() >= 5, "a capture of the whole exchange: {captured}");
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&value);
    for needle in [hex(value.as_bytes()), hex(b64.as_bytes())] {
        let found: Vec<&str> =
            captured.lines().filter(|l| l.contains(&needle)).map(|l| l.split(' ').next().unwrap_or("")).collect();
        ensure!(found.is_empty(), "the Secret's value crossed the broker in clear on {found:?}");
    }
    drop(agent);
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
