//! The agent's config file and its first-boot import.
//!
//! `/etc/kedge/agent.yaml` holds `run` flags by their long names, as K3s's
//! `config.yaml` does: `broker: mqtt://controller.lan:1883`, `node-name: pi-7`,
//! `insecure-registry: [a, b]`, `no-cri-socket: true`. Flags given on the
//! command line win over the file.
//!
//! On a freshly flashed device the file first sits on the FAT boot partition
//! (`kedge-agent.yaml`, written by `images/provision.sh` onto the image before
//! it boots). At start the agent moves it to the config path — written
//! atomically, mode 0600 since it may hold the broker password — and removes
//! it from the boot partition, which any user of the SD card can read. Where
//! the boot partition is read-only the file stays; a note of its digest next
//! to the config (`agent.yaml.boot-sha256`) keeps the same file from being
//! imported again over later edits of the config.

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};

/// Largest config file accepted (a config is a few hundred bytes).
pub const MAX_CONFIG_BYTES: u64 = 64 * 1024;

/// Keys the file may not set: they say where the file itself is.
const FORBIDDEN: &[&str] = &["config", "boot-config"];

/// The command-line arguments a config file stands for, in file order:
/// `--key=value` per scalar, one per list element, `--key` for `true`.
/// `known` is the set of long flag names the file may use; anything else is
/// an error naming the file and the key.
pub fn args_from_yaml(text: &str, origin: &Path, known: &[String]) -> Result<Vec<OsString>> {
    let doc: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(text).with_context(|| format!("{}: not valid YAML", origin.display()))?;
    let map = match doc {
        serde_yaml_ng::Value::Mapping(m) => m,
        serde_yaml_ng::Value::Null => return Ok(Vec::new()),
        _ => bail!("{}: must be a mapping of flag names to values (e.g. `broker: mqtt://host:1883`)", origin.display()),
    };
    let mut args = Vec::new();
    for (k, v) in map {
        let key = k.as_str().ok_or_else(|| anyhow!("{}: key {k:?} is not a string", origin.display()))?;
        if FORBIDDEN.contains(&key) || !known.iter().any(|n| n == key) {
            bail!("{}: unknown key `{key}` (keys are `kedge-agent run` flags without the dashes)", origin.display());
        }
        let values = match v {
            serde_yaml_ng::Value::Sequence(items) => items,
            other => vec![other],
        };
        for value in values {
            match value {
                serde_yaml_ng::Value::Bool(true) => args.push(OsString::from(format!("--{key}"))),
                serde_yaml_ng::Value::Bool(false) | serde_yaml_ng::Value::Null => {}
                serde_yaml_ng::Value::String(s) => args.push(OsString::from(format!("--{key}={s}"))),
                serde_yaml_ng::Value::Number(n) => args.push(OsString::from(format!("--{key}={n}"))),
                _ => bail!("{}: `{key}` must be a string, number, boolean or a list of them", origin.display()),
            }
        }
    }
    Ok(args)
}

