use k8s_openapi::ByteString;
use serde_json::{Value, json};

use super::*;

/// 4 KiB that are not UTF-8: a DER key, a keystore.
fn binary_key() -> Vec<u8> {
    let key: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    assert!(std::str::from_utf8(&key).is_err());
    key
}

fn refs() -> Refs {
    let cm: api::ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "cfg", "namespace": "default"},
        "data": {"greeting": "hello", "file.txt": "contents"},
        "binaryData": {"logo.png": "iVBORw0KGgo="}
    }))
    .expect("cm");
    let secret: api::Secret = serde_json::from_value(json!({
        "metadata": {"name": "pw", "namespace": "default"},
        "data": {"password": "aHVudGVyMg==", "latin1": "Y2Fm6Q=="}
    }))
    .expect("secret");
    let mut tls = api::Secret::default();
    tls.metadata.name = Some("tls".into());
    tls.data = Some(BTreeMap::from([("tls.key".into(), ByteString(binary_key()))]));
    Refs {
        config_maps: HashMap::from([(("default".into(), "cfg".into()), cm)]),
        secrets: HashMap::from([(("default".into(), "pw".into()), secret), (("default".into(), "tls".into()), tls)]),
        ..Refs::default()
    }
}

fn pod(spec: Value) -> api::Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "p", "namespace": "default", "uid": "u-1", "labels": {"app": "web"}},
        "spec": spec
    }))
    .expect("pod")
}

fn env_of(w: &wire::Pod) -> BTreeMap<&str, &str> {
    w.spec.containers[0].env.iter().map(|e| (e.name.as_str(), e.value.as_str())).collect()
}

#[test]
fn env_and_volumes_are_resolved_for_the_node() {
    let p = pod(json!({
        "nodeName": "n1",
        "containers": [{"name": "c", "image": "i",
            "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
            "env": [
                {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "greeting"}}},
                {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "pw", "key": "password"}}},
                {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "CFG_greeting", "value": "env wins"}
            ]}],
        "volumes": [
            {"name": "a", "configMap": {"name": "cfg", "items": [{"key": "file.txt", "path": "renamed.txt"}]}},
            {"name": "b", "secret": {"secretName": "pw"}}
        ]
    }));
    let w = node_pod(&p, "n1", &refs()).expect("translated");
    let env = env_of(&w);
    assert_eq!(env.get("GREETING"), Some(&"hello"));
    assert_eq!(env.get("PW"), Some(&"hunter2"));
    assert_eq!(env.get("NODE"), Some(&"n1"));
    assert_eq!(env.get("APP"), Some(&"web"));
    assert_eq!(env.get("CFG_file.txt"), Some(&"contents"));
    assert_eq!(env.get("CFG_greeting"), Some(&"env wins"));
    assert_eq!(env.get("CFG_logo.png"), None, "envFrom reads a ConfigMap's data only, as the kubelet does");
    let a = w.spec.volumes[0].config_map.as_ref().expect("configMap");
    assert_eq!(a.data, BTreeMap::from([("renamed.txt".to_string(), "contents".to_string())]));
    assert!(a.binary_data.is_empty());
    let b = w.spec.volumes[1].secret.as_ref().expect("secret");
    assert_eq!(b.name.as_deref(), Some("pw"));
    assert_eq!(b.binary_data.get("password").map(Bytes::as_slice), Some(&b"hunter2"[..]));
    assert_eq!(w.metadata.uid.as_deref(), Some("u-1"));
}

