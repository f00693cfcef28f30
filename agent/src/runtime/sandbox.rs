//! Pod sandboxes without a pause process: the agent creates the pod's net,
//! ipc and uts namespaces on a short-lived thread and pins each with a bind
//! mount of `/proc/thread-self/ns/*`, the way `ip netns add` does. Containers
//! join them by path. Also the pod's `/etc/hosts`, `/etc/resolv.conf` and
//! `/etc/hostname`, and the pod cgroup's removal.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};

use super::RuntimeError;

/// Makes `dir` a private mount of itself, so namespace pins made in it do
/// not propagate into other mount namespaces (containers') and back.
pub fn prepare_pin_dir(dir: &Path) -> Result<(), RuntimeError> {
    fs::create_dir_all(dir).map_err(RuntimeError::io(dir))?;
    if !crate::fsutil::is_mount_point(dir) {
        mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(RuntimeError::sys(dir))?;
    }
    mount(None::<&str>, dir, None::<&str>, MsFlags::MS_PRIVATE, None::<&str>).map_err(RuntimeError::sys(dir))?;
    Ok(())
}

pub struct Namespaces {
    pub net: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
}

/// Creates and pins the namespaces a sandbox owns.
pub fn create_namespaces(
    pin_dir: &Path,
    id: &str,
    net: bool,
    ipc: bool,
    hostname: &str,
) -> Result<Namespaces, RuntimeError> {
    let uts = net; // host-network pods keep the host's hostname, as with the kubelet
    let pins = Namespaces {
        net: net.then(|| pin_dir.join(format!("{id}-net"))),
        ipc: ipc.then(|| pin_dir.join(format!("{id}-ipc"))),
        uts: uts.then(|| pin_dir.join(format!("{id}-uts"))),
    };
    let hostname = hostname.to_string();
    let targets: Vec<(&'static str, PathBuf)> = [("net", &pins.net), ("ipc", &pins.ipc), ("uts", &pins.uts)]
        .into_iter()
        .filter_map(|(kind, p)| p.clone().map(|p| (kind, p)))
        .collect();
    if targets.is_empty() {
        return Ok(pins);
    }
    let thread_targets = targets.clone();
    // unshare() on this thread only: the namespaces die with the thread unless pinned.
    let result = std::thread::spawn(move || -> Result<(), RuntimeError> {
        let mut flags = CloneFlags::empty();
        for (kind, _) in &thread_targets {
            flags |= match *kind {
                "net" => CloneFlags::CLONE_NEWNET,
                "ipc" => CloneFlags::CLONE_NEWIPC,
                _ => CloneFlags::CLONE_NEWUTS,
            };
        }
        unshare(flags).map_err(RuntimeError::sys("unshare"))?;
        if uts {
            nix::unistd::sethostname(&hostname).map_err(RuntimeError::sys("sethostname"))?;
        }
        if net {
            super::netdev::set_loopback_up().map_err(RuntimeError::io("lo"))?;
        }
        for (kind, pin) in &thread_targets {
            fs::File::create(pin).map_err(RuntimeError::io(pin))?;
            let source = format!("/proc/thread-self/ns/{kind}");
            mount(Some(source.as_str()), pin, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                .map_err(RuntimeError::sys(pin))?;
        }
        Ok(())
    })
    .join()
    .unwrap_or_else(|_| {
        Err(RuntimeError::Io { path: pin_dir.to_path_buf(), source: io::Error::other("namespace thread panicked") })
    });
    if let Err(e) = result {
        release_namespaces(&pins);
        return Err(e);
    }
    Ok(pins)
}

/// Unpins (and so frees, once no process is in them) a sandbox's namespaces.
pub fn release_namespaces(ns: &Namespaces) {
    for pin in [&ns.net, &ns.ipc, &ns.uts].into_iter().flatten() {
        if pin.exists() {
            let _ = umount2(pin, MntFlags::MNT_DETACH);
            let _ = fs::remove_file(pin);
        }
    }
}

/// Whether every pin still holds a namespace (after a reboot they are empty files).
pub fn namespaces_alive(ns: &Namespaces) -> bool {
    [&ns.net, &ns.ipc, &ns.uts].into_iter().flatten().all(|p| crate::fsutil::is_mount_point(p))
}

/// Writes the pod's resolv.conf (from the sandbox's CRI DNS config; the
/// node's config without one, systemd-resolved's stub replaced by its
/// upstreams) and hostname files into `dir`.
pub fn write_pod_files(dir: &Path, hostname: &str, dns: Option<&k8s_cri::v1::DnsConfig>) -> Result<(), RuntimeError> {
    fs::create_dir_all(dir).map_err(RuntimeError::io(dir))?;
    let resolv = match dns {
        Some(d) if !d.servers.is_empty() || !d.searches.is_empty() => crate::net::resolv::render(d),
        _ => {
            let host = crate::net::resolv::HostResolv::default().read();
            let (servers, searches, options) = (host.nameservers, host.searches, host.options);
            crate::net::resolv::render(&k8s_cri::v1::DnsConfig { servers, searches, options })
        }
    };
    for (name, content) in [("resolv.conf", resolv), ("hostname", format!("{hostname}\n"))] {
        let p = dir.join(name);
        fs::write(&p, content).map_err(RuntimeError::io(&p))?;
    }
    Ok(())
}

/// Writes (or rewrites: containers see the same file) the pod's hosts file
/// into `dir`: see [`crate::net::hosts`]. `pod_ip`: `None` until the pod
/// has an address; `hostNetwork` pods get the node's file.
pub fn write_hosts_file(
    dir: &Path,
    hosts: &crate::net::hosts::PodHosts,
    host_network: bool,
    pod_ip: Option<std::net::IpAddr>,
) -> Result<(), RuntimeError> {
    let node = host_network.then(|| fs::read_to_string("/etc/hosts").unwrap_or_default());
    let p = dir.join("hosts");
    fs::write(&p, hosts.render(pod_ip, node.as_deref())).map_err(RuntimeError::io(&p))
}

/// Removes a pod cgroup (and anything left under it) from every hierarchy.
pub fn remove_cgroup(path: &str) {
    let rel = path.trim_start_matches('/');
    if rel.is_empty() {
        return;
    }
    let mut roots = vec![PathBuf::from("/sys/fs/cgroup")];
    if let Ok(entries) = fs::read_dir("/sys/fs/cgroup") {
        roots.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    for root in roots {
        let dir = root.join(rel);
        if dir.is_dir() {
            remove_cgroup_tree(&dir);
        }
    }
}

fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    if let Err(e) = fs::remove_dir(dir) {
        tracing::warn!(cgroup = %dir.display(), error = %e, "could not remove cgroup");
    }
}
