//! Writes the first inputs of the fuzz corpora (fuzz/corpus/TARGET/seed-*)
//! from real messages and files, so that the fuzzers start from what the
//! decoders see rather than from nothing: `cargo run -p kedge-fuzz --bin seeds`.
//! The corpora are kept in the repository; this only has to run again when
//! a message's shape changes.

use std::io::Write;
use std::path::Path;

use kedge_common::envelope;
use kedge_common::network::ClusterNetwork;
use kedge_common::pod::Pod;
use kedge_common::session::{Frame, LogsRequest, Request, SessionOpen, Usage};
use kedge_common::sign::{Purpose, SigningKey};
use kedge_common::wire::{Event, JoinAnswer, JoinRequest, NodeDesired, NodeReport, Presence, RotateRequest};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn put(target: &str, name: &str, bytes: &[u8]) -> Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(format!("seed-{name}")), bytes)?;
    Ok(())
}

fn cbor<T: serde::Serialize>(v: &T) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out)?;
    Ok(out)
}

/// A tar of `(path, kind, content)` entries: kind 0 file, 1 dir, 2 symlink
/// (content is the target), 3 hard link, 4 char device, 5 fifo.
fn tar(entries: &[(&str, u8, &str)]) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for &(path, kind, content) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(if kind == 1 { 0o755 } else { 0o644 });
        h.set_mtime(0);
        let (ty, data) = match kind {
            0 => (tar::EntryType::Regular, content.as_bytes()),
            1 => (tar::EntryType::Directory, &b""[..]),
            2 => (tar::EntryType::Symlink, &b""[..]),
            3 => (tar::EntryType::Link, &b""[..]),
            4 => (tar::EntryType::Char, &b""[..]),
            _ => (tar::EntryType::Fifo, &b""[..]),
        };
        h.set_entry_type(ty);
        h.set_size(data.len() as u64);
        if kind == 2 || kind == 3 {
            h.set_link_name(content)?;
        }
        if kind == 4 {
            h.set_device_major(8)?;
            h.set_device_minor(0)?;
        }
        h.set_path(path)?;
        h.set_cksum();
        b.append(&h, data)?;
    }
    Ok(b.into_inner()?)
}

fn gzip(b: &[u8]) -> Result<Vec<u8>> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(b)?;
    Ok(gz.finish()?)
}

fn sha256(b: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, b);
    format!("sha256:{}", d.as_ref().iter().map(|b| format!("{b:02x}")).collect::<String>())
}

