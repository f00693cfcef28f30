//! The OCI runtime spec (`config.json`) for a CRI container, built the way
//! containerd's CRI plugin builds it: image entrypoint/cmd/env/workdir/user
//! merged with the CRI config, the pod's namespaces joined by path, a
//! containerd-like default capability set and seccomp profile, masked and
//! read-only /proc paths, and the resources as cgroup limits (libcontainer
//! maps them onto cgroups v1 or v2).

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use k8s_cri::v1 as cri;
use libcontainer::oci_spec::image::ImageConfiguration;
use serde_json::{Value, json};

use super::RuntimeError;
use super::records::SandboxRecord;
use super::seccomp;

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

const READONLY_PATHS: &[&str] = &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// Every capability Linux has, for privileged containers and `add: [ALL]`.
const ALL_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// What else the spec needs besides the CRI config.
pub struct SpecInput<'a> {
    pub config: &'a cri::ContainerConfig,
    pub sandbox: &'a SandboxRecord,
    pub sandbox_dir: &'a Path,
    pub image: &'a ImageConfiguration,
    pub rootfs: &'a Path,
    pub cgroup_path: &'a str,
    pub pids_limit: Option<i64>,
}

fn cap_name(c: &str) -> String {
    let upper = c.to_ascii_uppercase();
    if upper.starts_with("CAP_") { upper } else { format!("CAP_{upper}") }
}

/// The capability set after the CRI's add/drop lists ("ALL" allowed in both).
pub fn capabilities(sc: Option<&cri::LinuxContainerSecurityContext>) -> Vec<String> {
    let privileged = sc.is_some_and(|s| s.privileged);
    let mut caps: BTreeSet<String> = if privileged {
        ALL_CAPS.iter().map(|c| c.to_string()).collect()
    } else {
        seccomp::DEFAULT_CAPS.iter().map(|c| c.to_string()).collect()
    };
    if let Some(c) = sc.and_then(|s| s.capabilities.as_ref()) {
        for add in &c.add_capabilities {
            if add.eq_ignore_ascii_case("ALL") {
                caps.extend(ALL_CAPS.iter().map(|c| c.to_string()));
            } else {
                caps.insert(cap_name(add));
            }
        }
        for drop in &c.drop_capabilities {
            if drop.eq_ignore_ascii_case("ALL") {
                caps.clear();
            } else {
                caps.remove(&cap_name(drop));
            }
        }
    }
    caps.into_iter().collect()
}

/// The command line: Kubernetes `command` replaces the image ENTRYPOINT,
/// `args` the CMD; `command` alone drops the image CMD.
pub fn process_args(config: &cri::ContainerConfig, image: &ImageConfiguration) -> Vec<String> {
    let img = image.config().as_ref();
    let entrypoint = img.and_then(|c| c.entrypoint().clone()).unwrap_or_default();
    let cmd = img.and_then(|c| c.cmd().clone()).unwrap_or_default();
    if !config.command.is_empty() {
        return config.command.iter().chain(&config.args).cloned().collect();
    }
    let args = if config.args.is_empty() { cmd } else { config.args.clone() };
    entrypoint.into_iter().chain(args).collect()
}

fn env(input: &SpecInput) -> Vec<String> {
    let mut env: Vec<String> =
        input.image.config().as_ref().and_then(|c| c.env().clone()).unwrap_or_else(|| vec![DEFAULT_PATH.into()]);
    let mut set = |k: &str, v: &str| {
        let prefix = format!("{k}=");
        env.retain(|e| !e.starts_with(&prefix));
        env.push(format!("{k}={v}"));
    };
    if !input.config.envs.iter().any(|kv| kv.key == "HOSTNAME") {
        set("HOSTNAME", &input.sandbox.hostname);
    }
    for kv in &input.config.envs {
        set(&kv.key, &kv.value);
    }
    // On a terminal, TERM unless the container sets it (as containerd).
    if input.config.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".into());
    }
    env
}

