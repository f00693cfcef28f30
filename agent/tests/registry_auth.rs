//! Registry auth against a fake registry on loopback (a test double, as
//! docker-registry's token auth needs a JWT-signing token server): the
//! bearer-token dance (401 challenge → token endpoint with basic credentials
//! → bearer on every request) and a refused password. No root needed.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use base64::Engine;
use kedge_agent::images::ImageStore;
use kedge_agent::images::registry::{Credentials, Puller};

const TOKEN: &str = "tok-123";

/// Blobs of the busybox OCI archive by digest, and its manifest digest.
fn busybox_blobs() -> (HashMap<String, Vec<u8>>, String) {
    let archive = kedge_tests::busybox_image().expect("busybox image builds");
    let mut tar = tar::Archive::new(std::fs::File::open(archive).expect("open"));
    let mut blobs = HashMap::new();
    let mut index = Vec::new();
    for entry in tar.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let path = entry.path().expect("path").to_string_lossy().to_string();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).expect("read");
        if let Some(hex) = path.strip_prefix("blobs/sha256/") {
            blobs.insert(format!("sha256:{hex}"), bytes);
        } else if path == "index.json" {
            index = bytes;
        }
    }
    let index: serde_json::Value = serde_json::from_slice(&index).expect("index");
    let manifest = index["manifests"][0]["digest"].as_str().expect("manifest digest").to_string();
    (blobs, manifest)
}

struct Fake {
    addr: String,
    /// Request lines with the Authorization header each carried.
    seen: Arc<Mutex<Vec<(String, String)>>>,
}

fn respond(stream: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]) {
    let mut head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
}

struct Registry {
    blobs: HashMap<String, Vec<u8>>,
    manifest: String,
    basic: String,
    realm: String,
    log: Arc<Mutex<Vec<(String, String)>>>,
}

fn start_fake(user: &str, password: &str) -> Fake {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (blobs, manifest) = busybox_blobs();
    let registry = Arc::new(Registry {
        blobs,
        manifest,
        basic: format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))),
        realm: format!("http://{addr}/token"),
        log: seen.clone(),
    });
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let registry = registry.clone();
            // One thread per connection: the client keeps connections alive in a pool.
            std::thread::spawn(move || serve(stream, &registry));
        }
    });
    Fake { addr, seen }
}

fn serve(mut stream: TcpStream, reg: &Registry) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    loop {
        let mut request = String::new();
        if reader.read_line(&mut request).unwrap_or(0) == 0 {
            return;
        }
        let mut auth = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("authorization") {
                    auth = v.trim().to_string();
                }
            }
        }
        let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
        reg.log.lock().expect("log").push((path.clone(), auth.clone()));
        if path.starts_with("/token") {
            if auth == reg.basic {
                respond(&mut stream, "200 OK", &[], format!(r#"{{"token":"{TOKEN}"}}"#).as_bytes());
            } else {
                respond(
                    &mut stream,
                    "401 Unauthorized",
                    &[],
                    br#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#,
                );
            }
        } else if auth != format!("Bearer {TOKEN}") {
            let challenge = format!(r#"Bearer realm="{}",service="fake",scope="repository:busybox:pull""#, reg.realm);
            respond(
                &mut stream,
                "401 Unauthorized",
                &[("WWW-Authenticate", challenge)],
                br#"{"errors":[{"code":"UNAUTHORIZED"}]}"#,
            );
        } else if path == "/v2/busybox/manifests/1" {
            let body = &reg.blobs[&reg.manifest];
            respond(
                &mut stream,
                "200 OK",
                &[("Content-Type", "application/vnd.oci.image.manifest.v1+json".into())],
                body,
            );
        } else if let Some(b) = path.strip_prefix("/v2/busybox/blobs/").and_then(|d| reg.blobs.get(d)) {
            respond(&mut stream, "200 OK", &[], b);
        } else {
            respond(&mut stream, "404 Not Found", &[], br#"{"errors":[{"code":"NAME_UNKNOWN"}]}"#);
        }
    }
}

#[test]
fn bearer_token_auth_with_basic_credentials_pulls() {
    let fake = start_fake("robot", "s3cret");
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = ImageStore::open(tmp.path()).expect("store");
    let creds = Credentials { username: "robot".into(), password: "s3cret".into() };
    let name = format!("{}/busybox:1", fake.addr);
    let id = Puller::new(&store, Vec::new(), Some(creds)).pull(&name).expect("pull with a token");
    assert!(id.starts_with("sha256:"));
    assert_eq!(store.resolve(&name).expect("tagged").id, id);
    let seen = fake.seen.lock().expect("log").clone();
    let token_req = seen.iter().find(|(p, _)| p.starts_with("/token")).expect("the token endpoint was asked");
    assert!(token_req.0.contains("service=fake") && token_req.0.contains("busybox"), "{token_req:?}");
    assert!(token_req.1.starts_with("Basic "), "credentials go to the token endpoint");
    let blob_reqs: Vec<_> = seen.iter().filter(|(p, _)| p.contains("/blobs/")).collect();
    assert!(!blob_reqs.is_empty() && blob_reqs.iter().all(|(_, a)| a == &format!("Bearer {TOKEN}")), "{blob_reqs:?}");
}

#[test]
fn a_refused_password_is_reported_with_the_registrys_reason() {
    let fake = start_fake("robot", "s3cret");
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = ImageStore::open(tmp.path()).expect("store");
    let creds = Credentials { username: "robot".into(), password: "wrong".into() };
    let err =
        Puller::new(&store, Vec::new(), Some(creds)).pull(&format!("{}/busybox:1", fake.addr)).expect_err("refused");
    let msg = err.to_string();
    assert!(msg.contains("401") && msg.contains("bad credentials"), "{msg}");
    assert!(store.list().expect("list").is_empty(), "nothing half-pulled is tagged");
}