#[test]
fn binary_secret_and_config_map_data_reach_the_wire_byte_for_byte() {
    let p = pod(json!({
        "containers": [{"name": "c", "image": "i"}],
        "volumes": [
            {"name": "tls", "secret": {"secretName": "tls", "defaultMode": 0o400}},
            {"name": "cfg", "configMap": {"name": "cfg", "items": [
                {"key": "logo.png", "path": "logo"}, {"key": "greeting", "path": "hi"}]}}
        ]
    }));
    let w = node_pod(&p, "n1", &refs()).expect("translated");
    // Through the fleet link's CBOR envelope, as the node receives it.
    let cbor = kedge_common::envelope::encode(&vec![w]).expect("encode");
    let mut back: Vec<wire::Pod> = kedge_common::envelope::decode(&cbor, usize::MAX).expect("decode");
    let w = back.remove(0);
    let tls = w.spec.volumes[0].secret.as_ref().expect("secret");
    assert_eq!(tls.default_mode, Some(0o400));
    assert_eq!(tls.binary_data.get("tls.key").map(|b| b.0.clone()), Some(binary_key()));
    let cfg = w.spec.volumes[1].config_map.as_ref().expect("configMap");
    let files: BTreeMap<&str, &[u8]> = cfg.files().collect();
    let png = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];
    assert_eq!(files, BTreeMap::from([("logo", &png[..]), ("hi", &b"hello"[..])]));
    assert_eq!(cfg.data.get("hi").map(String::as_str), Some("hello"), "text stays text");
}

#[test]
fn secret_env_values_are_the_bytes_as_text_like_the_kubelet() {
    let p = pod(json!({"containers": [{"name": "c", "image": "i",
        "envFrom": [{"secretRef": {"name": "pw"}, "prefix": "S_"}],
        "env": [{"name": "L", "valueFrom": {"secretKeyRef": {"name": "pw", "key": "latin1"}}}]}]}));
    let w = node_pod(&p, "n1", &refs()).expect("translated");
    let env = env_of(&w);
    assert_eq!(env.get("S_password"), Some(&"hunter2"));
    // "café" in Latin-1: not UTF-8, so the é cannot be a CRI string.
    assert_eq!(env.get("L"), Some(&"caf\u{fffd}"));
    let p = pod(json!({"containers": [{"name": "c", "image": "i",
        "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "logo.png"}}}]}]}));
    assert_eq!(
        node_pod(&p, "n1", &refs()).map_err(|e| e.to_string()),
        Err("key \"logo.png\" of configmap default/cfg not found (env X)".into()),
        "configMapKeyRef reads data only, as the kubelet does"
    );
}

#[test]
fn a_missing_reference_names_what_is_missing_unless_optional() {
    let p = pod(json!({"containers": [{"name": "c", "image": "i",
        "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k"}}}]}]}));
    let err = node_pod(&p, "n1", &refs()).expect_err("missing configmap").to_string();
    assert!(err.contains("configmap default/nope"), "{err}");
    let p = pod(json!({"containers": [{"name": "c", "image": "i"}],
        "volumes": [{"name": "v", "secret": {"secretName": "tls", "items": [{"key": "nope", "path": "x"}]}}]}));
    let err = node_pod(&p, "n1", &refs()).expect_err("missing key").to_string();
    assert_eq!(err, "key \"nope\" of secret default/tls not found (volume)");
    let p = pod(json!({"containers": [{"name": "c", "image": "i",
        "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k", "optional": true}}}]}],
        "volumes": [{"name": "v", "secret": {"secretName": "gone", "optional": true}}]}));
    let w = node_pod(&p, "n1", &refs()).expect("optional references may be missing");
    assert!(w.spec.containers[0].env.is_empty());
    let v = w.spec.volumes[0].secret.as_ref().expect("an empty secret volume");
    assert_eq!((v.name.as_deref(), v.files().count()), (Some("gone"), 0));
}

#[test]
fn an_unknown_policy_is_refused_by_name() {
    let p = pod(json!({"restartPolicy": "Sometimes", "containers": [{"name": "c", "image": "i"}]}));
    assert_eq!(
        node_pod(&p, "n1", &refs()).map_err(|e| e.to_string()),
        Err("spec.restartPolicy: unsupported value \"Sometimes\"".into())
    );
}

