//! Pod addresses from the node's pod CIDR, persisted in the agent's redb
//! (`agent.redb`, table `pod_addresses`): an address is never handed out
//! twice while its sandbox lives, survives an agent restart or `kill -9`, and
//! is released when the sandbox's network is torn down. Allocation goes round
//! the range from the last address handed out (as CNI's host-local does), so
//! a released address is not reused at once.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use redb::{ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::cache::{Cache, CacheError};

/// Address (text) → sandbox id.
pub const ADDRESSES: TableDefinition<&str, &str> = TableDefinition::new("pod_addresses");
/// `last` → the last address handed out, as a u32.
const CURSOR: TableDefinition<&str, u64> = TableDefinition::new("pod_address_cursor");

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("pod CIDR {0} is not IPv4 (only IPv4 pod networks are supported)")]
    NotIpv4(IpNet),
    #[error("pod CIDR {cidr} has no free address left ({used} in use)")]
    Exhausted { cidr: IpNet, used: usize },
    #[error(transparent)]
    Cache(#[from] CacheError),
}

impl From<redb::TableError> for IpamError {
    fn from(e: redb::TableError) -> Self {
        IpamError::Cache(CacheError::Db(e.into()))
    }
}
impl From<redb::StorageError> for IpamError {
    fn from(e: redb::StorageError) -> Self {
        IpamError::Cache(CacheError::Db(e.into()))
    }
}

/// The addresses of `cidr` a pod may get: not the network address, the
/// gateway (the first host) or the broadcast address.
fn candidates(cidr: Ipv4Net) -> impl Iterator<Item = Ipv4Addr> + Clone {
    cidr.hosts().skip(1)
}

/// The address held by `sandbox`, or a new one from `cidr`.
pub fn allocate(cache: &Cache, cidr: IpNet, sandbox: &str) -> Result<IpAddr, IpamError> {
    let IpNet::V4(v4) = cidr else { return Err(IpamError::NotIpv4(cidr)) };
    cache.write(|txn| {
        let mut table = txn.open_table(ADDRESSES).map_err(db)?;
        let mut used = BTreeSet::new();
        for row in table.iter().map_err(db)? {
            let (ip, owner) = row.map_err(db)?;
            let Ok(ip) = ip.value().parse::<Ipv4Addr>() else { continue };
            if owner.value() == sandbox && v4.contains(&ip) {
                return Ok(Ok(IpAddr::V4(ip)));
            }
            used.insert(ip);
        }
        let mut cursor = txn.open_table(CURSOR).map_err(db)?;
        let last = cursor.get("last").map_err(db)?.map(|v| Ipv4Addr::from(v.value() as u32));
        let all = candidates(v4);
        // From just after the last one handed out, round to the start.
        let after = all.clone().skip_while(|ip| last.is_some_and(|l| *ip <= l));
        let Some(ip) = after.chain(all).find(|ip| !used.contains(ip)) else {
            return Ok(Err(IpamError::Exhausted { cidr, used: used.len() }));
        };
        table.insert(ip.to_string().as_str(), sandbox).map_err(db)?;
        cursor.insert("last", u64::from(u32::from(ip))).map_err(db)?;
        Ok(Ok(IpAddr::V4(ip)))
    })?
}

/// Releases every address `sandbox` holds.
pub fn release(cache: &Cache, sandbox: &str) -> Result<(), IpamError> {
    cache.write(|txn| {
        let mut table = txn.open_table(ADDRESSES).map_err(db)?;
        table.retain(|_, owner| owner != sandbox).map_err(db)?;
        Ok(())
    })?;
    Ok(())
}

/// Releases the addresses of sandboxes that no longer exist (say the agent
/// died between allocating and recording a sandbox). Returns how many.
pub fn release_all_but(cache: &Cache, live: &BTreeSet<String>) -> Result<usize, IpamError> {
    Ok(cache.write(|txn| {
        let mut table = txn.open_table(ADDRESSES).map_err(db)?;
        let before = table.len().map_err(db)?;
        table.retain(|_, owner| live.contains(owner)).map_err(db)?;
        Ok(before - table.len().map_err(db)?)
    })? as usize)
}

/// Every address in use, with its sandbox.
pub fn in_use(cache: &Cache) -> Result<Vec<(IpAddr, String)>, IpamError> {
    Ok(cache.read(|txn| {
        let table = txn.open_table(ADDRESSES).map_err(db)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(db)? {
            let (ip, owner) = row.map_err(db)?;
            if let Ok(ip) = ip.value().parse() {
                out.push((ip, owner.value().to_string()));
            }
        }
        Ok(out)
    })?)
}

fn db(e: impl Into<redb::Error>) -> CacheError {
    CacheError::Db(e.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(dir: &tempfile::TempDir) -> Cache {
        Cache::open(&dir.path().join("agent.redb")).expect("cache")
    }

    #[test]
    fn addresses_are_distinct_stable_and_survive_reopening() {
        let dir = tempfile::tempdir().expect("tmp");
        let cidr: IpNet = "10.42.3.0/24".parse().expect("cidr");
        let c = cache(&dir);
        let a = allocate(&c, cidr, "sb-a").expect("a");
        let b = allocate(&c, cidr, "sb-b").expect("b");
        assert_eq!(a, IpAddr::from([10, 42, 3, 2]), "the first after the gateway");
        assert_ne!(a, b);
        assert_eq!(allocate(&c, cidr, "sb-a").expect("again"), a, "a sandbox keeps its address");
        drop(c);
        let c = cache(&dir);
        assert_eq!(allocate(&c, cidr, "sb-b").expect("after reopen"), b);
        let next = allocate(&c, cidr, "sb-c").expect("c");
        assert!(next != a && next != b);
    }

    #[test]
    fn released_addresses_come_back_only_after_going_round() {
        let dir = tempfile::tempdir().expect("tmp");
        let cidr: IpNet = "10.42.3.0/29".parse().expect("cidr"); // .2 .. .6 for pods
        let c = cache(&dir);
        let first = allocate(&c, cidr, "sb-0").expect("0");
        release(&c, "sb-0").expect("release");
        let second = allocate(&c, cidr, "sb-1").expect("1");
        assert_ne!(first, second, "not reused at once");
        let mut got: Vec<IpAddr> = vec![second];
        for i in 2..6 {
            got.push(allocate(&c, cidr, &format!("sb-{i}")).expect("alloc"));
        }
        assert!(got.contains(&first), "reused after going round: {got:?}");
        assert!(matches!(allocate(&c, cidr, "sb-full"), Err(IpamError::Exhausted { .. })));
        let live: BTreeSet<String> = ["sb-1".to_string()].into();
        assert_eq!(release_all_but(&c, &live).expect("gc"), 4);
        assert_eq!(in_use(&c).expect("list"), vec![(second, "sb-1".to_string())]);
    }
}
