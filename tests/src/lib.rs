//! Helpers shared by the end-to-end tests: building and starting the real
//! binaries, finding the real kubectl, and skipping loudly (or failing under
//! `CI=true`) when something a test needs is missing.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub mod agent;
pub mod cri;
pub mod flood;
pub mod netlab;
pub mod slowlink;

use anyhow::{Context, Result, bail};

/// True under CI, where a skipped test is a failure.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Reports a missing prerequisite: panics under CI, prints a loud notice and
/// returns `false` locally (the caller then returns early).
pub fn require(ok: bool, what: &str) -> bool {
    if !ok {
        if in_ci() {
            panic!("required for this test under CI=true: {what}");
        }
        eprintln!("\n!!!! SKIPPED: {what} !!!!\n");
    }
    ok
}

/// True when this arm test binary runs under qemu-user on another machine's
/// kernel (the `runner` of the arm targets in .cargo/config.toml). qemu-user
/// cannot create containers (it refuses the `CLONE_PARENT` clone and
/// `PR_SET_SECCOMP`), so container tests skip there — loudly, and also under
/// CI: they need real arm hardware, not a different host.
pub fn under_qemu_user(what: &str) -> bool {
    // An arm kernel's /proc/cpuinfo has no x86 `vendor_id`; qemu-user passes
    // the host's through.
    let emulated = cfg!(any(target_arch = "aarch64", target_arch = "arm"))
        && std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| c.lines().any(|l| l.starts_with("vendor_id")));
    if emulated {
        eprintln!("\n!!!! SKIPPED under qemu-user (needs real arm hardware): {what} !!!!\n");
    }
    emulated
}

/// Runs a command to completion; its stdout, or an error with both outputs.
pub fn run_ok(cmd: &mut Command) -> Result<String> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The repository's root folder (scripts, images, deploy).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// A command for `program` that runs in the network namespace at `netns`
/// (`nsenter --net`: only the network namespace changes, so mounts a
/// process makes are seen from everywhere, as on a real machine), or a plain
/// one without.
pub fn command_in(netns: Option<&Path>, program: impl AsRef<std::ffi::OsStr>) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", ns.display())).arg("--").arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Builds (once per test process) and returns the path of a workspace binary,
/// so a test never runs a stale build.
pub fn binary(name: &str) -> Result<PathBuf> {
    static BUILT: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    let dir = BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            let release = exe.components().any(|c| c.as_os_str() == "release");
            let mut args = vec!["build", "--bins", "--message-format=short"];
            if release {
                args.push("--release");
            }
            let out = Command::new(cargo)
                .current_dir(workspace_root())
                .args(&args)
                .output()
                .map_err(|e| format!("running cargo build: {e}"))?;
            if !out.status.success() {
                return Err(format!("cargo build failed:\n{}", String::from_utf8_lossy(&out.stderr)));
            }
            // target/<profile>/deps/<test> → target/<profile>
            exe.parent().and_then(Path::parent).map(Path::to_path_buf).ok_or_else(|| "no target dir".to_owned())
        })
        .clone()
        .map_err(anyhow::Error::msg)?;
    let p = dir.join(name);
    if !p.exists() {
        bail!("{} was not built", p.display());
    }
    Ok(p)
}

/// The kubectl to test with: `$KEDGE_KUBECTL`, else kubectl 1.32 where the
/// Cloud SDK dispatcher keeps versioned copies, else `kubectl` on PATH.
pub fn kubectl_path() -> Option<PathBuf> {
    if let Ok(k) = std::env::var("KEDGE_KUBECTL") {
        return Some(PathBuf::from(k));
    }
    let versioned = Path::new("/usr/lib/google-cloud-sdk/bin/kubectl.1.32");
    if versioned.exists() {
        return Some(versioned.to_path_buf());
    }
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join("kubectl")).find(|p| p.exists()))
}

/// The `p` quantile (0.0–1.0) of `sorted` by nearest rank; zero when empty.
/// For the benchmarks' p50 / p99.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

/// Polls `check` every 100 ms until it returns Some, or fails after `limit`
/// naming `what` and the last error `check` gave.
pub fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let start = Instant::now();
    let mut last_err = String::new();
    while start.elapsed() < limit {
        match check() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("timed out after {limit:?} waiting for {what} {last_err}")
}