/// Reads a config file, bounded in size.
pub fn read_bounded(path: &Path) -> Result<String> {
    let meta = fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.len() > MAX_CONFIG_BYTES {
        bail!("{}: {} bytes, more than the {} a config may have", path.display(), meta.len(), MAX_CONFIG_BYTES);
    }
    fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// What the first-boot step did.
#[derive(Debug, PartialEq, Eq)]
pub enum Imported {
    /// No boot config present.
    Nothing,
    /// `from` was moved to the config path.
    Moved { from: PathBuf },
    /// `from` was copied to the config path but could not be removed (a
    /// read-only boot partition); it is remembered as imported.
    Copied { from: PathBuf, reason: String },
    /// `from` is the file imported before (it could not be removed then).
    AlreadyImported { from: PathBuf },
    /// `from` was not a valid config; it was renamed to `renamed` (when the
    /// boot partition is writable) and the existing config, if any, was left
    /// as it was.
    Rejected { from: PathBuf, renamed: Option<PathBuf>, reason: String },
}

/// The first-boot step: the first of `boot_files` that exists replaces
/// `config` (atomically, mode 0600) and is removed from the boot partition.
/// A boot config that does not validate is renamed to `*.invalid` so it is
/// not retried on every start, and the stored config is kept.
pub fn import_boot_config(boot_files: &[PathBuf], config: &Path, known: &[String]) -> Result<Imported> {
    let Some(from) = boot_files.iter().find(|p| p.is_file()) else {
        return Ok(Imported::Nothing);
    };
    let checked = read_bounded(from).and_then(|text| args_from_yaml(&text, from, known).map(|_| text));
    let text = match checked {
        Ok(text) => text,
        Err(e) => {
            let mut renamed = from.clone().into_os_string();
            renamed.push(".invalid");
            let renamed = PathBuf::from(renamed);
            let renamed = fs::rename(from, &renamed).is_ok().then_some(renamed);
            return Ok(Imported::Rejected { from: from.clone(), renamed, reason: format!("{e:#}") });
        }
    };
    let digest = sha256_hex(text.as_bytes());
    let mut marker = config.to_path_buf().into_os_string();
    marker.push(".boot-sha256");
    let marker = PathBuf::from(marker);
    if fs::read_to_string(&marker).is_ok_and(|m| m.trim() == digest) {
        return Ok(Imported::AlreadyImported { from: from.clone() });
    }
    write_private(config, text.as_bytes())?;
    if let Err(e) = fs::remove_file(from) {
        write_private(&marker, digest.as_bytes())?;
        return Ok(Imported::Copied { from: from.clone(), reason: format!("cannot remove it: {e}") });
    }
    if let Some(dir) = from.parent() {
        // FAT has no directory fsync on some kernels; the removal is best effort durable.
        let _ = fs::File::open(dir).and_then(|d| d.sync_all());
    }
    let _ = fs::remove_file(&marker);
    Ok(Imported::Moved { from: from.clone() })
}

fn sha256_hex(data: &[u8]) -> String {
    crate::images::hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

/// Writes `path` atomically (temp file, fsync, rename, fsync of the folder)
/// with mode 0600, creating its folder.
fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tmp = path.to_path_buf().into_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(data).and_then(|_| f.sync_all()).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> Vec<String> {
        ["broker", "node-name", "insecure-registry", "no-cri-socket", "pids-limit", "broker-password"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    #[test]
    fn yaml_becomes_flags_in_file_order() {
        let text = "broker: mqtt://ctl.lan:1883\nnode-name: pi-7\ninsecure-registry: [a:5000, b:5000]\n\
                    no-cri-socket: true\npids-limit: 512\nbroker-password: 'p: w'\n";
        let args = args_from_yaml(text, Path::new("agent.yaml"), &known()).expect("valid");
        let args: Vec<_> = args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(
            args,
            [
                "--broker=mqtt://ctl.lan:1883",
                "--node-name=pi-7",
                "--insecure-registry=a:5000",
                "--insecure-registry=b:5000",
                "--no-cri-socket",
                "--pids-limit=512",
                "--broker-password=p: w",
            ]
        );
        assert!(args_from_yaml("", Path::new("x"), &known()).expect("empty").is_empty());
        assert!(args_from_yaml("no-cri-socket: false", Path::new("x"), &known()).expect("false").is_empty());
    }

    #[test]
    fn bad_files_name_the_problem() {
        let err = |t: &str| {
            format!("{:#}", args_from_yaml(t, Path::new("/etc/kedge/agent.yaml"), &known()).expect_err("rejected"))
        };
        assert!(err("brokr: x").contains("/etc/kedge/agent.yaml: unknown key `brokr`"));
        assert!(err("config: /x").contains("unknown key `config`"));
        assert!(err("- a\n- b").contains("must be a mapping"));
        assert!(err("broker: {a: b}").contains("`broker` must be a string"));
        assert!(err("broker: [").contains("not valid YAML"));
    }

    #[test]
    fn first_boot_moves_the_file_and_keeps_the_old_config_when_invalid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let boot = dir.path().join("boot/kedge-agent.yaml");
        let config = dir.path().join("etc/kedge/agent.yaml");
        let boots = vec![dir.path().join("boot/firmware/kedge-agent.yaml"), boot.clone()];
        fs::create_dir_all(boot.parent().expect("parent")).expect("mkdir");

        assert_eq!(import_boot_config(&boots, &config, &known()).expect("nothing"), Imported::Nothing);

        fs::write(&boot, "node-name: pi-7\nbroker: mqtt://10.0.0.1:1883\n").expect("write");
        assert_eq!(
            import_boot_config(&boots, &config, &known()).expect("moved"),
            Imported::Moved { from: boot.clone() }
        );
        assert!(!boot.exists(), "removed from the boot partition");
        assert_eq!(fs::read_to_string(&config).expect("config"), "node-name: pi-7\nbroker: mqtt://10.0.0.1:1883\n");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(&config).expect("meta").permissions().mode() & 0o777, 0o600);

        fs::write(&boot, "nodename: typo\n").expect("write");
        match import_boot_config(&boots, &config, &known()).expect("rejected") {
            Imported::Rejected { reason, renamed, .. } => {
                assert!(reason.contains("unknown key `nodename`"), "{reason}");
                let renamed = renamed.expect("renamed on a writable partition");
                assert!(renamed.ends_with("kedge-agent.yaml.invalid") && renamed.exists());
            }
            other => panic!("expected Rejected, got {other:?}"),
        }
        assert!(!boot.exists());
        assert!(fs::read_to_string(&config).expect("config").contains("pi-7"), "the stored config is kept");
    }

    #[test]
    fn a_read_only_boot_partition_is_imported_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let boot_dir = dir.path().join("boot");
        let boot = boot_dir.join("kedge-agent.yaml");
        let config = dir.path().join("etc/agent.yaml");
        fs::create_dir_all(&boot_dir).expect("mkdir");
        fs::write(&boot, "node-name: pi-8\n").expect("write");
        // A folder whose entries cannot be removed stands in for a read-only mount.
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&boot_dir, fs::Permissions::from_mode(0o555)).expect("chmod");
        if fs::File::create(boot_dir.join("probe")).is_ok() {
            // Root ignores folder permissions: nothing to learn here.
            fs::set_permissions(&boot_dir, fs::Permissions::from_mode(0o755)).expect("chmod");
            eprintln!("note: running as root, the read-only case is covered by tests/tests/provision.rs");
            return;
        }
        let boots = vec![boot.clone()];
        match import_boot_config(&boots, &config, &known()).expect("copied") {
            Imported::Copied { reason, .. } => assert!(reason.contains("cannot remove"), "{reason}"),
            other => panic!("expected Copied, got {other:?}"),
        }
        // The user edits the config; the next start does not undo that.
        fs::write(&config, "node-name: pi-8\nbroker: mqtt://10.0.0.2:1883\n").expect("edit");
        assert_eq!(
            import_boot_config(&boots, &config, &known()).expect("again"),
            Imported::AlreadyImported { from: boot.clone() }
        );
        assert!(fs::read_to_string(&config).expect("config").contains("10.0.0.2"));
        fs::set_permissions(&boot_dir, fs::Permissions::from_mode(0o755)).expect("chmod");
    }
}
