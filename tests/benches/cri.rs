//! CRI runtime benchmark (method in BENCHMARKS.md). Needs root, and for the
//! baselines Debian's containerd, runc and crun:
//!
//! 1. RunPodSandbox + CreateContainer + StartContainer of a busybox `sleep`
//!    (host-network pods), 50 times, through the same `k8s-cri` client
//!    against kedge-agent's socket and a private containerd + runc
//!    (`scripts/containerd-baseline.sh`), in the same run: p50 / p99.
//! 2. create → exit of `true` on one bundle: libcontainer in-process (what
//!    the agent does), `runc run` and `crun run`. crun refuses this host's
//!    hybrid cgroups, so the whole benchmark runs in a private mount
//!    namespace with /sys/fs/cgroup/unified unmounted (the host is untouched).
//! 3. kedge-agent RSS idle and with 30 running pods, with the pod network on
//!    (in the benchmark's own network namespace).
//! 4. RunPodSandbox alone of a pod with its own network namespace, against
//!    an agent with the pod network and one without (`--no-pod-network`):
//!    what the veth, the address and the routes cost.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use kedge_tests::agent::Agent;
use kedge_tests::cri::CriClient;
use kedge_tests::percentile;

const PODS: usize = 50;
const RSS_PODS: usize = 30;

fn summary(name: &str, mut v: Vec<Duration>) -> String {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "{name:<44} n={:<3} p50 {:>7.1} ms   p99 {:>7.1} ms",
        v.len(),
        ms(percentile(&v, 0.5)),
        ms(percentile(&v, 0.99))
    )
}

/// Re-runs this binary in a private mount namespace without the cgroup v2
/// mount of a hybrid host (crun's requirement), and a network namespace of
/// its own (the agent's pod network: bridge, nftables, DNS on the gateway,
/// off the host's); returns false in the child.
fn reexec_in_private_mount_ns() -> Result<bool> {
    if std::env::var_os("KEDGE_BENCH_NS").is_some() {
        return Ok(false);
    }
    let exe = std::env::current_exe()?;
    let status = Command::new("unshare")
        .args([
            "-m",
            "--propagation",
            "private",
            "-n",
            "sh",
            "-c",
            "umount /sys/fs/cgroup/unified 2>/dev/null; ip link set lo up; exec \"$0\" \"$@\"",
        ])
        .arg(exe)
        .args(std::env::args().skip(1))
        .env("KEDGE_BENCH_NS", "1")
        .status()?;
    ensure!(status.success(), "benchmark failed");
    Ok(true)
}

/// The agent's flags for a pod network inside the benchmark's own network
/// namespace.
const POD_NETWORK: [&str; 4] = ["--pod-bridge", "kedge0", "--pod-cidr", "10.88.0.0/24"];

/// RunPodSandbox alone of a pod with its own network namespace, `PODS`
/// times after 3 warm-ups; the sandboxes are removed afterwards.
async fn sandbox_latency(socket: &Path, label: &str) -> Result<Vec<Duration>> {
    let mut client = CriClient::connect(socket).await?;
    let mut times = Vec::new();
    let mut sandboxes = Vec::new();
    for i in 0..PODS + 3 {
        let start = Instant::now();
        sandboxes.push(client.run_sandbox(&format!("{label}-sb-{i}"), false).await?);
        if i >= 3 {
            times.push(start.elapsed());
        }
    }
    for sb in sandboxes {
        client.remove_pod(&sb).await?;
    }
    Ok(times)
}

async fn cri_latency(client: &mut CriClient, image: &str, label: &str) -> Result<Vec<Duration>> {
    let mut times = Vec::new();
    let mut sandboxes = Vec::new();
    for i in 0..PODS + 3 {
        let start = Instant::now();
        let (sb, _) = client.run_pod(&format!("{label}-{i}"), image, &["sleep", "3600"], true).await?;
        // The first three are warm-up.
        if i >= 3 {
            times.push(start.elapsed());
        }
        sandboxes.push(sb);
    }
    for sb in sandboxes {
        client.remove_pod(&sb).await?;
    }
    Ok(times)
}

/// A runc-style bundle running `true`, on a copy of busybox's root.
fn true_bundle(dir: &Path, rootfs: &Path) -> Result<PathBuf> {
    let bundle = dir.join("bundle-true");
    std::fs::create_dir_all(&bundle)?;
    let status = Command::new("cp").arg("-a").arg(rootfs).arg(bundle.join("rootfs")).status()?;
    ensure!(status.success(), "copying the busybox root failed");
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false, "user": {"uid": 0, "gid": 0}, "args": ["true"],
            "env": ["PATH=/bin:/sbin:/usr/bin:/usr/sbin"], "cwd": "/",
            "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]},
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}, {"type": "network"}],
            "cgroupsPath": "/kedge-bench/true",
            "maskedPaths": ["/proc/kcore"],
            "readonlyPaths": ["/proc/sys"]
        }
    });
    std::fs::write(bundle.join("config.json"), serde_json::to_vec_pretty(&config)?)?;
    Ok(bundle)
}

