//! The pod's DNS fields: `dnsPolicy`, `dnsConfig`, `hostAliases` (the
//! agent turns them into the pod's resolv.conf and hosts file), with the API
//! server's checks of them.

use serde::{Deserialize, Serialize};

use super::{FieldError, Pod, field_error, is_dns_label};

/// `spec.dnsPolicy`: where the pod's `/etc/resolv.conf` comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum DnsPolicy {
    /// Cluster DNS first (the node's resolv.conf for `hostNetwork` pods).
    #[default]
    ClusterFirst,
    /// Cluster DNS first, also for `hostNetwork` pods.
    ClusterFirstWithHostNet,
    /// The node's resolv.conf.
    Default,
    /// Only what `dnsConfig` says.
    None,
}

impl DnsPolicy {
    pub fn is_default(&self) -> bool {
        *self == DnsPolicy::ClusterFirst
    }
}

/// `spec.dnsConfig`: merged into what `dnsPolicy` gives.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodDnsConfig {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub searches: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<PodDnsConfigOption>,
}

/// A resolver option: `ndots` with value `2` is `options ndots:2`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodDnsConfigOption {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// `spec.hostAliases[]`: `ip` for each of `hostnames` in `/etc/hosts`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostAlias {
    #[serde(default)]
    pub ip: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
}

/// Kubernetes' limits on `dnsConfig` (and on what the kubelet writes).
pub const MAX_DNS_NAMESERVERS: usize = 3;
pub const MAX_DNS_SEARCHES: usize = 32;
pub const MAX_DNS_SEARCH_CHARS: usize = 2048;

impl Pod {
    /// The API server's checks of the name and DNS fields.
    pub(super) fn validate_dns(&self) -> Result<(), FieldError> {
        let spec = &self.spec;
        for (field, value) in [("spec.hostname", &spec.hostname), ("spec.subdomain", &spec.subdomain)] {
            if let Some(v) = value {
                if !is_dns_label(v) {
                    return Err(field_error(field, format!("invalid value {v:?}: must be a DNS label")));
                }
            }
        }
        let is_ip = |s: &str| s.parse::<std::net::IpAddr>().is_ok();
        if spec.dns_policy == DnsPolicy::None && spec.dns_config.as_ref().is_none_or(|c| c.nameservers.is_empty()) {
            return Err(field_error(
                "spec.dnsConfig.nameservers",
                "Required value: must provide at least one DNS nameserver when dnsPolicy is None",
            ));
        }
        if let Some(c) = &spec.dns_config {
            if c.nameservers.len() > MAX_DNS_NAMESERVERS {
                return Err(field_error(
                    "spec.dnsConfig.nameservers",
                    format!("Invalid value: must not have more than {MAX_DNS_NAMESERVERS} nameservers"),
                ));
            }
            if let Some((i, n)) = c.nameservers.iter().enumerate().find(|(_, n)| !is_ip(n)) {
                return Err(field_error(format!("spec.dnsConfig.nameservers[{i}]"), format!("invalid IP {n:?}")));
            }
            if c.searches.len() > MAX_DNS_SEARCHES {
                return Err(field_error(
                    "spec.dnsConfig.searches",
                    format!("Invalid value: must not have more than {MAX_DNS_SEARCHES} search paths"),
                ));
            }
            if c.searches.join(" ").len() > MAX_DNS_SEARCH_CHARS {
                return Err(field_error(
                    "spec.dnsConfig.searches",
                    format!("Invalid value: must not have more than {MAX_DNS_SEARCH_CHARS} characters"),
                ));
            }
            for (i, s) in c.searches.iter().enumerate() {
                let name = s.strip_suffix('.').unwrap_or(s);
                if name.is_empty() || name.len() > 253 || !name.split('.').all(is_dns_label) {
                    return Err(field_error(format!("spec.dnsConfig.searches[{i}]"), format!("invalid domain {s:?}")));
                }
            }
            if let Some(i) = c.options.iter().position(|o| o.name.is_empty()) {
                return Err(field_error(format!("spec.dnsConfig.options[{i}].name"), "Required value"));
            }
        }
        for (i, a) in spec.host_aliases.iter().enumerate() {
            if !is_ip(&a.ip) {
                return Err(field_error(format!("spec.hostAliases[{i}].ip"), format!("invalid IP {:?}", a.ip)));
            }
            if let Some(h) = a.hostnames.iter().find(|h| h.is_empty() || !h.split('.').all(is_dns_label)) {
                return Err(field_error(format!("spec.hostAliases[{i}].hostnames"), format!("invalid name {h:?}")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;

    #[test]
    fn dns_fields_parse_with_kubernetes_spelling_and_are_checked() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "db-0"},
            "spec": {
                "containers": [{"name": "db", "image": "busybox"}],
                "hostname": "db-0", "subdomain": "db",
                "dnsPolicy": "None",
                "dnsConfig": {"nameservers": ["1.1.1.1"], "searches": ["corp.example"],
                              "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]},
                "hostAliases": [{"ip": "10.1.2.3", "hostnames": ["foo.local", "bar.local"]}]
            }
        }))
        .expect("parses");
        assert_eq!(pod.spec.dns_policy, DnsPolicy::None);
        assert_eq!(pod.spec.subdomain.as_deref(), Some("db"));
        let cfg = pod.spec.dns_config.as_ref().expect("dnsConfig");
        assert_eq!(cfg.options[0], PodDnsConfigOption { name: "ndots".into(), value: Some("2".into()) });
        assert_eq!(pod.spec.host_aliases[0].hostnames, ["foo.local", "bar.local"]);
        assert_eq!(pod.validate(), Ok(()));
        // The default policy is not written out, and an older cache without it reads as ClusterFirst.
        let json = serde_json::to_value(PodSpec::default()).expect("json");
        assert!(json.get("dnsPolicy").is_none(), "{json}");
        let spec: PodSpec = serde_json::from_value(serde_json::json!({"containers": []})).expect("old");
        assert_eq!(spec.dns_policy, DnsPolicy::ClusterFirst);

        let field = |f: &dyn Fn(&mut Pod)| {
            let mut p = pod.clone();
            f(&mut p);
            p.validate().expect_err("invalid").field
        };
        assert_eq!(field(&|p| p.spec.dns_config = None), "spec.dnsConfig.nameservers");
        assert_eq!(
            field(&|p| p.spec.dns_config.as_mut().expect("cfg").nameservers.push("dns.example".into())),
            "spec.dnsConfig.nameservers[1]"
        );
        assert_eq!(
            field(&|p| p.spec.dns_config.as_mut().expect("cfg").nameservers = vec!["1.1.1.1".into(); 4]),
            "spec.dnsConfig.nameservers"
        );
        assert_eq!(
            field(&|p| p.spec.dns_config.as_mut().expect("cfg").searches.push("bad_domain".into())),
            "spec.dnsConfig.searches[1]"
        );
        assert_eq!(field(&|p| p.spec.host_aliases[0].ip = "nowhere".into()), "spec.hostAliases[0].ip");
        assert_eq!(field(&|p| p.spec.subdomain = Some("Not_A_Label".into())), "spec.subdomain");
    }
}
