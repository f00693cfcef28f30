//! The CRI runtime against the real kernel: namespaces, cgroups, overlayfs,
//! libcontainer. Needs root (CI runs as root; locally these skip loudly).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use k8s_cri::v1 as cri;
use kedge_agent::runtime::{ContainerState, Options, Runtime, Snapshotter};

fn ready() -> bool {
    !kedge_tests::under_qemu_user("containers (qemu-user cannot create them)")
        && kedge_tests::require(kedge_tests::is_root(), "root (containers need namespaces, cgroups and mounts)")
}

/// Unmounts the runtime's private `DATA/ns` mount when the test ends (the
/// agent keeps it across restarts), so the temporary directory can go.
struct NsMount(std::path::PathBuf);

impl Drop for NsMount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

async fn runtime(dir: &Path, snapshotter: Option<Snapshotter>) -> (Runtime, NsMount) {
    // libcontainer reports a container init's failure only through tracing.
    let _ = tracing_subscriber::fmt().with_env_filter("warn,libcontainer::seccomp=error,libcgroups=error").try_init();
    let mut opts = Options::new(dir.join("data"));
    opts.snapshotter = snapshotter;
    // This test binary is not kedge-agent: point the runtime at the real one
    // for the libcontainer helper.
    opts.helper = kedge_tests::binary("kedge-agent").expect("kedge-agent builds");
    let rt = Runtime::open(opts).expect("runtime opens");
    let archive = kedge_tests::busybox_image().expect("busybox image builds");
    let names = rt.images().import(&archive).expect("busybox imports");
    assert_eq!(names, vec!["kedge.local/busybox:latest".to_string()]);
    let ns = NsMount(rt.paths().ns());
    (rt, ns)
}

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

fn container_config(name: &str, command: &[&str], memory: i64) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: name.into(), attempt: 0 }),
        image: Some(cri::ImageSpec { image: "kedge.local/busybox:latest".into(), ..Default::default() }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}/0.log"),
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: memory,
                cpu_shares: 512,
                ..Default::default()
            }),
            security_context: Some(cri::LinuxContainerSecurityContext { no_new_privs: true, ..Default::default() }),
        }),
        ..Default::default()
    }
}