fn cli_true(runtime: &str, root: &Path, bundle: &Path, n: usize) -> Result<Vec<Duration>> {
    let mut v = Vec::new();
    for i in 0..n + 3 {
        let start = Instant::now();
        let out = Command::new(runtime)
            .arg("--root")
            .arg(root)
            .args(["run", "-b"])
            .arg(bundle)
            .arg(format!("b{i}"))
            .stdin(Stdio::null())
            .output()?;
        ensure!(out.status.success(), "{runtime} run failed: {}", String::from_utf8_lossy(&out.stderr));
        if i >= 3 {
            v.push(start.elapsed());
        }
    }
    Ok(v)
}

/// Returns the create→exit times, the create→exit+delete times and the
/// per-phase medians (create, start, run+exit, delete).
fn in_process_true(root: &Path, bundle: &Path, n: usize) -> Result<(Vec<Duration>, Vec<Duration>, [Duration; 4])> {
    use libcontainer::container::builder::ContainerBuilder;
    use libcontainer::syscall::syscall::SyscallType;
    let mut v = Vec::new();
    let mut whole = Vec::new();
    let mut phases: [Vec<Duration>; 4] = Default::default();
    let sink = bundle.join("out");
    for i in 0..n + 3 {
        let start = Instant::now();
        // stdout/stderr to a file: libcontainer breaks /dev/null (runtime-notes).
        let out = std::fs::File::create(&sink)?;
        let err = out.try_clone()?;
        let mut c = ContainerBuilder::new(format!("k{i}"), SyscallType::default())
            .with_root_path(root)?
            .with_stdout(out)
            .with_stderr(err)
            .as_init(bundle)
            .with_systemd(false)
            .with_detach(true)
            .build()?;
        let created = Instant::now();
        c.start()?;
        let started = Instant::now();
        let pid = c.pid().context("no pid")?;
        nix::sys::wait::waitpid(pid, None)?;
        let exited = Instant::now();
        c.delete(true)?;
        if i >= 3 {
            v.push(exited - start);
            whole.push(start.elapsed());
            for (k, d) in
                [created - start, started - created, exited - started, exited.elapsed()].into_iter().enumerate()
            {
                phases[k].push(d);
            }
        }
    }
    let median = |mut p: Vec<Duration>| {
        p.sort();
        percentile(&p, 0.5)
    };
    let [a, b, c, d] = phases;
    Ok((v, whole, [median(a), median(b), median(c), median(d)]))
}

/// The `true` create→exit runs of part 2, in-process and through the CLIs.
fn true_runs(dir: &Path, bundle: &Path, tag: &str, report: &mut Vec<String>) -> Result<()> {
    let (times, whole, phases) = in_process_true(&dir.join("lc"), bundle, PODS)?;
    report.push(summary(&format!("true{tag}: kedge in-process, create→exit"), times));
    report.push(summary(&format!("true{tag}: kedge in-process, create→exit+delete"), whole));
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let [create, start, run, delete] = phases.map(ms);
    report.push(format!(
        "    phases (median): create {create:.1} ms, start {start:.1} ms, run+exit {run:.1} ms, delete {delete:.1} ms"
    ));
    for cli in ["runc", "crun"] {
        match cli_true(cli, &dir.join(cli), bundle, PODS) {
            Ok(v) => report.push(summary(&format!("true{tag}: `{cli} run` (Debian)"), v)),
            Err(e) => report.push(format!("true{tag}: {cli} skipped: {e:#}")),
        }
    }
    Ok(())
}

