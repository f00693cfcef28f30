//! The network lab: separate "machines" on the real kernel for the
//! end-to-end network tests (issue 14). Each machine is a network namespace
//! with an `eth0` on a LAN; a LAN is a bridge in the lab's own "switch"
//! namespace, with a veth into each machine on it. A router machine joins
//! two LANs (IP forwarding on, the gateway `.1` of each), for nodes on
//! different subnets (the VXLAN case).
//!
//! Nothing is created in the caller's namespace: every veth is made
//! directly in the namespaces it belongs to, and the namespaces are named
//! `kedge-lab-{pid}-{n}-{name}`, so labs of parallel tests never meet, and
//! a lab whose test process died (no `Drop`) is swept by the next
//! [`Lab::new`]. Dropping a [`Lab`] kills what still runs in its machines'
//! namespaces and deletes them (their veths and bridges go with them), also
//! when the test failed. Drop agents and controllers before their lab.
//!
//! Programs run in a machine through `nsenter --net` ([`Machine::command`]):
//! only the network namespace changes, so the mount namespace is the one of
//! the whole host, as on a real machine — an agent's mounts (namespace
//! pins, overlays) survive its restart. `/sys/class/net` still shows the
//! host's links there (sysfs belongs to the mount namespace): code under
//! test must use netlink and `/proc/self/net`, which follow the network
//! namespace.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use kedge_tests::netlab::Lab;
//! let mut lab = Lab::new()?; // one LAN, 192.168.77.0/24
//! let server = lab.machine("server")?;
//! let node = lab.machine("node-a")?;
//! let out = node.run("ping", &["-c1", "-W2", &server.ip().to_string()])?;
//! # Ok(()) }
//! ```

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail, ensure};

use crate::{Controller, Kubectl, command_in, run_ok};

/// The prefix of every lab namespace.
const PREFIX: &str = "kedge-lab-";
/// The first LAN of every lab.
pub const DEFAULT_LAN: &str = "192.168.77.0/24";

/// A LAN of a lab (a handle: copy it freely).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lan(usize);

#[derive(Debug)]
struct LanState {
    bridge: String,
    network: Ipv4Addr,
    prefix: u8,
    /// The host part the next machine gets (`.1` is the router's).
    next_host: u32,
    gateway: Option<Ipv4Addr>,
    /// Namespaces of the machines whose first LAN it is: their default
    /// route goes through its router.
    members: Vec<String>,
}

/// One machine: a network namespace with an address on each of its LANs.
#[derive(Debug, Clone)]
pub struct Machine {
    name: String,
    netns: String,
    ips: Vec<Ipv4Addr>,
}

impl Machine {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's name (`ip netns`).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// Where the namespace is pinned (for `nsenter --net=`, `setns`).
    pub fn netns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.netns)
    }

    /// Its address on its first LAN.
    pub fn ip(&self) -> Ipv4Addr {
        self.ips[0]
    }

    /// Its address on each of its LANs, in the order they were given.
    pub fn ips(&self) -> &[Ipv4Addr] {
        &self.ips
    }

    /// A command for `program` that runs on this machine.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        command_in(Some(&self.netns_path()), program)
    }

    /// Runs `program args` on this machine to completion; its stdout.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<String> {
        run_ok(self.command(program).args(args)).with_context(|| format!("on machine {}", self.name))
    }

    /// Starts `program args` on this machine; it is killed when the
    /// returned [`Process`] is dropped.
    pub fn spawn(&self, program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Result<Process> {
        let child = self.command(program).args(args).spawn().with_context(|| format!("spawning on {}", self.name))?;
        Ok(Process(child))
    }
}

/// A process started with [`Machine::spawn`]; killed on drop.
#[derive(Debug)]
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A lab of machines on LANs; everything goes when it is dropped.
#[derive(Debug)]
pub struct Lab {
    /// `kedge-lab-{pid}-{n}-`: the start of its namespaces' names.
    stem: String,
    /// Short and unique on this host: the start of its switch ports' names.
    tag: String,
    switch: String,
    lans: Vec<LanState>,
    /// Every namespace made, in order (the switch first).
    namespaces: Vec<String>,
    ports: u32,
}

fn ip(args: &[&str]) -> Result<String> {
    run_ok(Command::new("ip").args(args))
}

/// `a.b.c.d/len` → (network address, len).
fn parse_cidr(cidr: &str) -> Result<(Ipv4Addr, u8)> {
    let (addr, len) = cidr.split_once('/').with_context(|| format!("{cidr:?} is not a CIDR"))?;
    let addr: Ipv4Addr = addr.parse().with_context(|| format!("address of {cidr:?}"))?;
    let len: u8 = len.parse().with_context(|| format!("prefix of {cidr:?}"))?;
    ensure!((8..=30).contains(&len), "{cidr:?}: a lab LAN is /8 to /30");
    let mask = u32::MAX << (32 - u32::from(len));
    Ok((Ipv4Addr::from(u32::from(addr) & mask), len))
}