async fn wait_state(rt: &Runtime, id: &str, want: ContainerState) -> cri::ContainerStatus {
    for _ in 0..200 {
        let st = rt.container_status(id).expect("status");
        if st.state == want.cri() as i32 {
            return st;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("container {id} never reached {want:?}: {:?}", rt.container_status(id));
}

fn mounts() -> String {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default()
}

#[tokio::test(flavor = "current_thread")]
async fn container_runs_logs_and_exits_with_its_code() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let (rt, _ns) = runtime(tmp.path(), None).await;
    let logs = tmp.path().join("logs");
    let sb = rt.run_pod_sandbox(sandbox_config("web", &logs), String::new()).await.expect("sandbox");
    // The script forks (a subshell), uses the pod's hostname, and exits 3.
    let script = "echo hello; echo oops >&2; echo host=$(hostname); id -u; grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status; exit 3";
    let cfg = container_config("main", &["sh", "-c", script], 64 << 20);
    let id = rt.create_container(&sb, cfg, None).await.expect("create");
    assert_eq!(rt.container_status(&id).expect("status").state, cri::ContainerState::ContainerCreated as i32);
    rt.start_container(&id).await.expect("start");
    let st = wait_state(&rt, &id, ContainerState::Exited).await;
    assert_eq!((st.exit_code, st.reason.as_str()), (3, "Error"));
    assert!(st.finished_at >= st.started_at && st.started_at > 0);

    // Seccomp mode 2 is a filter: the default profile is loaded.
    let wants = [
        ("stdout", "hello"),
        ("stderr", "oops"),
        ("stdout", "host=web"),
        ("stdout", "0"),
        ("stdout", "Seccomp:\t2"),
        ("stdout", "NoNewPrivs:\t1"),
    ];
    // The log pumps copy each pipe on their own: wait until every line is in
    // the file (or the deadline), then check.
    let records = |log: &str| -> Vec<(String, String)> {
        log.lines()
            .filter_map(kedge_agent::runtime::logs::parse_record)
            .map(|r| (r.stream.to_string(), r.text.to_string()))
            .collect()
    };
    let has =
        |lines: &[(String, String)], want: (&str, &str)| lines.contains(&(want.0.to_string(), want.1.to_string()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = std::fs::read_to_string(logs.join("main/0.log")).unwrap_or_default();
        if wants.iter().all(|w| has(&records(&log), *w)) || tokio::time::Instant::now() > deadline {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let lines = records(&log);
    assert_eq!(lines.len(), log.lines().count(), "every line is a CRI log record: {log}");
    for want in wants {
        assert!(has(&lines, want), "{want:?} missing from {log}");
    }

    let listed = rt.list_containers(Some(&cri::ContainerFilter { pod_sandbox_id: sb.clone(), ..Default::default() }));
    assert_eq!(listed.len(), 1);
    rt.remove_pod_sandbox(&sb).await.expect("remove sandbox");
    assert!(rt.list_containers(None).is_empty());
    assert!(!mounts().contains(&sb), "no mount of the sandbox is left");
    assert!(!mounts().contains(&id), "no mount of the container is left");
}

#[tokio::test(flavor = "current_thread")]
async fn limits_reach_the_cgroup_exec_works_and_stop_escalates_to_kill() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let (rt, _ns) = runtime(tmp.path(), None).await;
    let sb =
        rt.run_pod_sandbox(sandbox_config("sleeper", &tmp.path().join("logs")), String::new()).await.expect("sandbox");
    let id =
        rt.create_container(&sb, container_config("sleep", &["sleep", "1000"], 48 << 20), None).await.expect("create");
    rt.start_container(&id).await.expect("start");
    wait_state(&rt, &id, ContainerState::Running).await;

    // The memory limit is what the container's own cgroup says (v1 or v2).
    let out = rt
        .exec_sync(
            &id,
            vec![
                "sh".into(),
                "-c".into(),
                "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max".into(),
            ],
            Some(Duration::from_secs(10)),
        )
        .await
        .expect("exec");
    assert_eq!(out.exit_code, 0, "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let sandbox = rt.sandbox_records().into_iter().find(|s| s.id == sb).expect("record");
    let host_path = format!("/sys/fs/cgroup/memory{}/{}/memory.limit_in_bytes", sandbox.cgroup_parent, id);
    let v2_path = format!("/sys/fs/cgroup{}/{}/memory.max", sandbox.cgroup_parent, id);
    let on_host = std::fs::read_to_string(&host_path)
        .or_else(|_| std::fs::read_to_string(&v2_path))
        .expect("cgroup file on the host");
    assert_eq!(on_host.trim(), (48u64 << 20).to_string());

    let out = rt
        .exec_sync(&id, vec!["sh".into(), "-c".into(), "echo out; echo err >&2; exit 7".into()], None)
        .await
        .expect("exec");
    assert_eq!((out.stdout.as_slice(), out.stderr.as_slice(), out.exit_code), (&b"out\n"[..], &b"err\n"[..], 7));

    // busybox sleep as PID 1 ignores SIGTERM: the stop waits out the grace period, then kills.
    let started = std::time::Instant::now();
    rt.stop_container(&id, 1).await.expect("stop");
    assert!(started.elapsed() >= Duration::from_millis(900));
    let st = rt.container_status(&id).expect("status");
    assert_eq!((st.state, st.exit_code), (cri::ContainerState::ContainerExited as i32, 137));
    assert!(rt.exec_sync(&id, vec!["true".into()], None).await.is_err(), "exec into an exited container fails");

    rt.remove_pod_sandbox(&sb).await.expect("remove");
    assert!(!Path::new(&host_path).exists() && !Path::new(&v2_path).exists(), "container cgroup removed");
    let pod_cgroup = format!("/sys/fs/cgroup/memory{}", sandbox.cgroup_parent);
    assert!(!Path::new(&pod_cgroup).exists(), "pod cgroup removed");
    assert!(!tmp.path().join("data/ns").join(format!("{sb}-net")).exists(), "namespace pin removed");
}

#[tokio::test(flavor = "current_thread")]
async fn copy_snapshotter_runs_the_same_image() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let (rt, _ns) = runtime(tmp.path(), Some(Snapshotter::Copy)).await;
    let sb =
        rt.run_pod_sandbox(sandbox_config("copy", &tmp.path().join("logs")), String::new()).await.expect("sandbox");
    let id = rt
        .create_container(&sb, container_config("c", &["sh", "-c", "test -x /bin/sh && touch /tmp/x"], 0), None)
        .await
        .expect("create");
    rt.start_container(&id).await.expect("start");
    let st = wait_state(&rt, &id, ContainerState::Exited).await;
    let log = std::fs::read_to_string(tmp.path().join("logs/c/0.log")).unwrap_or_default();
    assert_eq!((st.exit_code, st.reason.as_str()), (0, "Completed"), "container log: {log}");
    rt.remove_pod_sandbox(&sb).await.expect("remove");
}

#[tokio::test(flavor = "current_thread")]
async fn host_network_read_only_root_and_cpu_and_pids_limits() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let (rt, _ns) = runtime(tmp.path(), None).await;
    let mut sandbox = sandbox_config("hostnet", &tmp.path().join("logs"));
    sandbox.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                network: cri::NamespaceMode::Node as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let sb = rt.run_pod_sandbox(sandbox, String::new()).await.expect("sandbox");
    let mut cfg = container_config("c", &["sleep", "1000"], 0);
    if let Some(linux) = cfg.linux.as_mut() {
        if let Some(r) = linux.resources.as_mut() {
            r.cpu_quota = 50_000;
            r.cpu_period = 100_000;
        }
        if let Some(sc) = linux.security_context.as_mut() {
            sc.readonly_rootfs = true;
        }
    }
    let id = rt.create_container(&sb, cfg, None).await.expect("create");
    rt.start_container(&id).await.expect("start");
    wait_state(&rt, &id, ContainerState::Running).await;
    let run = |cmd: &str| {
        let rt = rt.clone();
        let id = id.clone();
        let cmd = cmd.to_string();
        async move {
            rt.exec_sync(&id, vec!["sh".into(), "-c".into(), cmd], Some(Duration::from_secs(10))).await.expect("exec")
        }
    };
    // Host network: the container sees the host's network namespace.
    let host_ns = std::fs::read_link("/proc/self/ns/net").expect("host netns");
    let out = run("readlink /proc/self/ns/net").await;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), host_ns.display().to_string());
    // Read-only root, writable /tmp? No: all of / is read-only, /dev/shm is not.
    let out = run("touch /x 2>&1; echo rc=$?; touch /dev/shm/y && echo shm-ok").await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Read-only file system") && text.contains("shm-ok"), "{text}");
    let sandbox = rt.sandbox_records().into_iter().find(|s| s.id == sb).expect("record");
    let cg = |ctrl: &str, file: &str| {
        std::fs::read_to_string(format!("/sys/fs/cgroup/{ctrl}{}/{id}/{file}", sandbox.cgroup_parent))
    };
    let quota = cg("cpu", "cpu.cfs_quota_us").or_else(|_| cg("", "cpu.max")).expect("cpu quota file");
    assert!(quota.trim() == "50000" || quota.starts_with("50000 100000"), "cpu quota: {quota}");
    let pids = cg("pids", "pids.max").or_else(|_| cg("", "pids.max")).expect("pids file");
    assert_eq!(pids.trim(), "4096", "the default pids limit");
    rt.remove_pod_sandbox(&sb).await.expect("remove");
}

