//! The `kubernetes` Service of the `default` namespace, as Kubernetes' API
//! server keeps it: a ClusterIP Service on the first address of the Service
//! range, port 443 (`https`), and an Endpoints object of its own naming
//! the API server's advertised address and port. Pods reach the API at
//! `https://kubernetes.default.svc` through it (the nodes' Service rules),
//! and every container gets `KUBERNETES_SERVICE_HOST`/`PORT` for it.
//! Made or brought up to date at each start.

use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::client::Client;
use crate::controllers::ControllerError;

pub const NAME: &str = "kubernetes";
pub const NAMESPACE: &str = "default";

/// The names the serving certificate carries for pods.
pub const DNS_NAMES: &[&str] =
    &["kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"];

/// The Service's address: the first of the Service range.
pub fn service_ip(service_cidr: (Ipv4Addr, u8)) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(service_cidr.0) + 1)
}

fn meta() -> ObjectMeta {
    ObjectMeta {
        name: Some(NAME.to_owned()),
        namespace: Some(NAMESPACE.to_owned()),
        labels: Some(
            [("component".to_owned(), "apiserver".to_owned()), ("provider".to_owned(), "kubernetes".to_owned())].into(),
        ),
        ..Default::default()
    }
}

/// Makes or updates the Service and its Endpoints for an API server at
/// `ip:port`; the Service takes the range's first address when it is free.
pub fn ensure(client: &Client, service_cidr: (Ipv4Addr, u8), ip: IpAddr, port: u16) -> Result<(), ControllerError> {
    let port = i32::from(port);
    let ports = vec![ServicePort {
        name: Some("https".to_owned()),
        port: 443,
        protocol: Some("TCP".to_owned()),
        target_port: Some(IntOrString::Int(port)),
        ..Default::default()
    }];
    match client.get::<Service>(NAMESPACE, NAME)? {
        None => {
            let first = service_ip(service_cidr).to_string();
            let svc = |cluster_ip: Option<String>| Service {
                metadata: meta(),
                spec: Some(ServiceSpec {
                    cluster_ip,
                    ports: Some(ports.clone()),
                    type_: Some("ClusterIP".to_owned()),
                    session_affinity: Some("None".to_owned()),
                    ..Default::default()
                }),
                status: None,
            };
            // Taken by some other Service (a store from before this one was
            // made): any free address does.
            if let Err(e) = client.create(&svc(Some(first))) {
                tracing::warn!(error = %e, "the first Service address is taken; the kubernetes Service gets another");
                client.create(&svc(None))?;
            }
        }
        Some(mut svc) => {
            let spec = svc.spec.get_or_insert_with(Default::default);
            if spec.ports.as_ref() != Some(&ports) || spec.selector.is_some() {
                spec.ports = Some(ports.clone());
                spec.selector = None;
                svc.metadata.resource_version = None;
                client.replace(&svc)?;
            }
        }
    }
    let subsets = Some(vec![EndpointSubset {
        addresses: Some(vec![EndpointAddress { ip: ip.to_string(), ..Default::default() }]),
        ports: Some(vec![EndpointPort {
            name: Some("https".to_owned()),
            port,
            protocol: Some("TCP".to_owned()),
            ..Default::default()
        }]),
        not_ready_addresses: None,
    }]);
    match client.get::<Endpoints>(NAMESPACE, NAME)? {
        None => {
            client.create(&Endpoints { metadata: meta(), subsets })?;
        }
        Some(mut ep) if ep.subsets != subsets => {
            ep.subsets = subsets;
            ep.metadata.resource_version = None;
            client.replace(&ep)?;
        }
        Some(_) => {}
    }
    Ok(())
}

/// The address pods are told the API is at: `--advertise-address`, else the
/// listen address, else (listening on every address) this host's first
/// IPv4 address that is not loopback. A loopback listener stays loopback:
/// pods cannot reach it, which `--advertise-address` or a wider `--listen`
/// fixes.
pub fn advertise(flag: Option<IpAddr>, listen: IpAddr) -> IpAddr {
    if let Some(ip) = flag {
        return ip;
    }
    if !listen.is_unspecified() {
        return listen;
    }
    crate::tls::host_addresses()
        .into_iter()
        .find(|ip| ip.is_ipv4() && !ip.is_loopback())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}