/// Kills whatever runs in the namespace, then deletes it.
fn remove_netns(ns: &str) {
    if let Ok(pids) = ip(&["netns", "pids", ns]) {
        for pid in pids.split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
    }
    if let Err(e) = ip(&["netns", "delete", ns]) {
        eprintln!("netlab: cannot delete namespace {ns}: {e:#}");
    }
}

/// The lab namespaces on this host right now.
pub fn lab_namespaces() -> Result<Vec<String>> {
    Ok(ip(&["netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(PREFIX))
        .map(str::to_owned)
        .collect())
}

/// Deletes the namespaces of labs whose test process is gone.
fn sweep_dead_labs() -> Result<()> {
    for ns in lab_namespaces()? {
        let pid = ns[PREFIX.len()..].split('-').next().and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
            eprintln!("netlab: removing {ns}, left behind by a test process that died");
            remove_netns(&ns);
        }
    }
    Ok(())
}

impl Lab {
    /// A lab with its switch and one LAN ([`DEFAULT_LAN`]). Needs root.
    pub fn new() -> Result<Lab> {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        ensure!(crate::is_root(), "the network lab needs root");
        sweep_dead_labs()?;
        let n = COUNT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let stem = format!("{PREFIX}{pid}-{n}-");
        let mut lab = Lab {
            switch: format!("{stem}switch"),
            tag: format!("kl{pid:x}{n:x}"),
            stem,
            lans: Vec::new(),
            namespaces: Vec::new(),
            ports: 0,
        };
        lab.add_netns(&lab.switch.clone())?;
        lab.add_lan(DEFAULT_LAN)?;
        Ok(lab)
    }

    /// Its first LAN.
    pub fn lan(&self) -> Lan {
        Lan(0)
    }

    /// The namespace-name stem of this lab (`kedge-lab-{pid}-{n}-`).
    pub fn stem(&self) -> &str {
        &self.stem
    }

    /// The short tag its switch ports are named after.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    fn add_netns(&mut self, ns: &str) -> Result<()> {
        ip(&["netns", "add", ns])?;
        self.namespaces.push(ns.to_owned());
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// Another LAN (a bridge on the switch) with addresses from `cidr`.
    pub fn add_lan(&mut self, cidr: &str) -> Result<Lan> {
        let (network, prefix) = parse_cidr(cidr)?;
        if let Some(other) = self.lans.iter().find(|l| l.network == network) {
            bail!("{cidr} is already the LAN on {}", other.bridge);
        }
        let bridge = format!("br{}", self.lans.len());
        ip(&["-n", &self.switch, "link", "add", &bridge, "type", "bridge"])?;
        ip(&["-n", &self.switch, "link", "set", &bridge, "up"])?;
        self.lans.push(LanState { bridge, network, prefix, next_host: 2, gateway: None, members: Vec::new() });
        Ok(Lan(self.lans.len() - 1))
    }

    fn lan_state(&mut self, lan: Lan) -> Result<&mut LanState> {
        self.lans.get_mut(lan.0).with_context(|| format!("no LAN {} in this lab", lan.0))
    }

    /// The network of a LAN as `a.b.c.d/len`.
    pub fn cidr(&self, lan: Lan) -> Option<String> {
        self.lans.get(lan.0).map(|l| format!("{}/{}", l.network, l.prefix))
    }

    /// Plugs interface `ifname` of namespace `ns` into `lan` with `host`'s
    /// address on it (`None`: the next free one).
    fn plug(&mut self, ns: &str, ifname: &str, lan: Lan, host: Option<u32>) -> Result<Ipv4Addr> {
        self.ports += 1;
        let port = format!("{}p{}", self.tag, self.ports);
        let switch = self.switch.clone();
        let l = self.lan_state(lan)?;
        let host = match host {
            Some(h) => h,
            None => {
                let h = l.next_host;
                l.next_host += 1;
                h
            }
        };
        ensure!(host < (1u32 << (32 - u32::from(l.prefix))) - 1, "LAN {}/{} is full", l.network, l.prefix);
        let addr = Ipv4Addr::from(u32::from(l.network) + host);
        let (bridge, prefix) = (l.bridge.clone(), l.prefix);
        // Made directly in both namespaces: nothing passes through the host's.
        ip(&["link", "add", ifname, "netns", ns, "type", "veth", "peer", "name", &port, "netns", &switch])?;
        ip(&["-n", &switch, "link", "set", &port, "master", &bridge, "up"])?;
        ip(&["-n", ns, "addr", "add", &format!("{addr}/{prefix}"), "dev", ifname])?;
        ip(&["-n", ns, "link", "set", ifname, "up"])?;
        Ok(addr)
    }

    /// A machine named `name` on the first LAN.
    pub fn machine(&mut self, name: &str) -> Result<Machine> {
        self.machine_on(name, &[Lan(0)])
    }

    /// A machine with an interface (`eth0`, `eth1`, …) on each of `lans`;
    /// its default route goes through the first LAN's router, if it has one.
    pub fn machine_on(&mut self, name: &str, lans: &[Lan]) -> Result<Machine> {
        ensure!(!lans.is_empty(), "a machine needs a LAN");
        let ns = format!("{}{name}", self.stem);
        ensure!(!self.namespaces.contains(&ns), "the lab has a machine {name} already");
        self.add_netns(&ns)?;
        let mut ips = Vec::new();
        for (i, lan) in lans.iter().enumerate() {
            ips.push(self.plug(&ns, &format!("eth{i}"), *lan, None)?);
        }
        let first = self.lan_state(lans[0])?;
        first.members.push(ns.clone());
        if let Some(gw) = first.gateway {
            ip(&["-n", &ns, "route", "replace", "default", "via", &gw.to_string()])?;
        }
        Ok(Machine { name: name.to_owned(), netns: ns, ips })
    }

    /// A router joining `lans`: `.1` on each, forwarding between them, and
    /// the default gateway of every machine whose first LAN is one of them
    /// (those made before and after it).
    pub fn router(&mut self, name: &str, lans: &[Lan]) -> Result<Machine> {
        let ns = format!("{}{name}", self.stem);
        ensure!(!self.namespaces.contains(&ns), "the lab has a machine {name} already");
        self.add_netns(&ns)?;
        let mut ips = Vec::new();
        for (i, lan) in lans.iter().enumerate() {
            ensure!(self.lan_state(*lan)?.gateway.is_none(), "LAN {} has a router already", lan.0);
            let gw = self.plug(&ns, &format!("eth{i}"), *lan, Some(1))?;
            ips.push(gw);
        }
        let machine = Machine { name: name.to_owned(), netns: ns.clone(), ips: ips.clone() };
        machine.run("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        for (lan, gw) in lans.iter().zip(&ips) {
            let members = {
                let l = self.lan_state(*lan)?;
                l.gateway = Some(*gw);
                l.members.clone()
            };
            for m in &members {
                ip(&["-n", m, "route", "replace", "default", "via", &gw.to_string()])?;
            }
        }
        Ok(machine)
    }

    /// Starts `kedge-controller` on `machine`: its API on the machine's
    /// address port 6443 (HTTPS with the generated CA and token, as on any
    /// non-loopback address), its embedded broker over TLS on port 8883 there, data
    /// in `dir`. The kubectl it returns runs on that machine too (a wrapper
    /// script in `dir`), so nothing has to reach the lab from outside.
    /// An agent for `machine` (not started), in its namespace under `dir`,
    /// joined to `ctl` with a fresh token, named after the machine and with
    /// a pod network on `kedge0`; `extra` are more `run` flags.
    pub fn agent(
        &self,
        ctl: &Controller,
        machine: &Machine,
        dir: &Path,
        extra: &[&str],
    ) -> Result<crate::agent::Agent> {
        let broker = ctl.broker.clone().context("the controller runs no fleet link")?;
        let token = ctl.token()?;
        // Over TLS, trusting the cluster CA (the controller's listener on
        // its machine's address).
        let ca = ctl.data_dir.join("tls/ca.crt").display().to_string();
        let mut args = vec![
            "--broker",
            &broker,
            "--broker-ca",
            &ca,
            "--token",
            &token,
            "--node-name",
            machine.name(),
            "--pod-bridge",
            "kedge0",
        ];
        args.extend_from_slice(extra);
        let mut agent = crate::agent::Agent::new(dir, &args)?;
        agent.set_netns(&machine.netns_path());
        Ok(agent)
    }

    pub fn controller(&self, machine: &Machine, dir: &Path, extra: &[&str]) -> Result<Option<(Controller, Kubectl)>> {
        let Some(bin) = crate::kubectl_path() else {
            crate::require(false, "kubectl is not installed");
            return Ok(None);
        };
        std::fs::create_dir_all(dir)?;
        let listen = format!("{}:6443", machine.ip());
        // Other machines reach the broker over TLS only.
        let mqtt = format!("{}:8883", machine.ip());
        let mut args = vec!["--mqtts-listen", mqtt.as_str()];
        args.extend_from_slice(extra);
        let ctl = Controller::start_in(Some(&machine.netns_path()), &dir.join("data"), &listen, &args)?;
        let wrapper = dir.join(format!("kubectl-{}", machine.name));
        std::fs::write(
            &wrapper,
            format!("#!/bin/sh\nexec nsenter --net={} -- {} \"$@\"\n", machine.netns_path().display(), bin.display()),
        )?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;
        let k = Kubectl { bin: wrapper, kubeconfig: ctl.kubeconfig(), cache: dir.join("kube-cache") };
        Ok(Some((ctl, k)))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Machines first, the switch (with the bridges) last.
        for ns in self.namespaces.iter().rev() {
            remove_netns(ns);
        }
    }
}
