//! Flashing: `images/provision.sh` writes a first-boot config onto the FAT
//! boot partition of a disk image, and the agent's first start on that boot
//! partition takes it in (moves it to its config path) and joins the fleet
//! with the node name, broker and credentials from it.
//!
//! The disk image is made here: an MBR partition table (sfdisk) with a FAT
//! boot partition holding a Pi-like `cmdline.txt` (mkfs.vfat, mtools) and a
//! Linux root partition, no real Raspberry Pi OS image.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use kedge_tests::agent::Agent;
use kedge_tests::{controller_and_kubectl, is_root, require, run_ok as run, wait_for, workspace_root};

/// Boot partition: 32 MiB from sector 8192 (4 MiB), as Raspberry Pi OS lays out.
const BOOT_START: u64 = 8192 * 512;
const BOOT_SIZE: u64 = 32 << 20;

fn tools_present() -> bool {
    ["sfdisk", "mkfs.vfat", "mcopy", "mtype", "mdir", "fusefat"].iter().all(|t| {
        Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// A 64 MiB disk image: MBR, FAT boot partition with cmdline.txt, Linux root.
fn make_pi_image(path: &Path) -> Result<()> {
    std::fs::File::create(path)?.set_len(64 << 20)?;
    let mut sfdisk = Command::new("sfdisk").args(["-q"]).arg(path).stdin(Stdio::piped()).spawn()?;
    {
        use std::io::Write;
        let mut stdin = sfdisk.stdin.take().context("sfdisk stdin")?;
        writeln!(stdin, "label: dos\nstart=8192, size=65536, type=c\nstart=73728, type=83")?;
    }
    ensure!(sfdisk.wait()?.success(), "sfdisk failed");
    run(Command::new("mkfs.vfat")
        .args(["--offset=8192", "-n", "BOOTFS"])
        .arg(path)
        .arg((BOOT_SIZE / 1024).to_string()))?;
    let cmdline = path.with_file_name("cmdline.txt");
    std::fs::write(&cmdline, "console=serial0,115200 root=PARTUUID=4e639091-02 rootfstype=ext4 rootwait\n")?;
    run(Command::new("mcopy").arg("-i").arg(fat(path)).arg(&cmdline).arg("::/cmdline.txt"))?;
    Ok(())
}

/// mtools' name for the boot partition inside the image.
fn fat(image: &Path) -> String {
    format!("{}@@{BOOT_START}", image.display())
}

fn provision(image: &Path, args: &[&str]) -> std::process::Output {
    Command::new("bash")
        .arg(workspace_root().join("images/provision.sh"))
        .arg(image)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running images/provision.sh")
}

/// Bad input to the recipe names the problem and leaves the image as it was.
#[test]
fn provision_rejects_bad_input_and_images_without_a_boot_partition() -> Result<()> {
    if !require(
        tools_present(),
        "sfdisk, mkfs.vfat, mtools and fusefat (apt-get install fdisk dosfstools mtools fusefat)",
    ) {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let image = dir.path().join("pi.img");
    make_pi_image(&image)?;

    let out = provision(&image, &["--node-name", "Pi_7", "--broker", "mqtt://10.0.0.1:1883"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("node name 'Pi_7' is not a DNS label"), "{out:?}");
    let out = provision(&image, &["--node-name", "pi-7", "--broker", "http://10.0.0.1"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--broker must be mqtt://HOST[:PORT]"), "{out:?}");
    let listing = run(Command::new("mdir").arg("-i").arg(fat(&image)).arg("::/"))?;
    assert!(!listing.contains("kedge-agent.yaml"), "nothing written on bad input:\n{listing}");

    // A disk whose only partition is not FAT.
    let linux_only = dir.path().join("linux.img");
    std::fs::File::create(&linux_only)?.set_len(16 << 20)?;
    let mut sfdisk = Command::new("sfdisk").arg("-q").arg(&linux_only).stdin(Stdio::piped()).spawn()?;
    {
        use std::io::Write;
        writeln!(sfdisk.stdin.take().context("stdin")?, "label: dos\nstart=2048, type=83")?;
    }
    ensure!(sfdisk.wait()?.success());
    let token = format!("kedge1.{}.abcdef.0123456789abcdef", "A".repeat(43));
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &token)?;
    let with_token = ["--node-name", "pi-7", "--broker", "mqtt://10.0.0.1:1883", "--token-file"];
    let out = provision(&image, &with_token[..4]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("a join token is required"), "{out:?}");
    std::fs::write(dir.path().join("bad-token"), "K10abc::server:secret")?;
    let bad = dir.path().join("bad-token").to_string_lossy().to_string();
    let out = provision(&image, &[&with_token[..], &[bad.as_str()]].concat());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not one kedge-controller token create prints"), "{out:?}");
    let listing = run(Command::new("mdir").arg("-i").arg(fat(&image)).arg("::/"))?;
    assert!(!listing.contains("kedge-agent.yaml"), "nothing written without a good token:\n{listing}");
    let good = token_file.to_string_lossy().to_string();
    let out = provision(&linux_only, &[&with_token[..], &[good.as_str()]].concat());
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no FAT boot partition"), "{out:?}");
    Ok(())
}

/// The boot partition mounted as a device mounts it; unmounted on drop.
struct Mounted {
    dir: PathBuf,
    /// The loop device under a FUSE mount, detached on drop.
    loop_dev: Option<String>,
    writable: bool,
}

impl Mounted {
    /// The kernel's vfat, read-write, as on a Pi. Where the kernel has no
    /// vfat (this CI machine's), FUSE's `fusefat` read-only on a loop device
    /// over the partition: the agent then meets a read-only boot partition.
    fn boot_partition(image: &Path, dir: &Path) -> Result<Mounted> {
        let vfat = std::fs::read_to_string("/proc/filesystems")?.lines().any(|l| l.trim_end().ends_with("\tvfat"));
        if vfat {
            run(Command::new("mount")
                .args(["-t", "vfat", "-o", &format!("loop,offset={BOOT_START},sizelimit={BOOT_SIZE}")])
                .arg(image)
                .arg(dir))?;
            return Ok(Mounted { dir: dir.to_path_buf(), loop_dev: None, writable: true });
        }
        eprintln!("note: this kernel has no vfat; mounting the boot partition read-only with fusefat");
        let dev = run(Command::new("losetup")
            .args(["-o", &BOOT_START.to_string(), "--sizelimit", &BOOT_SIZE.to_string(), "-f", "--show"])
            .arg(image))?
        .trim()
        .to_string();
        let mounted = Mounted { dir: dir.to_path_buf(), loop_dev: Some(dev.clone()), writable: false };
        run(Command::new("fusefat").args(["-o", "ro"]).arg(&dev).arg(dir))?;
        Ok(mounted)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        match &self.loop_dev {
            None => {
                let _ = Command::new("umount").arg(&self.dir).status();
            }
            Some(dev) => {
                let _ = Command::new("fusermount").arg("-u").arg(&self.dir).status();
                let _ = Command::new("losetup").args(["-d", dev]).status();
            }
        }
    }
}

/// The whole flashing path: provision the image, boot partition mounted where
/// the agent looks for it, the agent's first start imports the config and the
/// node joins the controller under the provisioned name.
#[test]
fn first_boot_reads_the_provisioned_config_from_the_image() -> Result<()> {
    if !require(
        tools_present(),
        "sfdisk, mkfs.vfat, mtools and fusefat (apt-get install fdisk dosfstools mtools fusefat)",
    ) || !require(is_root(), "root (loop-mounting the boot partition and running containers)")
    {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let Some((ctl, k)) = controller_and_kubectl(dir.path(), &[])? else { return Ok(()) };
    let broker = ctl.broker.clone().context("the controller runs the embedded broker")?;

    let image = dir.path().join("pi.img");
    make_pi_image(&image)?;
    let pw = dir.path().join("password");
    std::fs::write(&pw, "s3cr'et\n")?;
    let pw_path = pw.to_string_lossy().to_string();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{}\n", ctl.token()?))?;
    let token_path = token_file.to_string_lossy().to_string();
    let args = [
        "--node-name",
        "pi-flashed",
        "--broker",
        &broker,
        "--token-file",
        &token_path,
        "--username",
        "pi-flashed",
        "--password-file",
        &pw_path,
        "--set",
        "report-refresh=5m",
    ];
    let out = provision(&image, &args);
    assert!(out.status.success(), "provision.sh: {out:?}");
    // What a user checks before flashing: the file is on the boot partition.
    let written = run(Command::new("mtype").arg("-i").arg(fat(&image)).arg("::/kedge-agent.yaml"))?;
    assert!(
        written.contains("node-name: 'pi-flashed'") && written.contains(&format!("broker: '{broker}'")),
        "{written}"
    );
    assert!(written.contains("broker-password: 's3cr''et'"), "the password is quoted for YAML: {written}");
    assert!(written.contains("token: 'kedge1."), "the join token is there: {written}");
    // Idempotent: a second run leaves one file with the same content.
    assert!(provision(&image, &args).status.success());
    assert_eq!(run(Command::new("mtype").arg("-i").arg(fat(&image)).arg("::/kedge-agent.yaml"))?, written);

    // "Boot": the FAT partition mounted as the device would, /boot/firmware.
    let firmware = dir.path().join("boot/firmware");
    std::fs::create_dir_all(&firmware)?;
    let mounted = Mounted::boot_partition(&image, &firmware)?;
    assert_eq!(std::fs::read_to_string(firmware.join("kedge-agent.yaml"))?, written, "the mount shows the file");
    let etc = dir.path().join("etc/kedge/agent.yaml");
    let mut agent = Agent::new(
        &dir.path().join("agent"),
        &["--config", &etc.to_string_lossy(), "--boot-config", &firmware.join("kedge-agent.yaml").to_string_lossy()],
    )?;
    agent.start()?;

    // The node joins under the provisioned name, over the provisioned broker.
    wait_for("node pi-flashed Ready", Duration::from_secs(30), || {
        let node = k.run(&["get", "node", "pi-flashed", "-o", "json"])?;
        if !node.status.success() {
            return Ok(None);
        }
        let v: serde_json::Value = serde_json::from_slice(&node.stdout)?;
        let ready = v["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        Ok(ready.then_some(()))
    })
    .with_context(|| format!("agent log:\n{}", agent.log()))?;
    assert!(agent.log().contains("first-boot config imported"), "{}", agent.log());

    // The config is in /etc/kedge, private.
    assert_eq!(std::fs::read_to_string(&etc)?, written);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&etc)?.permissions().mode() & 0o777, 0o600);
    let writable = mounted.writable;
    if writable {
        // Moved: gone from the boot partition, in the image itself too.
        assert!(!firmware.join("kedge-agent.yaml").exists());
        drop(agent);
        drop(mounted);
        let listing = run(Command::new("mdir").arg("-i").arg(fat(&image)).arg("::/"))?;
        assert!(
            !listing.contains("kedge-agent.yaml") && listing.contains("cmdline"),
            "image after first boot:\n{listing}"
        );
    } else {
        // Read-only: it stays (with a warning), and a restart after the user
        // edited the config does not import it over the edit.
        assert!(agent.log().contains("stays on the read-only boot partition"), "{}", agent.log());
        agent.kill();
        std::fs::write(&etc, written.replace("report-refresh: '5m'", "report-refresh: '6m'"))?;
        agent.start()?;
        wait_for("the restarted agent to report", Duration::from_secs(20), || {
            Ok(agent.log().matches("fleet link started").count().ge(&2).then_some(()))
        })
        .with_context(|| agent.log())?;
        assert!(std::fs::read_to_string(&etc)?.contains("report-refresh: '6m'"), "the edit survives a restart");
        assert!(firmware.join("kedge-agent.yaml").exists());
    }
    Ok(())
}
