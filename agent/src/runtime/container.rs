//! The blocking calls into libcontainer. Each runs on a blocking thread
//! (libcontainer forks and waits); the builders are not `Send`, so they are
//! made inside the call.
//!
//! **Create and exec run in a helper process.** libcontainer clones with the
//! raw `clone3` syscall, which skips glibc's fork handlers: a clone taken
//! while another thread of the agent holds the malloc arena lock leaves the
//! child blocked forever on its first allocation (seen here as pods stuck
//! after "sandbox ready", with an orphaned `youki:[1:INTER]` process). So
//! the agent re-executes itself (`kedge-agent __libcontainer …`, a
//! single-threaded process) for every call that clones; the container's init
//! is the helper's child and, when the helper exits, is reparented to the
//! agent, which is a child subreaper. `start` and `delete` do not clone and
//! stay in-process.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use libcontainer::container::Container;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::RuntimeError;

/// Largest ExecSync output kept per stream, as the kubelet caps it.
const MAX_EXEC_OUTPUT: u64 = 16 << 20;

/// libcontainer changes the process's working directory to bind and connect
/// its notify sockets (unix socket paths are short), so two calls on two
/// threads at once can send one to the other's socket; and forks must not
/// overlap file writes (see `forklock`). In-process calls and helper spawns
/// hold the exclusive side.
fn serialized() -> std::sync::RwLockWriteGuard<'static, ()> {
    crate::forklock::forking()
}

fn lc(id: &str) -> impl FnOnce(libcontainer::error::LibcontainerError) -> RuntimeError + '_ {
    move |source| RuntimeError::Libcontainer { id: id.to_string(), source }
}

/// Opens a pipe read-write: the holder never sees EPIPE, whoever reads it.
fn open_fifo_rw(path: &Path) -> Result<File, RuntimeError> {
    OpenOptions::new().read(true).write(true).open(path).map_err(RuntimeError::io(path))
}

/// `create` in the helper: the container's init is forked and waits to be
/// started; returns its pid.
pub fn create(helper: &Path, id: &str, bundle: &Path, state_root: &Path) -> Result<i32, RuntimeError> {
    let out =
        run_helper(helper, id, &["create", "--id", id, "--root", &lossy(state_root), "--bundle", &lossy(bundle)])?;
    out.trim().parse::<i32>().map_err(|_| other(id, format!("the helper answered {out:?}, not a pid")))
}