/// On a hybrid host (this one), replaces this private mount namespace's
/// /sys/fs/cgroup with the cgroup2 hierarchy alone, so that libcontainer and
/// crun take their cgroup v2 path. The controllers stay bound to the v1
/// hierarchies, so the v2 cgroups have none: this measures the v2 code path
/// (no per-hierarchy set-up), not v2 controller writes. Returns false where
/// /sys/fs/cgroup was not a v1 tmpfs.
fn hybrid_to_unified() -> Result<bool> {
    if std::env::var_os("KEDGE_BENCH_NS").is_none() || !Path::new("/sys/fs/cgroup/memory").exists() {
        return Ok(false);
    }
    let status = Command::new("sh")
        .args(["-c", "umount -R /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup"])
        .status()?;
    ensure!(status.success(), "could not mount cgroup2 on /sys/fs/cgroup in the benchmark's mount namespace");
    Ok(true)
}

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(()); // `cargo test --benches` asks for a list
    }
    if !kedge_tests::is_root() {
        bail!("the CRI benchmark needs root (namespaces, cgroups, mounts)");
    }
    if reexec_in_private_mount_ns()? {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let root =
        std::env::var("CARGO_MANIFEST_DIR").map(PathBuf::from)?.parent().map(Path::to_path_buf).unwrap_or_default();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut report = vec![format!("kedge CRI benchmark, {}", jiff::Timestamp::now())];
    // `cargo bench --bench cri -- true` runs only part 2 (for profiling it).
    let only_true = std::env::args().skip(1).any(|a| a == "true");

    // --- agent RSS idle, then the CRI latency against kedge-agent ---------------
    // The pod network on, as an agent runs by default (pods get a veth and an
    // address; the table, the DNS server and nftables are set up).
    let mut agent = Agent::new(&tmp.path().join("agent"), &POD_NETWORK)?;
    agent.start()?;
    let pid = agent.pid().context("agent pid")?;
    let socket = agent.socket.clone();
    agent.wait_for("the CRI socket", Duration::from_secs(30), || Ok(socket.exists().then_some(())))?;
    std::thread::sleep(Duration::from_secs(2));
    let idle = kedge_tests::rss_kib(pid);
    report.push(format!("kedge-agent RSS idle                          {:.1} MiB", idle as f64 / 1024.0));

    if only_true {
        // one pod, so that the busybox layer is unpacked for the bundle below
        rt.block_on(async {
            let mut client = CriClient::connect(&socket).await?;
            let sb = client.run_pod("unpack", "kedge.local/busybox:latest", &["true"], false).await?.0;
            client.remove_pod(&sb).await
        })?;
    } else {
        let (kedge, rss30) = rt.block_on(async {
            let mut client = CriClient::connect(&socket).await?;
            let mut sandboxes = Vec::new();
            for i in 0..RSS_PODS {
                sandboxes.push(
                    client
                        .run_pod(&format!("rss-{i}"), "kedge.local/busybox:latest", &["sleep", "3600"], false)
                        .await?
                        .0,
                );
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            let rss = kedge_tests::rss_kib(pid);
            for sb in sandboxes {
                client.remove_pod(&sb).await?;
            }
            let t = cri_latency(&mut client, "kedge.local/busybox:latest", "kedge").await?;
            anyhow::Ok((t, rss))
        })?;
        report
            .push(format!("kedge-agent RSS with {RSS_PODS} running pods            {:.1} MiB", rss30 as f64 / 1024.0));
        report.push(summary("kedge-agent: RunPodSandbox+Create+Start", kedge));

        // --- what the pod network adds to RunPodSandbox ------------------------------
        let with = rt.block_on(sandbox_latency(&socket, "net"))?;
        let mut bare = Agent::new(&tmp.path().join("bare"), &["--no-pod-network"])?;
        bare.start()?;
        let bare_socket = bare.socket.clone();
        bare.wait_for("the CRI socket", Duration::from_secs(30), || Ok(bare_socket.exists().then_some(())))?;
        let without = rt.block_on(sandbox_latency(&bare_socket, "bare"))?;
        drop(bare);
        report.push(summary("RunPodSandbox, pod network (veth, address)", with));
        report.push(summary("RunPodSandbox, network namespace only", without));

        // --- the same client against containerd + runc -------------------------------
        let script = root.join("scripts/containerd-baseline.sh");
        let cdir = tmp.path().join("containerd");
        let started = Command::new("bash").arg(&script).arg("start").arg(&cdir).stderr(Stdio::inherit()).output();
        match started {
            Ok(out) if out.status.success() => {
                let sock = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_string());
                let result = rt.block_on(async {
                    let mut client = CriClient::connect(&sock).await?;
                    cri_latency(&mut client, "kedge.local/busybox:latest", "containerd").await
                });
                let _ = Command::new("bash").arg(&script).arg("stop").arg(&cdir).status();
                report.push(summary("containerd 1.6 + runc: RunPodSandbox+Create+Start", result?));
            }
            other => report.push(format!("containerd baseline skipped: {other:?}")),
        }
    }

    // --- create → exit of `true` on one bundle ----------------------------------
    let layers = agent.data.join("images/layers");
    let rootfs = std::fs::read_dir(&layers)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_dir() && !p.to_string_lossy().ends_with(".users"))
        .context("an unpacked busybox layer")?;
    drop(agent);
    let bundle = true_bundle(tmp.path(), &rootfs)?;
    true_runs(tmp.path(), &bundle, "", &mut report)?;
    // the parent cgroup "/kedge-bench" libcontainer and the CLIs made in each hierarchy
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup")?.flatten() {
        let _ = std::fs::remove_dir(hierarchy.path().join("kedge-bench"));
    }
    if hybrid_to_unified()? {
        true_runs(&tmp.path().join("v2"), &bundle, " [v2]", &mut report)?;
        let _ = std::fs::remove_dir("/sys/fs/cgroup/kedge-bench");
    }
    let _ = std::fs::remove_dir_all(std::env::temp_dir().join("kedge-cri-logs"));
    let text = report.join("\n");
    println!("{text}");
    let out = root.join("target/bench-cri.txt");
    std::fs::write(&out, format!("{text}\n"))?;
    println!("(written to {})", out.display());
    Ok(())
}
