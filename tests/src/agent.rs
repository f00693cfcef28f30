//! Driving the real `kedge-agent` binary: its own data dir, manifest folder
//! and CRI socket per test, so several agents run side by side.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::binary;

pub struct Agent {
    pub dir: PathBuf,
    pub data: PathBuf,
    pub manifests: PathBuf,
    pub socket: PathBuf,
    extra: Vec<String>,
    /// The network namespace it runs in (a lab machine), if not this one.
    netns: Option<PathBuf>,
    /// Directories the agent finds empty (a machine without those packages).
    hidden: Vec<String>,
    child: Option<Child>,
}

impl Agent {
    /// Prepares an agent under `dir` with busybox imported; not started yet.
    pub fn new(dir: &Path, extra: &[&str]) -> Result<Agent> {
        let agent = Agent {
            dir: dir.to_path_buf(),
            data: dir.join("data"),
            manifests: dir.join("manifests"),
            socket: dir.join("cri.sock"),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            netns: None,
            hidden: Vec::new(),
            child: None,
        };
        std::fs::create_dir_all(&agent.manifests)?;
        let image = crate::busybox_image()?;
        agent.cli(&["image", "import", &image.display().to_string()])?;
        Ok(agent)
    }

    pub fn start(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("agent.log"))?;
        let bin = binary("kedge-agent")?;
        let mut cmd = match self.hidden.is_empty() {
            true => crate::command_in(self.netns.as_deref(), bin),
            false => {
                // Its own mount namespace, with an empty tmpfs over each.
                let mut c = crate::command_in(self.netns.as_deref(), "unshare");
                let mounts: String = self.hidden.iter().map(|d| format!("mount -t tmpfs hidden {d} && ")).collect();
                c.args(["--mount", "--propagation", "private", "sh", "-c"]);
                c.arg(format!("{mounts}exec \"$0\" \"$@\"")).arg(bin);
                c
            }
        };
        cmd.arg("--data-dir").arg(&self.data).arg("--cri-socket").arg(&self.socket).arg("run");
        cmd.arg("--manifests").arg(&self.manifests);
        // The host's /etc/kedge/agent.yaml and boot partition are not this test's.
        let has = |flag: &str| self.extra.iter().any(|a| a == flag);
        if !has("--config") {
            cmd.arg("--config").arg(self.dir.join("agent.yaml"));
            if !has("--node-name") {
                cmd.args(["--node-name", "n1"]);
            }
        }
        if !has("--boot-config") {
            cmd.arg("--boot-config").arg(self.dir.join("boot/kedge-agent.yaml"));
        }
        // The build machine's disk is not under test: its fill level (builds
        // for three targets) must not make the agent remove the test's images.
        // agent/tests/runtime.rs tests the image GC itself.
        if !has("--image-gc-high-threshold") {
            cmd.args(["--image-gc-high-threshold", "100"]);
        }
        // Agents share this machine's network namespace here: only a test
        // that gives its agent a pod network (naming the bridge, as the
        // network lab does per node namespace) gets one.
        if !has("--pod-bridge") && !has("--no-pod-network") {
            cmd.arg("--no-pod-network");
        }
        cmd.args(&self.extra).stdout(Stdio::null()).stderr(log);
        self.child = Some(cmd.spawn().context("starting kedge-agent")?);
        Ok(())
    }

    /// Runs the agent (from its next start on) in the network namespace at
    /// `netns`: a lab machine's ([`crate::netlab::Machine::netns_path`]).
    pub fn set_netns(&mut self, netns: &Path) {
        self.netns = Some(netns.to_path_buf());
    }

    /// Runs the agent (from its next start on) with `dirs` empty, as on a
    /// machine without what they hold (`/usr/sbin`: no nft, no conntrack).
    pub fn hide(&mut self, dirs: &[&str]) {
        self.hidden = dirs.iter().map(|d| d.to_string()).collect();
    }

    /// Replaces the extra `run` flags for the next start.
    pub fn set_extra(&mut self, extra: &[&str]) {
        self.extra = extra.iter().map(|s| s.to_string()).collect();
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `kill -9` of the agent (its containers keep running).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn alive(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// Runs a `kedge-agent` subcommand against this data dir (in the agent's
    /// network namespace); stdout on success.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let out = crate::command_in(self.netns.as_deref(), binary("kedge-agent")?)
            .arg("--data-dir")
            .arg(&self.data)
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!("kedge-agent {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn ps(&self) -> Result<Vec<Value>> {
        let out = self.cli(&["ps", "-o", "json"])?;
        Ok(serde_json::from_str::<Vec<Value>>(&out)?)
    }

    /// One container of one pod from `ps -o json` (pod matched by manifest name).
    pub fn container(&self, pod: &str, container: &str) -> Result<Option<Value>> {
        let prefix = format!("{pod}-");
        Ok(self
            .ps()?
            .into_iter()
            .filter(|p| p["name"].as_str().is_some_and(|n| n == pod || n.starts_with(&prefix)))
            .flat_map(|p| p["containers"].as_array().cloned().unwrap_or_default())
            .find(|c| c["name"] == container))
    }

    pub fn write_manifest(&self, file: &str, yaml: &str) -> Result<()> {
        // Write then rename, so the agent never reads half a file.
        let tmp = self.manifests.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, yaml)?;
        std::fs::rename(&tmp, self.manifests.join(file))?;
        Ok(())
    }

    /// Polls `check` until it returns Some, or fails after `limit` with the agent's log.
    pub fn wait_for<T>(&self, what: &str, limit: Duration, check: impl FnMut() -> Result<Option<T>>) -> Result<T> {
        crate::wait_for(what, limit, check)
            .with_context(|| format!("ps: {:?}\nagent log:\n{}", self.cli(&["ps"]), self.log()))
    }
}

impl Drop for Agent {
    /// Removes every pod (so no container outlives the test), then stops the agent.
    fn drop(&mut self) {
        if let Some(i) = self.extra.iter().position(|a| a == "--broker") {
            // The controller's pods: forget them (cache and link), so the
            // restarted agent tears them down as pods no source wants.
            self.kill();
            self.extra.drain(i..(i + 2).min(self.extra.len()));
            let _ = std::fs::remove_file(self.data.join("agent.redb"));
        }
        if self.child.is_none() && self.data.join("pods").exists() {
            let _ = self.start();
        }
        if let Ok(entries) = std::fs::read_dir(&self.manifests) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline && self.ps().is_ok_and(|p| !p.is_empty()) {
            std::thread::sleep(Duration::from_millis(200));
        }
        self.kill();
        // The agent keeps DATA/ns mounted (private) across its restarts so
        // namespace pins survive; with no pod left, unmount it so the test's
        // temporary directory can go.
        if self.ps().is_ok_and(|p| p.is_empty()) {
            let _ = Command::new("umount").arg("-l").arg(self.data.join("ns")).stderr(Stdio::null()).status();
        }
    }
}