fn lossy(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn other(id: &str, msg: String) -> RuntimeError {
    RuntimeError::Libcontainer { id: id.to_string(), source: libcontainer::error::LibcontainerError::Other(msg) }
}

/// Runs the helper and returns its stdout; its stderr is the error message.
/// Only the spawn holds the fork lock (the helper's fork must not carry a
/// file the agent is writing); the helper's own work runs in its own
/// process, in parallel with anything else.
fn run_helper(helper: &Path, id: &str, args: &[&str]) -> Result<String, RuntimeError> {
    use std::process::Stdio;
    let child = {
        let _spawning = serialized();
        std::process::Command::new(helper)
            .arg("__libcontainer")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
    };
    let out = child
        .and_then(std::process::Child::wait_with_output)
        .map_err(|e| other(id, format!("cannot run the libcontainer helper {}: {e}", helper.display())))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(other(
            id,
            if err.is_empty() { format!("the libcontainer helper failed ({})", out.status) } else { err },
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// In a bundle: the container's stdin is `stdinOnce` (see [`super::stdio`]).
pub const STDIN_ONCE: &str = "stdin-once";

/// The helper side of `create` (in `kedge-agent __libcontainer create`).
/// A `stdin` FIFO in the bundle is the container's stdin (read-only with
/// [`STDIN_ONCE`], so it can end; read-write, never ending, without); a
/// `console.sock` there gets the master of the container's terminal.
pub fn helper_create(id: &str, bundle: &Path, state_root: &Path) -> Result<i32, RuntimeError> {
    let stdout = open_fifo_rw(&bundle.join("stdout"))?;
    let stderr = open_fifo_rw(&bundle.join("stderr"))?;
    let mut builder = ContainerBuilder::new(id.to_string(), SyscallType::default())
        .with_root_path(state_root)
        .map_err(lc(id))?
        .validate_id()
        .map_err(lc(id))?
        .with_stdout(stdout)
        .with_stderr(stderr);
    let stdin = bundle.join("stdin");
    if stdin.exists() {
        let once = bundle.join(STDIN_ONCE).exists();
        let f = OpenOptions::new().read(true).write(!once).open(&stdin).map_err(RuntimeError::io(&stdin))?;
        builder = builder.with_stdin(f);
    }
    let console = bundle.join("console.sock");
    let container = builder
        .with_console_socket(console.exists().then_some(console))
        .as_init(bundle)
        .with_systemd(false)
        .with_detach(true)
        .build()
        .map_err(lc(id))?;
    container.pid().map(|p| p.as_raw()).ok_or_else(|| other(id, "created container has no pid".into()))
}

pub fn start(id: &str, state_root: &Path) -> Result<(), RuntimeError> {
    let _one_at_a_time = serialized();
    let mut container = Container::load(state_root.join(id)).map_err(lc(id))?;
    container.start().map_err(lc(id))
}

/// Deletes libcontainer's state and the container's cgroup.
pub fn delete(id: &str, state_root: &Path) -> Result<(), RuntimeError> {
    let dir = state_root.join(id);
    if !dir.exists() {
        return Ok(());
    }
    let _one_at_a_time = serialized();
    let mut container = Container::load(dir).map_err(lc(id))?;
    container.delete(true).map_err(lc(id))
}

pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

/// Runs `args` inside a running container (in the helper) and waits up to
/// `timeout` (None = no limit) for it.
pub fn exec(
    helper: &Path,
    id: &str,
    state_root: &Path,
    scratch: &Path,
    args: Vec<String>,
    timeout: Option<Duration>,
) -> Result<ExecOutput, RuntimeError> {
    let tag = crate::fsutil::unique();
    let out_path = scratch.join(format!("exec-{tag}.out"));
    let err_path = scratch.join(format!("exec-{tag}.err"));
    let result = (|| {
        let timeout_ms = timeout.map_or(0, |t| t.as_millis().max(1)).to_string();
        let mut a = vec!["exec", "--id", id, "--root"];
        let (root, out, err) = (lossy(state_root), lossy(&out_path), lossy(&err_path));
        a.extend([
            root.as_str(),
            "--out",
            out.as_str(),
            "--err",
            err.as_str(),
            "--timeout-ms",
            timeout_ms.as_str(),
            "--",
        ]);
        a.extend(args.iter().map(String::as_str));
        let answer = run_helper(helper, id, &a)?;
        let exit_code = match answer.trim() {
            "timeout" => {
                return Err(RuntimeError::DeadlineExceeded(format!(
                    "command timed out after {:?}",
                    timeout.unwrap_or_default()
                )));
            }
            code => {
                code.parse::<i32>().map_err(|_| other(id, format!("the helper answered {code:?}, not an exit code")))?
            }
        };
        let read = |p: &Path| -> Result<Vec<u8>, RuntimeError> {
            let mut buf = Vec::new();
            File::open(p)
                .map_err(RuntimeError::io(p))?
                .take(MAX_EXEC_OUTPUT)
                .read_to_end(&mut buf)
                .map_err(RuntimeError::io(p))?;
            Ok(buf)
        };
        Ok(ExecOutput { stdout: read(&out_path)?, stderr: read(&err_path)?, exit_code })
    })();
    let _ = fs::remove_file(&out_path);
    let _ = fs::remove_file(&err_path);
    result
}

/// The helper side of `exec`: runs `args` in the container with output to
/// the two files; `Ok(None)` when `timeout` ran out (the process is killed).
pub fn helper_exec(
    id: &str,
    state_root: &Path,
    out_path: &Path,
    err_path: &Path,
    args: Vec<String>,
    timeout: Option<Duration>,
) -> Result<Option<i32>, RuntimeError> {
    let out = File::create(out_path).map_err(RuntimeError::io(out_path))?;
    let err = File::create(err_path).map_err(RuntimeError::io(err_path))?;
    let pid = ContainerBuilder::new(id.to_string(), SyscallType::default())
        .with_root_path(state_root)
        .map_err(lc(id))?
        .with_stdout(out)
        .with_stderr(err)
        .as_tenant()
        .with_container_args(args)
        .with_detach(true)
        .build();
    let pid = match pid {
        Ok(pid) => pid,
        Err(e) => {
            reap_children();
            return Err(lc(id)(e));
        }
    };
    let started = Instant::now();
    let ended = loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => break Ok(Some(code)),
            Ok(WaitStatus::Signaled(_, sig, _)) => break Ok(Some(128 + sig as i32)),
            Ok(_) => {}
            Err(e) => break Err(RuntimeError::sys("waitpid")(e)),
        }
        if timeout.is_some_and(|t| started.elapsed() > t) {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
            break Ok(None);
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    reap_children();
    ended
}

/// Where a streaming exec's helper writes how it ended: `exit N`, or
/// `error MESSAGE` when the process could not start.
pub fn exec_status(text: &str) -> Result<i32, String> {
    match text.trim().split_once(' ') {
        Some(("exit", n)) => n.trim().parse().map_err(|_| format!("the exec helper answered {text:?}")),
        Some(("error", m)) => Err(m.to_owned()),
        _ if text.trim().is_empty() => Err("the exec helper ended without telling how the process ended".into()),
        _ => Err(format!("the exec helper answered {text:?}")),
    }
}

/// The process a streaming exec runs: the container's own (its user,
/// working directory, environment and capabilities, as `kubectl exec`
/// gets on Kubernetes) with `args`, and a terminal when `tty` (TERM set to
/// `xterm` unless the container sets it, as containerd does).
fn exec_process(config: &serde_json::Value, args: &[String], tty: bool) -> serde_json::Value {
    let mut p = config.get("process").cloned().unwrap_or_else(|| serde_json::json!({}));
    p["args"] = serde_json::json!(args);
    p["terminal"] = serde_json::Value::Bool(tty);
    if let Some(o) = p.as_object_mut() {
        o.remove("consoleSize");
    }
    if p.get("cwd").and_then(|c| c.as_str()).is_none_or(str::is_empty) {
        p["cwd"] = "/".into();
    }
    if tty {
        let env = p["env"].as_array().cloned().unwrap_or_default();
        if !env.iter().any(|e| e.as_str().is_some_and(|e| e.starts_with("TERM="))) {
            let mut env = env;
            env.push("TERM=xterm".into());
            p["env"] = serde_json::Value::Array(env);
        }
    }
    p
}

/// The helper side of a streaming exec (`kubectl exec`): runs `args` in the
/// container with the helper's own stdin, stdout and stderr (or, with
/// `console_socket`, a terminal whose master goes to that socket), waits
/// for it and writes how it ended to `status` (see [`exec_status`]).
pub fn helper_exec_stream(
    id: &str,
    state_root: &Path,
    status: &Path,
    console_socket: Option<&Path>,
    args: Vec<String>,
) -> Result<(), RuntimeError> {
    let ended = match exec_stream(id, state_root, console_socket, &args) {
        Ok(code) => format!("exit {code}"),
        Err(e) => format!("error {e}"),
    };
    fs::write(status, ended).map_err(RuntimeError::io(status))
}

fn exec_stream(
    id: &str,
    state_root: &Path,
    console_socket: Option<&Path>,
    args: &[String],
) -> Result<i32, RuntimeError> {
    use std::os::fd::OwnedFd;
    let dir = state_root.join(id);
    let container = Container::load(dir.clone()).map_err(lc(id))?;
    let config_path = container.bundle().join("config.json");
    let config: serde_json::Value = fs::read(&config_path)
        .map_err(RuntimeError::io(&config_path))
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| other(id, format!("{}: {e}", config_path.display()))))?;
    let process_path = dir.join(format!("exec-{}.json", crate::fsutil::unique()));
    let process = exec_process(&config, args, console_socket.is_some());
    fs::write(&process_path, process.to_string()).map_err(RuntimeError::io(&process_path))?;
    let dup = |fd: std::os::fd::BorrowedFd<'_>| -> Result<OwnedFd, RuntimeError> {
        fd.try_clone_to_owned().map_err(RuntimeError::io(Path::new("/dev/stdin")))
    };
    let mut builder = ContainerBuilder::new(id.to_string(), SyscallType::default())
        .with_root_path(state_root)
        .map_err(lc(id))?
        .with_console_socket(console_socket);
    if console_socket.is_none() {
        use std::os::fd::AsFd;
        builder = builder
            .with_stdin(dup(std::io::stdin().as_fd())?)
            .with_stdout(dup(std::io::stdout().as_fd())?)
            .with_stderr(dup(std::io::stderr().as_fd())?);
    }
    let built = builder.as_tenant().with_process(Some(&process_path)).with_detach(true).build();
    let _ = fs::remove_file(&process_path);
    let pid = match built {
        Ok(pid) => pid,
        Err(e) => {
            reap_children();
            return Err(lc(id)(e));
        }
    };
    let code = loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => break Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => break Ok(128 + sig as i32),
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => break Err(RuntimeError::sys("waitpid")(e)),
        }
    };
    reap_children();
    code
}

