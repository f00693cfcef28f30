//! Image pulls as a node sees them: from Debian's `docker-registry` on
//! 127.0.0.1, and the errors `ps` shows when an image is missing or the
//! registry is down. Needs root, docker-registry and skopeo.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use kedge_tests::agent::Agent;
use serde_json::Value;

fn ready() -> bool {
    kedge_tests::require(kedge_tests::is_root(), "root (the agent runs real containers)")
        && kedge_tests::require(
            Path::new("/usr/bin/docker-registry").exists(),
            "docker-registry (apt-get install docker-registry)",
        )
        && kedge_tests::require(Path::new("/usr/bin/skopeo").exists(), "skopeo (apt-get install skopeo)")
}

/// A private docker-registry on a free loopback port, killed on drop.
struct Registry {
    child: Child,
    addr: String,
}

impl Registry {
    fn start(dir: &Path) -> Result<Registry> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.join("registry").display()
            ),
        )?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("registry.log"))?)
            .spawn()
            .context("starting docker-registry")?;
        let reg = Registry { child, addr };
        for _ in 0..100 {
            if std::net::TcpStream::connect(&reg.addr).is_ok() {
                return Ok(reg);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        anyhow::bail!("docker-registry did not listen on {}", reg.addr)
    }

    fn push(&self, archive: &Path, name: &str) -> Result<()> {
        let out = Command::new("skopeo")
            .args(["copy", "--dest-tls-verify=false", "--quiet"])
            .arg(format!("oci-archive:{}", archive.display()))
            .arg(format!("docker://{}/{name}", self.addr))
            .output()?;
        ensure!(out.status.success(), "skopeo copy failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pod(name: &str, image: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: {image}\n    command: [\"sleep\", \"3600\"]\n"
    )
}

fn waiting_reason(c: &Value) -> (String, String) {
    (c["reason"].as_str().unwrap_or("").to_string(), c["message"].as_str().unwrap_or("").to_string())
}

#[test]
fn pulls_from_a_registry_and_reports_pull_errors() -> Result<()> {
    if !ready() {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let registry = Registry::start(tmp.path())?;
    registry.push(&kedge_tests::busybox_image()?, "tools/busybox:1.0")?;

    let mut agent =
        Agent::new(&tmp.path().join("agent"), &["--backoff-base", "1s", "--backoff-max", "2s", "--no-cri-socket"])?;
    agent.start()?;
    let pulled = format!("{}/tools/busybox:1.0", registry.addr);
    agent.write_manifest("pulled.yaml", &pod("pulled", &pulled))?;
    agent.write_manifest("missing.yaml", &pod("missing", &format!("{}/tools/nothing:1", registry.addr)))?;
    agent.write_manifest("down.yaml", &pod("down", "127.0.0.1:1/busybox:1"))?;

    agent.wait_for("the pulled image to run", Duration::from_secs(30), || {
        Ok(agent.container("pulled", "c")?.filter(|c| c["state"] == "Running").map(|_| ()))
    })?;
    let images = agent.cli(&["image", "ls"])?;
    assert!(images.contains(&pulled), "image ls shows the pulled image: {images}");

    let is_pull_error = |r: &str| r == "ErrImagePull" || r == "ImagePullBackOff";
    let (reason, message) = agent.wait_for("a pull error for the missing image", Duration::from_secs(20), || {
        Ok(agent.container("missing", "c")?.map(|c| waiting_reason(&c)).filter(|(r, _)| is_pull_error(r)))
    })?;
    assert!(
        message.contains("404") && message.to_lowercase().contains("unknown"),
        "the registry's reason is shown ({reason}): {message}"
    );

    let (reason, message) =
        agent.wait_for("a pull error for the unreachable registry", Duration::from_secs(20), || {
            Ok(agent.container("down", "c")?.map(|c| waiting_reason(&c)).filter(|(r, _)| is_pull_error(r)))
        })?;
    assert!(
        message.contains("127.0.0.1:1") && message.contains("unreachable"),
        "why the pull failed ({reason}): {message}"
    );

    // Backing off: the reason turns to ImagePullBackOff between attempts.
    agent.wait_for("ImagePullBackOff", Duration::from_secs(20), || {
        Ok(agent.container("down", "c")?.map(|c| waiting_reason(&c)).filter(|(r, _)| r == "ImagePullBackOff"))
    })?;
    assert!(agent.alive(), "the agent keeps running");
    let table = agent.cli(&["ps"])?;
    assert!(table.contains("default/pulled-n1") && table.contains("Running"), "{table}");

    // The CLI pulls too, into the same store.
    let out = agent.cli(&["image", "pull", &format!("{}/tools/busybox:1.0", registry.addr)])?;
    assert!(out.starts_with("pulled "), "{out}");
    Ok(())
}

#[test]
fn import_rejects_garbage_and_keeps_what_is_stored() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    // No root needed: the image store is plain files.
    let agent = Agent::new(tmp.path(), &[])?;
    let garbage = tmp.path().join("garbage.tar");
    std::fs::write(&garbage, b"this is not a tar archive at all")?;
    let err = agent.cli(&["image", "import", &garbage.display().to_string()]).expect_err("garbage is refused");
    assert!(err.to_string().contains("garbage.tar"), "the error names the file: {err}");
    let images = agent.cli(&["image", "ls"])?;
    assert!(images.contains("kedge.local/busybox:latest"), "the stored image is still there: {images}");
    Ok(())
}

#[test]
fn docker_save_tarballs_import_and_prune_removes_unused_images() -> Result<()> {
    if !kedge_tests::require(Path::new("/usr/bin/skopeo").exists(), "skopeo (apt-get install skopeo)") {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let agent = Agent::new(tmp.path(), &[])?;
    // skopeo's docker-archive is the `docker save` format: manifest.json, <id>.json, <layer>.tar.
    let saved = tmp.path().join("saved.tar");
    let out = Command::new("skopeo")
        .args(["copy", "--quiet"])
        .arg(format!("oci-archive:{}", kedge_tests::busybox_image()?.display()))
        .arg(format!("docker-archive:{}:example.com/tools/saved:v1", saved.display()))
        .output()?;
    ensure!(out.status.success(), "skopeo copy failed: {}", String::from_utf8_lossy(&out.stderr));
    let imported = agent.cli(&["image", "import", &saved.display().to_string()])?;
    assert_eq!(imported.trim(), "imported example.com/tools/saved:v1");
    let images = agent.cli(&["image", "ls"])?;
    assert!(images.contains("example.com/tools/saved:v1") && images.contains("kedge.local/busybox:latest"), "{images}");

    let pruned = agent.cli(&["image", "prune"])?;
    assert!(pruned.lines().count() >= 1, "{pruned}");
    let images = agent.cli(&["image", "ls"])?;
    assert_eq!(images.lines().count(), 1, "only the header is left: {images}");
    let blobs = std::fs::read_dir(agent.data.join("images/blobs/sha256"))?.count();
    assert_eq!(blobs, 0, "no blob is left behind");
    Ok(())
}

/// `images/busybox/build.sh --multiarch`: one archive holding an OCI index of
/// linux/amd64, linux/arm64 and linux/arm/v7 (from Debian's busybox-static
/// for each). This node's agent takes its own platform's manifest from it;
/// scripts/test-arm.sh checks the arm64 and armv7 agents take theirs.
#[test]
fn multiarch_busybox_imports_this_nodes_platform() -> Result<()> {
    let cached = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/images/debs/busybox-static-arm64/bin/busybox");
    if !kedge_tests::require(
        kedge_tests::is_root() || cached.exists(),
        "root once (apt-get download busybox-static:arm64/armhf after dpkg --add-architecture)",
    ) {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let out = tmp.path().join("busybox-multiarch.tar");
    let build = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/busybox/build.sh"))
        .arg("--multiarch")
        .env("OUT", &out)
        .output()?;
    ensure!(build.status.success(), "build.sh --multiarch: {}", String::from_utf8_lossy(&build.stderr));
    let printed = String::from_utf8_lossy(&build.stdout).to_string();
    let digest = |platform: &str| -> Result<String> {
        printed
            .lines()
            .find_map(|l| l.strip_prefix(&format!("manifest digest {platform}: ")))
            .map(str::to_string)
            .with_context(|| format!("no {platform} manifest in:\n{printed}"))
    };
    let (amd64, arm64, armv7) = (digest("linux/amd64")?, digest("linux/arm64")?, digest("linux/arm/v7")?);
    assert!(amd64 != arm64 && arm64 != armv7, "three different images: {printed}");

    // The archive's index.json names one nested index listing the three platforms.
    let mut archive = tar::Archive::new(std::fs::File::open(&out)?);
    let mut index = String::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        if entry.path()?.to_string_lossy() == "index.json" {
            std::io::Read::read_to_string(&mut entry, &mut index)?;
        }
    }
    let index: Value = serde_json::from_str(&index)?;
    assert_eq!(index["manifests"][0]["mediaType"], "application/vnd.oci.image.index.v1+json", "{index}");

    let agent = Agent::new(&tmp.path().join("agent"), &[])?;
    agent.cli(&["image", "import", &out.display().to_string()])?;
    let refs: Value = serde_json::from_str(&std::fs::read_to_string(agent.data.join("images/refs.json"))?)?;
    let want = match std::env::consts::ARCH {
        "x86_64" => amd64,
        "aarch64" => arm64,
        "arm" => armv7,
        other => {
            kedge_tests::require(false, &format!("a platform in the multi-arch image (this is {other})"));
            return Ok(());
        }
    };
    assert_eq!(refs["refs"]["kedge.local/busybox:latest"], want.as_str(), "refs.json: {refs}");
    Ok(())
}

/// Offline, `imagePullPolicy: Always` (the default for `:latest`) runs the
/// image the node already has: with the registry stopped, a container of a
/// pulled `:latest` image crashes and is restarted, with a
/// `PulledFromCache` event noted; an image the node never had still fails
/// with `ErrImagePull`.
#[test]
fn an_offline_node_restarts_always_pulled_containers_from_its_cache() -> Result<()> {
    if !ready() {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let registry = Registry::start(tmp.path())?;
    registry.push(&kedge_tests::busybox_image()?, "tools/busybox:latest")?;
    let mut agent =
        Agent::new(&tmp.path().join("agent"), &["--backoff-base", "1s", "--backoff-max", "2s", "--no-cri-socket"])?;
    agent.start()?;
    let addr = registry.addr.clone();
    let image = format!("{addr}/tools/busybox:latest");
    // Crashes every 2 s; no imagePullPolicy: `Always`, for `:latest`.
    let crashing = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: crashing\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: {image}\n    command: [\"sh\", \"-c\", \"sleep 2; exit 1\"]\n"
    );
    agent.write_manifest("crashing.yaml", &crashing)?;
    agent.wait_for("the pulled image to run", Duration::from_secs(30), || {
        Ok(agent.container("crashing", "c")?.filter(|c| c["state"] == "Running").map(|_| ()))
    })?;
    // The registry goes away.
    drop(registry);
    let before = agent.container("crashing", "c")?.and_then(|c| c["restart_count"].as_u64()).unwrap_or(0);
    agent.wait_for("restarts with the registry down", Duration::from_secs(40), || {
        let n = agent.container("crashing", "c")?.and_then(|c| c["restart_count"].as_u64()).unwrap_or(0);
        Ok((n >= before + 2).then_some(()))
    })?;
    let c = agent.container("crashing", "c")?.context("crashing container")?;
    let (reason, message) = waiting_reason(&c);
    ensure!(reason != "ErrImagePull" && reason != "ImagePullBackOff", "no pull error: {reason}: {message}");
    let log = std::fs::read_to_string(tmp.path().join("agent/agent.log"))?;
    ensure!(log.contains("registry unreachable; running the image this node has"), "the agent says so");

    // An image it never had: the pull error, as before.
    let missing = pod("missing", &format!("{addr}/tools/never:latest"));
    agent.write_manifest("missing.yaml", &missing)?;
    let is_pull_error = |r: &str| r == "ErrImagePull" || r == "ImagePullBackOff";
    let (_, message) = agent.wait_for("a pull error for the uncached image", Duration::from_secs(20), || {
        Ok(agent.container("missing", "c")?.map(|c| waiting_reason(&c)).filter(|(r, _)| is_pull_error(r)))
    })?;
    ensure!(message.contains("unreachable"), "{message}");
    Ok(())
}