#[tokio::test(flavor = "current_thread")]
async fn disk_pressure_removes_only_unused_images() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let (rt, _ns) = runtime(tmp.path(), None).await;
    let sb = rt.run_pod_sandbox(sandbox_config("gc", &tmp.path().join("logs")), String::new()).await.expect("sandbox");
    let _created = rt.create_container(&sb, container_config("c", &["sleep", "1000"], 0), None).await.expect("create");
    // As a pulled image is: not pinned (an imported one is, below).
    rt.images().set_pinned("kedge.local/busybox:latest", false).expect("unpin");
    // Any file system is more than 1 % full: that is "pressure" here.
    assert!(rt.collect_images_if_full(1, &[]).await.expect("gc").is_empty(), "an image in use stays");
    assert_eq!(rt.list_images().expect("list").len(), 1);
    rt.remove_pod_sandbox(&sb).await.expect("remove");
    let wanted = ["kedge.local/busybox:latest".to_string()];
    assert!(
        rt.collect_images_if_full(1, &wanted).await.expect("gc").is_empty(),
        "an image a desired pod names stays, though no container uses it yet"
    );
    let removed = rt.collect_images_if_full(1, &[]).await.expect("gc");
    assert_eq!(removed.len(), 1);
    assert!(rt.list_images().expect("list").is_empty());
    let left: Vec<_> = std::fs::read_dir(tmp.path().join("data/images/blobs/sha256")).expect("blobs").collect();
    assert!(left.is_empty(), "blobs of removed images are deleted");
    let archive = kedge_tests::busybox_image().expect("busybox image");
    rt.images().import(&archive).expect("import again");
    assert!(rt.collect_images_if_full(100, &[]).await.expect("gc").is_empty(), "no pressure, nothing removed");
    assert_eq!(rt.list_images().expect("list").len(), 1);
    // Imported (air-gapped: nothing could pull it again): pinned, kept
    // under pressure, and the CRI says so.
    assert!(rt.collect_images_if_full(1, &[]).await.expect("gc").is_empty(), "a pinned image stays");
    let images = rt.list_images().expect("list");
    assert!(images.len() == 1 && images[0].pinned, "{images:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn memory_hog_is_reported_oom_killed() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let (rt, _ns) = runtime(tmp.path(), None).await;
    let sb = rt.run_pod_sandbox(sandbox_config("oom", &tmp.path().join("logs")), String::new()).await.expect("sandbox");
    // dd allocates its 64 MiB block in one go; the limit is 16 MiB.
    let cfg = container_config("hog", &["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"], 16 << 20);
    let id = rt.create_container(&sb, cfg, None).await.expect("create");
    rt.start_container(&id).await.expect("start");
    let st = wait_state(&rt, &id, ContainerState::Exited).await;
    assert_eq!((st.reason.as_str(), st.exit_code), ("OOMKilled", 137));
    rt.remove_pod_sandbox(&sb).await.expect("remove");
}
