//! Service cluster IPs and node ports: assigned where a Service has none,
//! refused where another Service holds them.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use serde_json::{Value, json};

use super::WriteError;
use crate::meta;
use crate::resources;
use crate::store::Store;
use crate::validate::FieldError;

/// The node-port range (Kubernetes' default).
const NODE_PORTS: std::ops::RangeInclusive<i64> = 30000..=32767;

/// Assigns `svc` its cluster IP and node ports where it has none, and
/// refuses ones another Service holds. Runs on create and on update (a type
/// change can call for new ones); the Service itself does not count as "other".
pub(super) fn allocate(store: &Store, cidr: (Ipv4Addr, u8), svc: &mut Value) -> Result<(), WriteError> {
    let id = resources::find("", "v1", "services").map_or("core/services", |r| r.id);
    let (all, _) = store.list(id, None, None)?;
    let me = (meta::get_str(svc, "namespace").map(str::to_owned), meta::get_str(svc, "name").map(str::to_owned));
    let others: Vec<&Value> = all
        .iter()
        .filter(|o| {
            (meta::get_str(o, "namespace").map(str::to_owned), meta::get_str(o, "name").map(str::to_owned)) != me
        })
        .collect();
    let name = meta::get_str(svc, "name").unwrap_or_default().to_owned();
    let taken = |field: &str, value: &str, why: &str| WriteError::Allocated {
        name: name.clone(),
        cause: FieldError::invalid(field, value, why),
    };
    let ty = svc.pointer("/spec/type").and_then(Value::as_str).unwrap_or("ClusterIP").to_owned();
    if ty == "ExternalName" {
        return Ok(());
    }
    match svc.pointer("/spec/clusterIP").and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned) {
        None => {
            let used: BTreeSet<&str> =
                others.iter().filter_map(|s| s.pointer("/spec/clusterIP").and_then(Value::as_str)).collect();
            let (base, bits) = cidr;
            let size = 1u32 << (32 - u32::from(bits.min(30)));
            // .1 is kept for the `kubernetes` service, as in Kubernetes.
            let ip = (2..size - 1)
                .map(|i| Ipv4Addr::from(u32::from(base) + i).to_string())
                .find(|ip| !used.contains(ip.as_str()))
                .ok_or(WriteError::NoClusterIp)?;
            svc["spec"]["clusterIP"] = json!(ip);
            svc["spec"]["clusterIPs"] = json!([ip]);
        }
        Some(ip) => {
            if ip != "None" && others.iter().any(|s| s.pointer("/spec/clusterIP").and_then(Value::as_str) == Some(&ip))
            {
                return Err(taken("spec.clusterIPs", &ip, "failed to allocate IP: provided IP is already allocated"));
            }
            svc["spec"]["clusterIPs"] = json!([ip]);
        }
    }
    if ty == "NodePort" || ty == "LoadBalancer" {
        let mut used: BTreeSet<i64> = others
            .iter()
            .flat_map(|s| s.pointer("/spec/ports").and_then(Value::as_array).cloned().unwrap_or_default())
            .filter_map(|p| p.get("nodePort").and_then(Value::as_i64))
            .collect();
        if let Some(ports) = svc.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
            for (i, p) in ports.iter_mut().enumerate() {
                match p.get("nodePort").and_then(Value::as_i64) {
                    Some(n) if !used.insert(n) => {
                        return Err(taken(
                            &format!("spec.ports[{i}].nodePort"),
                            &n.to_string(),
                            "provided port is already allocated",
                        ));
                    }
                    Some(_) => {}
                    None => {
                        let free = NODE_PORTS.clone().find(|n| !used.contains(n)).ok_or(WriteError::NoNodePort)?;
                        used.insert(free);
                        p["nodePort"] = json!(free);
                    }
                }
            }
        }
    }
    Ok(())
}
