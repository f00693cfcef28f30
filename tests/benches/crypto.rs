//! Cost of the fleet link's cryptography per message (method in
//! BENCHMARKS.md): a node's snapshot of 30 pods — each with a Secret env
//! var and a ConfigMap volume — signed and sealed by the controller, then
//! checked and opened by the agent; a node report of 30 pods signed by the
//! agent and checked by the controller; the encoding alone beside them, to
//! show what the cryptography adds. Each figure is the median of 2,000 runs
//! after 200 warm-up runs, on one core.

use std::time::{Duration, Instant};

use kedge_common::envelope::{self, DEFAULT_MAX_PAYLOAD};
use kedge_common::seal::SealSecret;
use kedge_common::sign::{Purpose, SigningKey};
use kedge_common::wire::{ContainerReport, ContainerState, NodeDesired, NodeReport, PodPhase, PodReport};

const PODS: usize = 30;
const RUNS: usize = 2_000;

fn median(mut f: impl FnMut()) -> Duration {
    for _ in 0..200 {
        f();
    }
    let mut times: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    times[RUNS / 2]
}

fn snapshot() -> NodeDesired {
    let pods = (0..PODS)
        .map(|i| {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("web-{i}"), "namespace": "default", "uid": format!("uid-{i}")},
                "spec": {"containers": [{"name": "main", "image": "registry.local/web:1.2.3",
                    "command": ["sh", "-c", "exec httpd -f -p 8080"],
                    "env": [{"name": "PASSWORD", "value": "s3cr3t-value-of-the-database"}],
                    "volumeMounts": [{"name": "cfg", "mountPath": "/etc/web"}]}],
                    "volumes": [{"name": "cfg", "configMap": {"name": "cfg", "data": {"web.conf": "listen 8080\n".repeat(20)}}}]}
            }))
            .expect("pod")
        })
        .collect();
    NodeDesired { node: "pi-1".into(), generation: 42, pods, delete_volumes: Vec::new() }
}

fn report() -> NodeReport {
    let pods = (0..PODS)
        .map(|i| PodReport {
            uid: format!("uid-{i}"),
            namespace: "default".into(),
            name: format!("web-{i}"),
            phase: PodPhase::Running,
            ready: true,
            pod_ip: Some(format!("10.42.0.{i}")),
            start_time: Some(1_700_000_000),
            containers: vec![ContainerReport {
                name: "main".into(),
                image: "registry.local/web:1.2.3".into(),
                image_id: "sha256:0123456789abcdef".into(),
                container_id: format!("kedge://{i:064}"),
                ready: true,
                started: true,
                restart_count: 0,
                state: ContainerState::Running { started_at: 1_700_000_001 },
                last_state: None,
            }],
            terminated: false,
        })
        .collect();
    NodeReport { node: "pi-1".into(), observed_generation: 42, time: 1_700_000_100, seq: 7, pods, ..Default::default() }
}

fn main() {
    let (controller, _) = SigningKey::generate().expect("key");
    let (node, _) = SigningKey::generate().expect("key");
    let seal = SealSecret::generate().expect("key");
    let (cpub, npub, spub) = (controller.public(), node.public(), seal.public());
    let d = snapshot();
    let r = report();
    let plain = envelope::encode(&d).expect("encode");
    let sealed = envelope::encode_sealed(&d, Purpose::Desired, &controller, Some(&spub)).expect("seal");
    let signed_report = envelope::encode_signed(&r, Purpose::Report, &node).expect("sign");
    println!("snapshot: {PODS} pods, {} bytes plain, {} bytes sealed and signed", plain.len(), sealed.len());
    println!("report:   {PODS} pods, {} bytes signed", signed_report.len());
    let rows = [
        ("snapshot encode (no crypto)", median(|| drop(envelope::encode(&d)))),
        (
            "snapshot encode + seal + sign (controller)",
            median(|| drop(envelope::encode_sealed(&d, Purpose::Desired, &controller, Some(&spub)))),
        ),
        ("snapshot decode (no crypto)", median(|| drop(envelope::decode::<NodeDesired>(&plain, DEFAULT_MAX_PAYLOAD)))),
        (
            "snapshot verify + open + decode (agent)",
            median(|| {
                drop(envelope::decode_opened::<NodeDesired>(
                    &sealed,
                    DEFAULT_MAX_PAYLOAD,
                    Purpose::Desired,
                    &cpub,
                    Some(&seal),
                ))
            }),
        ),
        ("report encode (no crypto)", median(|| drop(envelope::encode(&r)))),
        ("report encode + sign (agent)", median(|| drop(envelope::encode_signed(&r, Purpose::Report, &node)))),
        (
            "report verify + decode (controller)",
            median(|| {
                drop(envelope::decode_verified::<NodeReport>(
                    &signed_report,
                    DEFAULT_MAX_PAYLOAD,
                    Purpose::Report,
                    &npub,
                ))
            }),
        ),
    ];
    for (what, t) in rows {
        println!("{what:<46} {:>8.1} µs", t.as_secs_f64() * 1e6);
    }
}