/// A running `kedge-controller` process with its own data dir.
pub struct Controller {
    pub child: Child,
    pub addr: String,
    pub data_dir: PathBuf,
    /// The fleet broker (`mqtt://host:port`) it uses, when the fleet link runs.
    pub broker: Option<String>,
    /// Whether it serves HTTPS (the default) rather than `--insecure-http`.
    pub tls: bool,
}

impl Controller {
    pub fn start(data_dir: &Path) -> Result<Self> {
        Self::start_on(data_dir, "127.0.0.1:0")
    }

    pub fn start_on(data_dir: &Path, listen: &str) -> Result<Self> {
        Self::start_with(data_dir, listen, &[])
    }

    /// Starts with extra command-line flags.
    pub fn start_with(data_dir: &Path, listen: &str, extra: &[&str]) -> Result<Self> {
        Self::start_in(None, data_dir, listen, extra)
    }

    /// Starts inside the network namespace at `netns` (a lab machine, see
    /// [`netlab`]), or in this process's one.
    pub fn start_in(netns: Option<&Path>, data_dir: &Path, listen: &str, extra: &[&str]) -> Result<Self> {
        let bin = binary("kedge-controller")?;
        Self::spawn(command_in(netns, &bin), data_dir, listen, extra, Stdio::inherit())
    }

    /// Starts under `wrapper` (`prlimit --nofile=…`), its log (stderr) in
    /// the file `log`.
    pub fn start_wrapped(wrapper: &[&str], data_dir: &Path, extra: &[&str], log: &Path) -> Result<Self> {
        let (program, args) = wrapper.split_first().context("a wrapper command")?;
        let mut cmd = Command::new(program);
        cmd.args(args).arg(binary("kedge-controller")?);
        Self::spawn(cmd, data_dir, "127.0.0.1:0", extra, std::fs::File::create(log)?.into())
    }