/// Waits for every child the helper still has. A process that failed to
/// exec in the container (`/no/such/program`) is one: left behind, it
/// would be handed to the agent (the subreaper) as a zombie nobody reaps,
/// and the container's pid namespace could never finish dying — its init
/// would survive SIGKILL.
fn reap_children() {
    loop {
        match waitpid(Pid::from_raw(-1), None) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}

/// Sends `signal` to a container's init (which takes its pid namespace with it on SIGKILL).
pub fn signal(pid: i32, signal: Signal) -> Result<(), RuntimeError> {
    match kill(Pid::from_raw(pid), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(RuntimeError::sys("kill")(e)),
    }
}

/// Whether the container's memory cgroup recorded an OOM kill (v1 and v2).
pub fn oom_killed(cgroup_path: &str) -> bool {
    let rel = cgroup_path.trim_start_matches('/');
    for file in
        [format!("/sys/fs/cgroup/memory/{rel}/memory.oom_control"), format!("/sys/fs/cgroup/{rel}/memory.events")]
    {
        if let Ok(text) = fs::read_to_string(&file) {
            let killed = text
                .lines()
                .filter_map(|l| l.strip_prefix("oom_kill "))
                .any(|n| n.trim().parse::<u64>().is_ok_and(|n| n > 0));
            if killed {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_runs_the_containers_process_with_new_args() {
        let config = serde_json::json!({"process": {
            "args": ["nginx"], "cwd": "/srv", "user": {"uid": 1000, "gid": 1000},
            "env": ["PATH=/bin"], "terminal": false, "consoleSize": {"height": 1, "width": 1}
        }});
        let p = exec_process(&config, &["sh".into(), "-c".into(), "id".into()], false);
        assert_eq!(p["args"], serde_json::json!(["sh", "-c", "id"]));
        assert_eq!((p["cwd"].as_str(), p["user"]["uid"].as_u64()), (Some("/srv"), Some(1000)), "{p}");
        assert_eq!(p["env"], serde_json::json!(["PATH=/bin"]));
        assert!(p.get("consoleSize").is_none());
        let t = exec_process(&config, &["sh".into()], true);
        assert_eq!(t["terminal"], serde_json::Value::Bool(true));
        assert_eq!(t["env"], serde_json::json!(["PATH=/bin", "TERM=xterm"]));
        let own = serde_json::json!({"process": {"env": ["TERM=vt100"]}});
        assert_eq!(exec_process(&own, &["sh".into()], true)["env"], serde_json::json!(["TERM=vt100"]));
        assert_eq!(exec_process(&serde_json::json!({}), &["sh".into()], false)["cwd"], "/");
    }

    #[test]
    fn exec_status_tells_the_exit_code_or_why_it_did_not_start() {
        assert_eq!(exec_status("exit 3"), Ok(3));
        assert_eq!(exec_status("exit 0\n"), Ok(0));
        assert_eq!(exec_status("error no such file: nope"), Err("no such file: nope".into()));
        assert!(exec_status("").is_err_and(|e| e.contains("without telling")));
        assert!(exec_status("garbage").is_err());
    }
}
