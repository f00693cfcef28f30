//! Loading a [`Ruleset`] into the kernel with the `nft` binary (as
//! kube-proxy's knftables does: a netlink nftables library would add more
//! to the agent than `nft -f` costs). Everything here blocks on the `nft`
//! process: call it from `tokio::task::spawn_blocking`.
//!
//! The first apply of an [`Applier`] loads the whole script (the
//! [`Ruleset`]'s `Display`); later ones send only what changed since —
//! chains whose rules changed, map elements added or removed — in one
//! transaction too. 1,000 Services × 4 endpoints make a ~580 kB script that
//! takes `nft` about 90 ms; one Service's change is a few lines.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, ExitStatus, Stdio};

use super::{Ruleset, TABLE, write_chain, write_elements, write_rules};

/// What went wrong running `nft`.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("the nft command is not installed (install the nftables package)")]
    NotInstalled(#[source] std::io::Error),
    #[error("running nft")]
    Spawn(#[source] std::io::Error),
    #[error("nft {what} failed ({status}): {stderr}")]
    Failed { what: &'static str, status: ExitStatus, stderr: String },
    #[error(
        "nftables cannot carry kedge's table here (no nf_tables, inet NAT or reject in the kernel, or no CAP_NET_ADMIN): {stderr}"
    )]
    Unavailable { stderr: String },
    #[error("reading nft's listing of table {TABLE}")]
    Listing(#[source] serde_json::Error),
}

/// Where `nft` may be when `PATH` (a service's environment) lacks sbin.
const NFT_PATHS: [&str; 3] = ["nft", "/usr/sbin/nft", "/sbin/nft"];

/// Runs `nft ARGS`, feeding `stdin`; its standard output.
fn nft(args: &[&str], stdin: Option<&str>, what: &'static str) -> Result<Vec<u8>, NftError> {
    let mut last = None;
    for bin in NFT_PATHS {
        let child = Command::new(bin)
            .args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                last = Some(e);
                continue;
            }
            Err(e) => return Err(NftError::Spawn(e)),
        };
        let pipe = child.stdin.take();
        let out = std::thread::scope(|scope| {
            // Written from another thread, so a large script cannot
            // deadlock against nft's output; a short write (nft gave up)
            // shows up as nft's own failure.
            if let (Some(text), Some(mut pipe)) = (stdin, pipe) {
                scope.spawn(move || {
                    let _ = pipe.write_all(text.as_bytes());
                });
            }
            child.wait_with_output()
        })
        .map_err(NftError::Spawn)?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let stderr = stderr.trim();
            // nft quotes the offending line; keep the message readable.
            let stderr = match stderr.char_indices().nth(4000) {
                Some((i, _)) => format!("{}…", &stderr[..i]),
                None => stderr.to_string(),
            };
            return Err(NftError::Failed { what, status: out.status, stderr });
        }
        return Ok(out.stdout);
    }
    Err(NftError::NotInstalled(last.unwrap_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))))
}

fn load(script: &str, what: &'static str) -> Result<(), NftError> {
    nft(&["-f", "-"], Some(script), what).map(|_| ())
}

/// Keeps table `inet kedge` equal to the last [`Ruleset`] given to
/// [`Applier::apply`], sending the kernel only what changed. One per
/// process (it assumes nothing else edits the table); a new one, or
/// [`Applier::forget`], makes the next apply a full one.
#[derive(Debug, Default)]
pub struct Applier {
    /// What the table holds since the last successful apply; `None`:
    /// unknown, load everything.
    applied: Option<Ruleset>,
    /// Objects of the table not in `applied` may be left (a failed
    /// deletion, or a previous agent's): list and delete them.
    sweep: bool,
}

impl Applier {
    pub fn new() -> Self {
        Applier::default()
    }

    /// The next apply loads the whole ruleset (after something else may
    /// have changed the table; also good now and then as a resync).
    pub fn forget(&mut self) {
        self.applied = None;
    }