/// The typed translation keeps every field the node acts on: the same pod,
/// read straight into the wire type as a static manifest is, is equal.
#[test]
fn every_field_the_node_uses_is_carried() {
    let spec = json!({
        "restartPolicy": "OnFailure",
        "hostNetwork": true,
        "hostIPC": true,
        "hostname": "h",
        "subdomain": "sub",
        "dnsPolicy": "ClusterFirstWithHostNet",
        "dnsConfig": {"nameservers": ["1.1.1.1"], "searches": ["corp.example"],
                      "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]},
        "hostAliases": [{"ip": "10.1.2.3", "hostnames": ["foo.local", "bar.local"]}],
        "terminationGracePeriodSeconds": 7,
        "securityContext": {"runAsUser": 1000, "runAsGroup": 1001, "fsGroup": 5},
        "initContainers": [{"name": "init", "image": "busybox:1.36", "command": ["true"]}],
        "containers": [{
            "name": "c", "image": "busybox", "command": ["sh", "-c"], "args": ["sleep 1"],
            "env": [{"name": "A", "value": "1"}, {"name": "EMPTY"}],
            "workingDir": "/w",
            "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP", "hostPort": 80}],
            "resources": {"limits": {"memory": "64Mi", "cpu": "500m"}, "requests": {"cpu": "100m"}},
            "volumeMounts": [{"name": "scratch", "mountPath": "/s", "readOnly": true, "subPath": "x"},
                {"name": "host", "mountPath": "/h"}],
            "securityContext": {"runAsUser": 2, "runAsGroup": 3, "readOnlyRootFilesystem": true,
                "allowPrivilegeEscalation": false, "privileged": false,
                "capabilities": {"add": ["NET_ADMIN"], "drop": ["ALL"]}},
            "imagePullPolicy": "IfNotPresent",
            "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http", "host": "127.0.0.1", "scheme": "HTTP",
                "httpHeaders": [{"name": "X-A", "value": "b"}]},
                "initialDelaySeconds": 1, "timeoutSeconds": 2, "periodSeconds": 3,
                "successThreshold": 1, "failureThreshold": 4},
            "readinessProbe": {"tcpSocket": {"port": 8080, "host": "localhost"}},
            "startupProbe": {"exec": {"command": ["cat", "/ready"]}, "failureThreshold": 30}
        }],
        "volumes": [
            {"name": "scratch", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
            {"name": "host", "hostPath": {"path": "/var/x", "type": "DirectoryOrCreate"}}
        ]
    });
    let api_pod: api::Pod = serde_json::from_value(json!({
        "metadata": {"name": "p", "uid": "u", "labels": {"app": "web"}, "annotations": {"a": "b"}},
        "spec": spec
    }))
    .expect("api pod");
    let expected: wire::Pod = serde_json::from_value(json!({
        "metadata": {"name": "p", "namespace": "default", "uid": "u", "labels": {"app": "web"}},
        "spec": spec
    }))
    .expect("wire pod");
    let got = node_pod(&api_pod, "n1", &Refs::default()).expect("translated");
    assert_eq!(got, expected);
    assert!(expected.spec.containers[0].liveness_probe.is_some() && expected.spec.volumes.len() == 2);
    assert!(expected.spec.dns_config.is_some() && expected.spec.host_aliases.len() == 1);
}

#[test]
fn dns_policy_defaults_to_cluster_first_and_an_unknown_one_is_refused() {
    let w = node_pod(&pod(json!({"containers": [{"name": "c", "image": "i"}]})), "n1", &refs()).expect("translated");
    assert_eq!(w.spec.dns_policy, wire::DnsPolicy::ClusterFirst);
    let bad = pod(json!({"containers": [{"name": "c", "image": "i"}], "dnsPolicy": "Sometimes"}));
    assert!(node_pod(&bad, "n1", &refs()).is_err());
}