/// uid, gid and supplementary groups: the CRI's run_as_user/run_as_username,
/// else the image's USER (`name`, `uid`, `uid:gid`, `name:group`), looked up
/// in the container's own /etc/passwd and /etc/group.
pub fn user(input: &SpecInput) -> Result<(u32, u32, Vec<u32>), RuntimeError> {
    let sc = input.config.linux.as_ref().and_then(|l| l.security_context.as_ref());
    let image_user = input.image.config().as_ref().and_then(|c| c.user().clone()).unwrap_or_default();
    let (user_part, group_part) = match sc {
        Some(s) if s.run_as_user.is_some() => {
            (s.run_as_user.as_ref().map(|u| u.value.to_string()).unwrap_or_default(), None)
        }
        Some(s) if !s.run_as_username.is_empty() => (s.run_as_username.clone(), None),
        _ => match image_user.split_once(':') {
            Some((u, g)) => (u.to_string(), Some(g.to_string())),
            None => (image_user.clone(), None),
        },
    };
    let passwd = fs::read_to_string(input.rootfs.join("etc/passwd")).unwrap_or_default();
    let group_file = fs::read_to_string(input.rootfs.join("etc/group")).unwrap_or_default();
    let (uid, mut gid, name) = if user_part.is_empty() {
        (0, 0, "root".to_string())
    } else if let Ok(uid) = user_part.parse::<u32>() {
        let entry =
            passwd.lines().map(|l| l.split(':').collect::<Vec<_>>()).find(|f| f.get(2) == Some(&user_part.as_str()));
        let gid = entry.as_ref().and_then(|f| f.get(3)).and_then(|g| g.parse().ok()).unwrap_or(0);
        (uid, gid, entry.and_then(|f| f.first().map(|n| n.to_string())).unwrap_or_default())
    } else {
        let f = passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.first() == Some(&user_part.as_str()))
            .ok_or_else(|| {
                RuntimeError::InvalidArgument(format!("user {user_part:?} is not in the image's /etc/passwd"))
            })?;
        let uid = f.get(2).and_then(|u| u.parse().ok()).unwrap_or(0);
        let gid = f.get(3).and_then(|g| g.parse().ok()).unwrap_or(0);
        (uid, gid, user_part.clone())
    };
    if let Some(g) = sc.and_then(|s| s.run_as_group.as_ref()) {
        gid = u32::try_from(g.value)
            .map_err(|_| RuntimeError::InvalidArgument(format!("run_as_group {} is out of range", g.value)))?;
    } else if let Some(g) = group_part {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => group_file
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.first() == Some(&g.as_str()))
                .and_then(|f| f.get(2).and_then(|n| n.parse().ok()))
                .ok_or_else(|| {
                    RuntimeError::InvalidArgument(format!("group {g:?} is not in the image's /etc/group"))
                })?,
        };
    }
    let mut additional: BTreeSet<u32> = group_file
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| !name.is_empty() && f.get(3).is_some_and(|m| m.split(',').any(|m| m == name)))
        .filter_map(|f| f.get(2).and_then(|n| n.parse().ok()))
        .collect();
    if let Some(s) = sc {
        additional.extend(s.supplemental_groups.iter().filter_map(|g| u32::try_from(*g).ok()));
    }
    additional.remove(&gid);
    Ok((uid, gid, additional.into_iter().collect()))
}

fn default_mounts(sandbox_dir: &Path, host_network: bool) -> Vec<Value> {
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
    ];
    // sysfs can only be mounted by a process that owns its network
    // namespace; host-network containers get a read-only bind of the host's.
    if host_network {
        mounts.push(json!({"destination": "/sys", "type": "bind", "source": "/sys", "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]}));
    } else {
        mounts.push(json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}));
    }
    // The container's own cgroup, read-only (libcontainer mounts the v1
    // hierarchies or the v2 tree as the host has them).
    mounts.push(json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}));
    for (file, dest) in [("hosts", "/etc/hosts"), ("resolv.conf", "/etc/resolv.conf"), ("hostname", "/etc/hostname")] {
        mounts.push(json!({
            "destination": dest,
            "type": "bind",
            "source": sandbox_dir.join(file),
            "options": ["rbind", "rprivate", "rw"],
        }));
    }
    mounts
}

fn cri_mounts(config: &cri::ContainerConfig) -> Result<Vec<Value>, RuntimeError> {
    let mut out = Vec::new();
    for m in &config.mounts {
        if !m.container_path.starts_with('/') || m.host_path.is_empty() {
            return Err(RuntimeError::InvalidArgument(format!(
                "mount {:?} → {:?}: the container path must be absolute and the host path set",
                m.host_path, m.container_path
            )));
        }
        if !Path::new(&m.host_path).exists() {
            return Err(RuntimeError::InvalidArgument(format!("mount source {:?} does not exist", m.host_path)));
        }
        let propagation = match cri::MountPropagation::try_from(m.propagation) {
            Ok(cri::MountPropagation::PropagationHostToContainer) => "rslave",
            Ok(cri::MountPropagation::PropagationBidirectional) => "rshared",
            _ => "rprivate",
        };
        out.push(json!({
            "destination": m.container_path,
            "type": "bind",
            "source": m.host_path,
            "options": ["rbind", propagation, if m.readonly { "ro" } else { "rw" }],
        }));
    }
    Ok(out)
}