    fn spawn(mut cmd: Command, data_dir: &Path, listen: &str, extra: &[&str], stderr: Stdio) -> Result<Self> {
        // Tests run side by side: the embedded broker takes any free port.
        let own_broker = !extra.iter().any(|a| ["--broker", "--mqtt-listen", "--no-fleet"].contains(a));
        let mut child = cmd
            .args(if own_broker { &["--mqtt-listen", "127.0.0.1:0"][..] } else { &[] })
            .args(extra)
            .args(["--data-dir", &data_dir.to_string_lossy(), "--listen", listen])
            .env("RUST_LOG", std::env::var("KEDGE_TEST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .context("starting kedge-controller")?;
        let stdout = child.stdout.take().context("controller stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().context("controller exited before listening")??;
        let addr = first
            .rsplit("://")
            .next()
            .filter(|_| first.contains("listening"))
            .with_context(|| format!("unexpected first line: {first}"))?
            .to_owned();
        let mut broker = None;
        for line in lines.by_ref().take(2) {
            let line = line?;
            if let Some(b) = line.strip_prefix("fleet broker ") {
                broker = Some(b.to_string());
            }
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let tls = first.contains("https://");
        Ok(Controller { child, addr, data_dir: data_dir.to_path_buf(), broker, tls })
    }

    /// Its API, with the credentials from its data dir.
    pub fn api(&self) -> Result<Api> {
        let builder = ureq::Agent::config_builder().http_status_as_error(false);
        if !self.tls {
            return Ok(Api { base: format!("http://{}", self.addr), agent: builder.build().into(), token: None });
        }
        let ca = std::fs::read(self.data_dir.join("tls/ca.crt")).context("the controller's CA")?;
        let ca = ureq::tls::Certificate::from_pem(&ca)?.to_owned();
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(vec![ca])))
            .build();
        let token = std::fs::read_to_string(self.data_dir.join("token")).context("the controller's token")?;
        Ok(Api {
            base: format!("https://{}", self.addr),
            agent: builder.tls_config(tls).build().into(),
            token: Some(token.trim().to_owned()),
        })
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.data_dir.join("kubeconfig.yaml")
    }

    /// A fresh join token from `kedge-controller token create`, as an
    /// operator makes one for a node.
    pub fn token(&self) -> Result<String> {
        self.token_with(&[])
    }

    /// A token made with extra flags (`--ttl 1s`, `--uses 1`).
    pub fn token_with(&self, extra: &[&str]) -> Result<String> {
        let out = Command::new(binary("kedge-controller")?)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["token", "create"])
            .args(extra)
            .output()?;
        anyhow::ensure!(out.status.success(), "token create: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = self.child.try_wait()? {
                return Ok(st);
            }
            if Instant::now() > deadline {
                bail!("controller did not stop within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs the real kubectl against a kubeconfig with a private discovery cache.
pub struct Kubectl {
    pub bin: PathBuf,
    pub kubeconfig: PathBuf,
    pub cache: PathBuf,
}

impl Kubectl {
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args).env("KUBECONFIG", &self.kubeconfig).env("KUBECACHEDIR", &self.cache).env_remove("HTTPS_PROXY");
        c
    }

    pub fn run(&self, args: &[&str]) -> Result<Output> {
        self.command(args).output().with_context(|| format!("running kubectl {args:?}"))
    }

    /// Runs and requires success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args)?;
        if !out.status.success() {
            bail!(
                "kubectl {args:?} failed ({}):\nstdout: {}\nstderr: {}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs with `-o json` appended and parses the output.
    pub fn json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a)?).context("kubectl -o json output")
    }

    /// Runs and requires failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args)?;
        if out.status.success() {
            bail!("kubectl {args:?} unexpectedly succeeded: {}", String::from_utf8_lossy(&out.stdout));
        }
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A controller's API for the things kubectl has no verb for (a node's
/// heartbeat, a pod's readiness: what the agents write), reached as any
/// client must: HTTPS with the cluster CA and the bearer token the
/// kubeconfig carries (read from the controller's data dir), or plain HTTP
/// where the controller was started with `--insecure-http`.
#[derive(Clone)]
pub struct Api {
    base: String,
    agent: ureq::Agent,
    token: Option<String>,
}

impl Api {
    /// One request; returns the status code and the body.
    pub fn request(&self, method: &str, path: &str, content_type: &str, body: &str) -> Result<(u16, String)> {
        let url = format!("{}{path}", self.base);
        let mut req = ureq::http::Request::builder().method(method).uri(&url).header("Content-Type", content_type);
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let mut resp =
            if body.is_empty() { self.agent.run(req.body(())?) } else { self.agent.run(req.body(body.to_owned())?) }
                .with_context(|| format!("{method} {url}"))?;
        let status = resp.status().as_u16();
        Ok((status, resp.body_mut().read_to_string()?))
    }

    /// A GET with extra request headers; returns the status, the response
    /// headers (names in lower case) and the body's bytes.
    pub fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Result<(u16, BTreeMap<String, String>, Vec<u8>)> {
        let url = format!("{}{path}", self.base);
        let mut req = ureq::http::Request::builder().method("GET").uri(&url);
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut resp = self.agent.run(req.body(())?).with_context(|| format!("GET {url}"))?;
        let got = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned()))
            .collect();
        let body = resp.body_mut().with_config().limit(64 << 20).read_to_vec()?;
        Ok((resp.status().as_u16(), got, body))
    }
}

/// Marks a node Ready with a fresh heartbeat, as its agent would.
pub fn heartbeat(api: &Api, node: &str) -> Result<()> {
    let now = jiff_now();
    let body = format!(
        r#"{{"status":{{"conditions":[{{"type":"Ready","status":"True","reason":"KubeletReady","lastHeartbeatTime":"{now}","lastTransitionTime":"{now}"}}]}}}}"#
    );
    let (code, text) =
        api.request("PATCH", &format!("/api/v1/nodes/{node}/status"), "application/merge-patch+json", &body)?;
    if code != 200 {
        bail!("heartbeat for {node}: {code} {text}");
    }
    Ok(())
}

/// Marks a pod Running and Ready, as its node's agent would.
pub fn pod_ready(api: &Api, ns: &str, pod: &str) -> Result<()> {
    let body = r#"{"status":{"phase":"Running","conditions":[{"type":"Ready","status":"True","lastTransitionTime":"2020-01-01T00:00:00Z"}]}}"#;
    let (code, text) = api.request(
        "PATCH",
        &format!("/api/v1/namespaces/{ns}/pods/{pod}/status"),
        "application/merge-patch+json",
        body,
    )?;
    if code != 200 && code != 404 {
        bail!("readiness for {pod}: {code} {text}");
    }
    Ok(())
}

/// RFC 3339 "now" in whole seconds, as Kubernetes timestamps are.
pub fn jiff_now() -> String {
    let secs = jiff::Timestamp::now().as_second();
    jiff::Timestamp::from_second(secs).map(|t| t.to_string()).unwrap_or_default()
}

/// Starts a controller (with `extra` flags) in `dir` and a kubectl pointed at
/// it; `None` (after a loud skip notice, or a panic under CI) without kubectl.
pub fn controller_and_kubectl(dir: &Path, extra: &[&str]) -> Result<Option<(Controller, Kubectl)>> {
    if kubectl_path().is_none() {
        require(false, "kubectl is not installed");
        return Ok(None);
    }
    let ctl = Controller::start_with(&dir.join("data"), "127.0.0.1:0", extra)?;
    Ok(kubectl_for(&ctl, dir).map(|k| (ctl, k)))
}

/// The real kubectl pointed at `ctl`, its discovery cache under `dir`;
/// `None` (after a loud skip notice, or a panic under CI) without kubectl.
pub fn kubectl_for(ctl: &Controller, dir: &Path) -> Option<Kubectl> {
    let Some(bin) = kubectl_path() else {
        require(false, "kubectl is not installed");
        return None;
    };
    Some(Kubectl { bin, kubeconfig: ctl.kubeconfig(), cache: dir.join("kube-cache") })
}

/// Whether this process runs as root (containers, namespaces, cgroups).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

/// The busybox OCI archive from `images/busybox/build.sh`, built once per
/// test process (the build is reproducible, so rebuilding is harmless).
pub fn busybox_image() -> Result<PathBuf> {
    static BUILT: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = workspace_root();
            let out = root.join("target/images/busybox.tar");
            let status = Command::new("bash")
                .arg(root.join("images/busybox/build.sh"))
                .stdout(Stdio::null())
                .output()
                .map_err(|e| format!("running images/busybox/build.sh: {e}"))?;
            if !status.status.success() {
                return Err(format!("images/busybox/build.sh failed: {}", String::from_utf8_lossy(&status.stderr)));
            }
            Ok(out)
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// `VmRSS` of a process in KiB (0 when it is gone), for the benchmarks.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// One sample of a scrape: name, labels, value.
pub type Sample = (String, serde_json::Map<String, serde_json::Value>, f64);

/// Parses an exposition with the Prometheus project's Python parser
/// (`prometheus` text or `openmetrics`); `None` (skipped, loudly) without
/// the `prometheus_client` package (scripts/packages.sh).
pub fn parse_metrics(text: &str, format: &str) -> Result<Option<Vec<Sample>>> {
    let root = workspace_root();
    let path = root.join("target/python");
    let has = Command::new("python3").args(["-c", "import prometheus_client"]).env("PYTHONPATH", &path).output();
    if !require(has.is_ok_and(|o| o.status.success()), "the Python prometheus_client (scripts/packages.sh)") {
        return Ok(None);
    }
    let mut child = Command::new("python3")
        .arg(root.join("tests/python/prom_parse.py"))
        .arg(format)
        .env("PYTHONPATH", &path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    std::io::Write::write_all(&mut child.stdin.take().context("stdin")?, text.as_bytes())?;
    let o = child.wait_with_output()?;
    anyhow::ensure!(
        o.status.success(),
        "the {format} parser refused the exposition: {}\n{text}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout)?;
    Ok(Some(
        v.into_iter()
            .map(|s| {
                let labels = s["labels"].as_object().cloned().unwrap_or_default();
                (s["name"].as_str().unwrap_or_default().to_owned(), labels, s["value"].as_f64().unwrap_or(f64::NAN))
            })
            .collect(),
    ))
}

/// The sum of the samples named `name` whose labels include `labels`.
pub fn metric(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| {
            n == name && labels.iter().all(|(k, v)| l.get(*k).and_then(serde_json::Value::as_str) == Some(*v))
        })
        .map(|(.., v)| v)
        .sum()
}