#[test]
fn a_claim_becomes_its_volume_on_its_node() {
    let mut refs = Refs::default();
    let claim = |volume: Option<&str>| -> api::PersistentVolumeClaim {
        serde_json::from_value(json!({"metadata": {"name": "data", "namespace": "default"},
            "spec": {"volumeName": volume}}))
        .expect("claim")
    };
    let pv: api::PersistentVolume = serde_json::from_value(json!({"metadata": {"name": "pvc-1"}, "spec": {
        "csi": {"driver": "kedge.io/local-path", "volumeHandle": "pvc-1"},
        "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": ["n1"]}]}]}}}}))
    .expect("pv");
    let manual: api::PersistentVolume = serde_json::from_value(
        json!({"metadata": {"name": "manual"}, "spec": {"hostPath": {"path": "/srv/m", "type": "Directory"}}}),
    )
    .expect("pv");
    refs.volumes.insert("pvc-1".into(), pv);
    refs.volumes.insert("manual".into(), manual);
    let p = pod(json!({"containers": [{"name": "c", "image": "busybox"}],
        "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}]}));

    assert_eq!(
        node_pod(&p, "n1", &refs).expect_err("no claim"),
        NodePodError::ClaimMissing { ns: "default".into(), name: "data".into() }
    );
    refs.claims.insert(("default".into(), "data".into()), claim(None));
    assert!(matches!(node_pod(&p, "n1", &refs), Err(NodePodError::ClaimUnbound { .. })));
    refs.claims.insert(("default".into(), "data".into()), claim(Some("pvc-1")));
    let w = node_pod(&p, "n1", &refs).expect("bound");
    assert_eq!(w.spec.volumes[0].name, "d");
    assert_eq!(w.spec.volumes[0].local_path, Some(wire::LocalPath { volume: "pvc-1".into() }));
    assert!(w.validate().is_ok(), "the node takes it");
    assert_eq!(
        node_pod(&p, "n2", &refs).expect_err("elsewhere"),
        NodePodError::VolumeElsewhere { name: "pvc-1".into(), pinned: "n1".into() }
    );
    refs.claims.insert(("default".into(), "data".into()), claim(Some("manual")));
    let w = node_pod(&p, "n2", &refs).expect("a static volume");
    assert_eq!(w.spec.volumes[0].host_path.as_ref().map(|h| h.path.as_str()), Some("/srv/m"));
}

#[test]
fn a_projected_volume_carries_its_token_ca_and_namespace_and_the_api_is_in_the_env() {
    let p = pod(json!({
        "nodeName": "n1",
        "serviceAccountName": "default",
        "containers": [{"name": "c", "image": "i", "env": [{"name": "KUBERNETES_SERVICE_PORT", "value": "8443"}]}],
        "volumes": [{"name": "kube-api-access-x", "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "cfg", "items": [{"key": "greeting", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [
                {"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}},
                {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}
            ]}}
        ]}}]
    }));
    let mut r = refs();
    // No token minted for it: the pod is held back, naming why.
    let err = node_pod(&p, "n1", &r).expect_err("no token");
    assert!(matches!(err, NodePodError::ServiceAccount { .. }), "{err}");
    let src =
        api::ServiceAccountTokenProjection { expiration_seconds: Some(3607), path: "token".into(), audience: None };
    r.tokens.insert(token_key("u-1", &src), "eyJ.token".into());
    r.master = Some("10.43.0.1".into());
    let w = node_pod(&p, "n1", &r).expect("translated");
    let v = w.spec.volumes[0].secret.as_ref().expect("files");
    assert_eq!(v.default_mode, Some(420));
    assert_eq!(v.data.get("token").map(String::as_str), Some("eyJ.token"));
    assert_eq!(v.data.get("ca.crt").map(String::as_str), Some("hello"));
    assert_eq!(v.data.get("namespace").map(String::as_str), Some("default"));
    assert_eq!(v.data.get("labels").map(String::as_str), Some("app=\"web\"\n"));
    let env = env_of(&w);
    assert_eq!(env.get("KUBERNETES_SERVICE_HOST"), Some(&"10.43.0.1"));
    assert_eq!(env.get("KUBERNETES_PORT_443_TCP"), Some(&"tcp://10.43.0.1:443"));
    assert_eq!(env.get("KUBERNETES_SERVICE_PORT"), Some(&"8443"), "the pod's own env wins");
}