fn main() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let (key, _) = SigningKey::generate()?;
    let pod_yaml = std::fs::read(root.join("examples/static-pod.yaml"))?;
    let pod: Pod = serde_yaml_ng::from_slice(&pod_yaml)?;
    let desired = NodeDesired { node: "n1".into(), generation: 7, pods: vec![pod.clone()], ..Default::default() };
    let report = NodeReport { node: "n1".into(), observed_generation: 7, ..Default::default() };
    let event = Event { reason: "Pulled".into(), message: "pulled".into(), ..Default::default() };
    let open = SessionOpen {
        node: "n1".into(),
        sid: "abc".into(),
        counter: 1,
        key: kedge_common::bytes::Bytes(vec![1; 32]),
        window: 65536,
        request: Request::Logs(LogsRequest::default()),
    };

    // envelope: whole payloads, signed and not.
    put("envelope", "desired", &envelope::encode_signed(&desired, Purpose::Desired, &key)?)?;
    put("envelope", "report", &envelope::encode(&report)?)?;
    put("envelope", "event", &envelope::encode_signed(&event, Purpose::Event, &key)?)?;
    // wire: a selector byte, then the message's CBOR (the harness signs it).
    let bodies: Vec<(u8, &str, Vec<u8>)> = vec![
        (0, "desired", cbor(&desired)?),
        (1, "report", cbor(&report)?),
        (2, "event", cbor(&event)?),
        (3, "join", cbor(&JoinRequest { node: "n1".into(), ..Default::default() })?),
        (4, "join-answer", cbor(&JoinAnswer { node: "n1".into(), accepted: true, ..Default::default() })?),
        (5, "rotate", cbor(&RotateRequest { node: "n1".into(), ..Default::default() })?),
        (6, "network", cbor(&ClusterNetwork::default())?),
        (7, "session-open", cbor(&open)?),
        (
            8,
            "presence",
            Presence { online: true, since: "2026-12-08T00:00:00Z".into(), ..Default::default() }.to_json(),
        ),
        (9, "frame", Frame::Error { code: 404, message: "no such pod".into() }.encode()),
        (10, "usage", Usage::default().to_cbor()?),
    ];
    for (sel, name, body) in bodies {
        put("wire", name, &[&[sel][..], &body].concat())?;
    }
    put("wire", "frame-data", &[&[9u8][..], &Frame::Data { stream: 1, data: vec![b'x'; 8].into() }.encode()].concat())?;

    // The API's bodies: JSON objects and patches.
    let pod_json = serde_json::to_vec(&serde_json::to_value(&pod)?)?;
    put("strict_json", "pod", &pod_json)?;
    put("strict_json", "dup", br#"{"a":1,"a":{"b":[1.5,-2,"x",null,true]}}"#)?;
    put(
        "patch",
        "strategic",
        &[&[2u8][..], &pod_json, b"\0", br#"{"spec":{"containers":[{"name":"c","image":"x"}]}}"#].concat(),
    )?;
    put(
        "patch",
        "json",
        &[
            &[0u8][..],
            &pod_json,
            b"\0",
            br#"[{"op":"copy","from":"/spec","path":"/x"},{"op":"remove","path":"/metadata"}]"#,
        ]
        .concat(),
    )?;
    put("patch", "merge", &[&[1u8][..], &pod_json, b"\0", br#"{"metadata":{"labels":{"a":null,"b":"c"}}}"#].concat())?;
    // Kubernetes protobuf bodies: the magic, an Unknown {typeMeta, raw}.
    let field = |tag: u8, payload: &[u8]| -> Vec<u8> {
        let mut out = vec![(tag << 3) | 2];
        let mut n = payload.len();
        while n >= 0x80 {
            out.push((n as u8 & 0x7f) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
        out.extend_from_slice(payload);
        out
    };
    let meta =
        [field(1, b"web"), field(3, b"default"), field(11, &[field(1, b"app"), field(2, b"web")].concat())].concat();
    let container = [field(1, b"c"), field(2, b"kedge.local/busybox:latest"), field(3, b"sleep")].concat();
    let pod_spec = field(2, &container);
    let template = [field(1, &field(1, b"web")), field(2, &pod_spec)].concat();
    let deploy_spec = [vec![0x08, 0x03], field(2, &field(1, &field(1, b"app"))), field(3, &template)].concat();
    let objects: Vec<(&str, &str, Vec<u8>)> = vec![
        ("v1", "ConfigMap", [field(1, &meta), field(2, &[field(1, b"k"), field(2, b"v")].concat())].concat()),
        ("v1", "Pod", [field(1, &meta), field(2, &pod_spec)].concat()),
        ("apps/v1", "Deployment", [field(1, &meta), field(2, &deploy_spec)].concat()),
        (
            "v1",
            "Service",
            [field(1, &meta), field(2, &field(1, &[field(1, b"http"), vec![0x18, 0x50]].concat()))].concat(),
        ),
        ("v1", "DeleteOptions", [vec![0x08, 0x00], field(4, b"Background")].concat()),
        ("batch/v1", "Job", [field(1, &meta), field(2, &field(6, &template))].concat()),
    ];
    for (api_version, kind, object) in objects {
        let type_meta = [field(1, api_version.as_bytes()), field(2, kind.as_bytes())].concat();
        let body = [&b"k8s\0"[..], &field(1, &type_meta), &field(2, &object)].concat();
        put("protobuf_body", &kind.to_lowercase(), &body)?;
    }
    put("static_pod", "example", &pod_yaml)?;
    put("static_pod", "hello", &std::fs::read(root.join("examples/hello.yaml"))?)?;
    put(
        "agent_config",
        "example",
        b"broker: mqtts://controller:8883\nnode-name: pi-1\nlabel: [a=b, c=d]\nmax-pods: 30\n",
    )?;

    // Images: an index, a manifest, a config; layers; an OCI layout archive.
    let layer = tar(&[("etc", 1, ""), ("etc/hostname", 0, "pi\n"), ("bin/sh", 2, "busybox"), ("etc/.wh.old", 0, "")])?;
    let layer_gz = gzip(&layer)?;
    let config = serde_json::json!({"architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [sha256(&layer)]}, "config": {"Cmd": ["sh"]}});
    let config_bytes = serde_json::to_vec(&config)?;
    let manifest = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(&config_bytes), "size": config_bytes.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha256(&layer_gz), "size": layer_gz.len()}]});
    let manifest_bytes = serde_json::to_vec(&manifest)?;
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha256(&manifest_bytes),
            "size": manifest_bytes.len(), "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"org.opencontainers.image.ref.name": "busybox:latest"}}]});
    let index_bytes = serde_json::to_vec(&index)?;
    put("image_manifest", "index", &index_bytes)?;
    put("image_manifest", "manifest", &manifest_bytes)?;
    put("image_manifest", "config", &config_bytes)?;
    let hex = |d: &str| d.trim_start_matches("sha256:").to_string();
    let mut b = tar::Builder::new(Vec::new());
    let files: Vec<(String, &[u8])> = vec![
        ("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#),
        ("index.json".into(), &index_bytes),
        (format!("blobs/sha256/{}", hex(&sha256(&manifest_bytes))), &manifest_bytes),
        (format!("blobs/sha256/{}", hex(&sha256(&config_bytes))), &config_bytes),
        (format!("blobs/sha256/{}", hex(&sha256(&layer_gz))), &layer_gz),
    ];
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append_data(&mut h, path, data)?;
    }
    put("image_archive", "oci-layout", &b.into_inner()?)?;
    let docker = tar(&[
        ("manifest.json", 0, r#"[{"Config":"c.json","RepoTags":["busybox:latest"],"Layers":["l/layer.tar"]}]"#),
        ("c.json", 0, "{}"),
        ("l/layer.tar", 0, ""),
    ])?;
    put("image_archive", "docker-save", &docker)?;

    put("layer_unpack", "plain", &layer)?;
    put("layer_unpack", "gzip", &layer_gz)?;
    put(
        "layer_unpack",
        "links",
        &tar(&[("a", 2, "../../outside"), ("b", 3, "etc/passwd"), ("etc/passwd", 0, "root"), ("c", 3, "etc/passwd")])?,
    )?;
    put(
        "layer_unpack",
        "whiteouts",
        &tar(&[("d", 1, ""), ("d/.wh..wh..opq", 0, ""), ("d/.wh.x", 0, ""), ("s", 2, "d"), ("s/.wh.y", 0, "")])?,
    )?;
    put("layer_unpack", "devices", &tar(&[("dev", 1, ""), ("dev/sda", 4, ""), ("fifo", 5, "")])?)?;
    println!("seeds written under fuzz/corpus/");
    Ok(())
}