    /// Makes the table hold `next`, in one transaction: the table is never
    /// seen half-updated or flushed and not yet refilled, and if the
    /// transaction fails the old rules stay as they were. Nothing is sent
    /// when `next` is what was applied last. Blocking.
    ///
    /// The first apply loads the whole script; if that does not go over
    /// the table as it is (a chain or set defined differently by an older
    /// kedge), the table is rebuilt: deleted and re-created, still in one
    /// transaction (ClientIP affinity entries are lost then). Later applies
    /// send the changes, and fall back to the whole script if they fail.
    pub fn apply(&mut self, next: Ruleset) -> Result<(), NftError> {
        if let Some(prev) = self.applied.take() {
            if prev == next {
                self.applied = Some(next);
                return Ok(());
            }
            if let Some(delta) = delta(&prev, &next) {
                match load(&delta.script, "-f (changes)") {
                    Ok(()) => {
                        self.applied = Some(next);
                        self.delete_stale(&delta.stale_chains);
                        return Ok(());
                    }
                    Err(e @ NftError::Failed { .. }) => {
                        tracing::warn!(error = %e, "nftables: changes to table inet kedge failed; loading all of it");
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        self.full(&next)?;
        self.applied = Some(next);
        self.sweep = true;
        self.delete_stale(&[]);
        Ok(())
    }

    fn full(&self, next: &Ruleset) -> Result<(), NftError> {
        let script = next.to_string();
        match load(&script, "-f (table)") {
            Err(first @ NftError::Failed { .. }) => {
                tracing::warn!(error = %first, "nftables: loading table inet kedge over the old one failed; rebuilding it");
                load(&format!("add table {TABLE}\ndelete table {TABLE}\n{script}"), "-f (rebuild)")
            }
            other => other,
        }
    }

    /// Deletes chains the last apply emptied, and whatever else of the
    /// table the applied ruleset does not name when a sweep is due. A
    /// failure only leaves empty, unreferenced objects (kernels before 6.2
    /// free a chain a moment after the map element that pointed at it):
    /// the next apply sweeps.
    fn delete_stale(&mut self, chains: &[String]) {
        if !chains.is_empty() {
            let mut script = String::new();
            for chain in chains {
                let _ = writeln!(script, "delete chain {TABLE} {chain}");
            }
            if let Err(e) = load(&script, "-f (delete emptied chains)") {
                tracing::debug!(error = %e, "nftables: emptied chains stay until the next apply");
                self.sweep = true;
            }
        }
        if self.sweep {
            if let Some(applied) = &self.applied {
                match sweep(applied) {
                    Ok(()) => self.sweep = false,
                    Err(e) => {
                        tracing::debug!(error = %e, "nftables: stale objects of table inet kedge stay until the next apply")
                    }
                }
            }
        }
    }
}

/// A transaction that turns a table holding `prev` into one holding `next`.
#[derive(Debug)]
pub(super) struct Delta {
    pub script: String,
    /// Chains the script empties; they can be deleted once it committed.
    pub stale_chains: Vec<String>,
}

/// The changes from `prev` to `next`, or `None` when they cannot be
/// expressed as changes (a chain or collection defined differently).
pub(super) fn delta(prev: &Ruleset, next: &Ruleset) -> Option<Delta> {
    let mut s = String::new();
    let _ = writeln!(s, "add table {TABLE}");
    for (name, chain) in &next.chains {
        match prev.chains.get(name) {
            None => {
                let _ = write_chain(&mut s, name, chain);
            }
            Some(old) if old.spec != chain.spec => return None,
            Some(_) => {}
        }
    }
    for (name, c) in &next.collections {
        match prev.collections.get(name) {
            None => {
                let _ = writeln!(s, "add {} {TABLE} {name} {}", c.kind, c.spec);
            }
            Some(old) if (old.kind, &old.spec, old.refilled) != (c.kind, &c.spec, c.refilled) => return None,
            Some(_) => {}
        }
    }
    // Elements whose key goes or whose value changes go first, so a
    // changed one can be added back below.
    for (name, c) in &next.collections {
        let Some(old) = prev.collections.get(name) else { continue };
        let gone: Vec<&str> =
            old.elements.iter().filter(|(k, v)| c.elements.get(*k) != Some(*v)).map(|(k, _)| k.as_str()).collect();
        if !gone.is_empty() {
            let _ = writeln!(s, "delete element {TABLE} {name} {{ {} }}", gone.join(", "));
        }
    }
    for (name, chain) in &next.chains {
        match prev.chains.get(name) {
            Some(old) if old.rules == chain.rules => {}
            Some(_) => {
                let _ = writeln!(s, "flush chain {TABLE} {name}");
                let _ = write_rules(&mut s, name, chain);
            }
            None => {
                let _ = write_rules(&mut s, name, chain);
            }
        }
    }
    let stale_chains: Vec<String> = prev.chains.keys().filter(|k| !next.chains.contains_key(*k)).cloned().collect();
    for name in &stale_chains {
        let _ = writeln!(s, "flush chain {TABLE} {name}");
    }
    for (name, c) in &next.collections {
        let old = prev.collections.get(name);
        let added = c.elements.iter().filter(|(k, v)| old.and_then(|o| o.elements.get(*k)) != Some(*v));
        let _ = write_elements(&mut s, name, added);
    }
    // Gone collections (affinity sets): the rules that used them were
    // flushed above.
    for (name, c) in &prev.collections {
        if !next.collections.contains_key(name) {
            let _ = writeln!(s, "delete {} {TABLE} {name}", c.kind);
        }
    }
    Some(Delta { script: s, stale_chains })
}

/// Deletes the chains, maps and sets of `inet kedge` that `ruleset` does
/// not name.
fn sweep(ruleset: &Ruleset) -> Result<(), NftError> {
    let mut sets = String::new();
    let mut chains = String::new();
    for (kind, listing) in [("set", "sets"), ("map", "maps"), ("chain", "chains")] {
        let out = nft(&["-j", "-t", "list", listing, "inet"], None, "list")?;
        for name in listed(&out, kind)? {
            let known = match kind {
                "chain" => ruleset.chains.contains_key(&name),
                _ => ruleset.collections.contains_key(&name),
            };
            if !known {
                let out = if kind == "chain" { &mut chains } else { &mut sets };
                let _ = writeln!(out, "delete {kind} {TABLE} {name}");
            }
        }
    }
    // Collections first: a chain's rules (already flushed) may have used them.
    for script in [sets, chains] {
        if !script.is_empty() {
            load(&script, "-f (delete stale)")?;
        }
    }
    Ok(())
}

/// The names of the `kind` objects of table kedge in `nft -j list` output.
pub(super) fn listed(json: &[u8], kind: &str) -> Result<BTreeSet<String>, NftError> {
    #[derive(serde::Deserialize)]
    struct Listing {
        nftables: Vec<serde_json::Map<String, serde_json::Value>>,
    }
    let listing: Listing = serde_json::from_slice(json).map_err(NftError::Listing)?;
    Ok(listing
        .nftables
        .iter()
        .filter_map(|item| item.get(kind))
        .filter(|o| o.get("family").and_then(|t| t.as_str()) == Some("inet"))
        .filter(|o| o.get("table").and_then(|t| t.as_str()) == Some("kedge"))
        .filter_map(|o| o.get("name").and_then(|n| n.as_str()).map(str::to_string))
        .collect())
}

/// Deletes table `inet kedge` and everything in it, and nothing else; no
/// error when there is none (`kedge-agent network cleanup`). Blocking.
pub fn remove() -> Result<(), NftError> {
    load(&format!("add table {TABLE}\ndelete table {TABLE}\n"), "-f (remove)")
}

/// Whether `nft` is installed and the kernel takes what kedge's table
/// needs (an inet NAT chain, reject, numgen, verdict maps, timeout sets,
/// fib): `nft --check` of a probe, which the kernel validates and then
/// discards. Changes nothing. Blocking.
pub fn available() -> Result<(), NftError> {
    const PROBE: &str = "add table inet kedge\n\
        add chain inet kedge probe-nat { type nat hook prerouting priority -100; }\n\
        add chain inet kedge probe-filter { type filter hook forward priority -110; }\n\
        add chain inet kedge probe-target\n\
        add map inet kedge probe-map { type ipv4_addr . inet_proto . inet_service : verdict; }\n\
        add set inet kedge probe-set { type ipv4_addr; flags dynamic,timeout; timeout 10s; }\n\
        add rule inet kedge probe-nat ip daddr . meta l4proto . th dport vmap @probe-map\n\
        add rule inet kedge probe-nat ip saddr @probe-set goto probe-target\n\
        add rule inet kedge probe-nat fib daddr type local numgen random mod 2 == 0 goto probe-target\n\
        add rule inet kedge probe-target update @probe-set { ip saddr } meta l4proto tcp dnat ip to 127.0.0.1:1\n\
        add rule inet kedge probe-filter ct state new meta l4proto tcp reject with tcp reset\n\
        add rule inet kedge probe-filter reject\n\
        add chain inet kedge probe-post { type nat hook postrouting priority 100; }\n\
        add rule inet kedge probe-post ct status dnat meta mark & 0x4000 == 0x4000 masquerade fully-random\n";
    match nft(&["--check", "-f", "-"], Some(PROBE), "--check") {
        Ok(_) => Ok(()),
        Err(NftError::Failed { stderr, .. }) => Err(NftError::Unavailable { stderr }),
        Err(e) => Err(e),
    }
}