fn resources(config: &cri::ContainerConfig, pids_limit: Option<i64>) -> Value {
    let r = config.linux.as_ref().and_then(|l| l.resources.clone()).unwrap_or_default();
    let mut res = serde_json::Map::new();
    res.insert(
        "devices".into(),
        json!([
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
            {"allow": true, "type": "c", "major": 1, "minor": 5, "access": "rwm"},
            {"allow": true, "type": "c", "major": 1, "minor": 7, "access": "rwm"},
            {"allow": true, "type": "c", "major": 1, "minor": 8, "access": "rwm"},
            {"allow": true, "type": "c", "major": 1, "minor": 9, "access": "rwm"},
            {"allow": true, "type": "c", "major": 5, "minor": 0, "access": "rwm"},
            {"allow": true, "type": "c", "major": 5, "minor": 2, "access": "rwm"},
            {"allow": true, "type": "c", "major": 136, "access": "rwm"},
        ]),
    );
    if r.memory_limit_in_bytes > 0 {
        res.insert("memory".into(), json!({"limit": r.memory_limit_in_bytes}));
    }
    let mut cpu = serde_json::Map::new();
    if r.cpu_shares > 0 {
        cpu.insert("shares".into(), json!(r.cpu_shares));
    }
    if r.cpu_quota > 0 {
        cpu.insert("quota".into(), json!(r.cpu_quota));
        cpu.insert("period".into(), json!(if r.cpu_period > 0 { r.cpu_period } else { 100_000 }));
    }
    if !r.cpuset_cpus.is_empty() {
        cpu.insert("cpus".into(), json!(r.cpuset_cpus));
    }
    if !cpu.is_empty() {
        res.insert("cpu".into(), Value::Object(cpu));
    }
    if let Some(limit) = pids_limit.filter(|l| *l > 0) {
        res.insert("pids".into(), json!({"limit": limit}));
    }
    Value::Object(res)
}

/// The complete `config.json`.
pub fn build(input: &SpecInput) -> Result<Value, RuntimeError> {
    let config = input.config;
    let sc = config.linux.as_ref().and_then(|l| l.security_context.as_ref());
    let privileged = sc.is_some_and(|s| s.privileged);
    let args = process_args(config, input.image);
    if args.is_empty() {
        return Err(RuntimeError::InvalidArgument(
            "no command: neither the container nor its image says what to run".into(),
        ));
    }
    let (uid, gid, additional_gids) = user(input)?;
    let caps = capabilities(sc);
    let cwd = Some(config.working_dir.clone())
        .filter(|w| !w.is_empty())
        .or_else(|| input.image.config().as_ref().and_then(|c| c.working_dir().clone()).filter(|w| !w.is_empty()))
        .unwrap_or_else(|| "/".into());

    let sandbox = input.sandbox;
    let mut namespaces = vec![json!({"type": "pid"}), json!({"type": "mount"})];
    for (kind, pin) in [("network", &sandbox.netns), ("ipc", &sandbox.ipcns), ("uts", &sandbox.utsns)] {
        if let Some(p) = pin {
            namespaces.push(json!({"type": kind, "path": p}));
        }
    }
    let mut mounts = default_mounts(input.sandbox_dir, sandbox.host_network());
    mounts.extend(cri_mounts(config)?);

    let mut linux = json!({
        "namespaces": namespaces,
        "cgroupsPath": input.cgroup_path,
        "resources": resources(config, input.pids_limit),
    });
    if !privileged {
        let masked: Vec<String> = sc
            .map(|s| s.masked_paths.clone())
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| MASKED_PATHS.iter().map(|s| s.to_string()).collect());
        let readonly: Vec<String> = sc
            .map(|s| s.readonly_paths.clone())
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| READONLY_PATHS.iter().map(|s| s.to_string()).collect());
        linux["maskedPaths"] = json!(masked);
        linux["readonlyPaths"] = json!(readonly);
        if let Some(profile) = seccomp_profile(sc, &caps)? {
            linux["seccomp"] = profile;
        }
    }
    let mut spec = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": config.tty,
            "user": {"uid": uid, "gid": gid, "additionalGids": additional_gids},
            "args": args,
            "env": env(input),
            "cwd": cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
        },
        "root": {"path": input.rootfs, "readonly": sc.is_some_and(|s| s.readonly_rootfs)},
        "mounts": mounts,
        "linux": linux,
    });
    // Only `true` is written: libcontainer loads the seccomp filter before
    // dropping capabilities only when the field is absent, which is what a
    // filter without no_new_privs needs (CAP_SYS_ADMIN at load time).
    if sc.is_some_and(|s| s.no_new_privs) {
        spec["process"]["noNewPrivileges"] = json!(true);
    }
    Ok(spec)
}

/// RuntimeDefault (the CRI's zero value) → the default profile; Unconfined →
/// none; Localhost → the JSON profile file the kubelet points at.
fn seccomp_profile(
    sc: Option<&cri::LinuxContainerSecurityContext>,
    caps: &[String],
) -> Result<Option<Value>, RuntimeError> {
    let profile = sc.and_then(|s| s.seccomp.clone()).unwrap_or_default();
    match cri::security_profile::ProfileType::try_from(profile.profile_type) {
        Ok(cri::security_profile::ProfileType::Unconfined) => Ok(None),
        Ok(cri::security_profile::ProfileType::Localhost) => {
            let bytes = fs::read(&profile.localhost_ref).map_err(RuntimeError::io(&profile.localhost_ref))?;
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| RuntimeError::InvalidArgument(format!("seccomp profile {}: {e}", profile.localhost_ref)))
        }
        _ => {
            let p = seccomp::default_profile(caps)
                .map_err(|e| RuntimeError::InvalidArgument(format!("default seccomp profile: {e}")))?;
            serde_json::to_value(p)
                .map(Some)
                .map_err(|e| RuntimeError::InvalidArgument(format!("default seccomp profile: {e}")))
        }
    }
}
