//! The Debian packages and the device install script, on this machine's
//! architecture (the arm64/armhf packages are built and checked the same way
//! by scripts/test-arm.sh from the cross builds).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;
use kedge_tests::{binary, require, run_ok as run, workspace_root};

/// This machine's Debian architecture, if packages are made for it
/// (otherwise the test skips loudly, or fails under CI).
fn host_deb_arch() -> Option<String> {
    let arch = Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .ok()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|a| ["amd64", "arm64", "armhf"].contains(&a.as_str()));
    require(arch.is_some(), "dpkg on amd64, arm64 or armhf");
    arch
}

/// Builds the package of `pkg` from the test build of its binary (uncompressed:
/// a debug binary is large and the content is what is checked here).
fn package(pkg: &str, arch: &str, out: &Path) -> Result<PathBuf> {
    let bin = binary(pkg)?;
    let deb = run(Command::new("bash")
        .arg(workspace_root().join("scripts/package-deb.sh"))
        .args([pkg, arch])
        .arg(&bin)
        .arg(out)
        .env("KEDGE_DEB_COMPRESSION", "none"))?;
    Ok(PathBuf::from(deb.trim()))
}

#[test]
fn packages_hold_binary_unit_and_config_for_their_architecture() -> Result<()> {
    let Some(arch) = host_deb_arch() else { return Ok(()) };
    let dir = tempfile::tempdir()?;
    for (pkg, config) in [("kedge-agent", "./etc/kedge/agent.yaml"), ("kedge-controller", "./etc/kedge/controller.env")]
    {
        let deb = package(pkg, &arch, dir.path())?;
        assert!(deb.ends_with(format!("{pkg}_{}_{arch}.deb", env!("CARGO_PKG_VERSION"))), "{}", deb.display());
        let contents = run(Command::new("dpkg-deb").arg("-c").arg(&deb))?;
        for want in [format!("./usr/bin/{pkg}"), format!("./lib/systemd/system/{pkg}.service"), config.to_string()] {
            assert!(contents.lines().any(|l| l.ends_with(&want)), "{want} missing from {}:\n{contents}", deb.display());
        }
        assert!(
            contents.lines().any(|l| l.starts_with("drwx------ root/root") && l.contains("./var/lib/kedge/")),
            "a private data dir:\n{contents}"
        );
        let info = run(Command::new("dpkg-deb").arg("-I").arg(&deb))?;
        assert!(info.contains(&format!(" Architecture: {arch}\n")), "{info}");
        assert!(info.contains(&format!(" Package: {pkg}\n")) && info.contains(" Depends: libc6"), "{info}");
        // The config is a conffile: an upgrade keeps the user's edits.
        let conffiles = run(Command::new("dpkg-deb").arg("-I").arg(&deb).arg("conffiles"))?;
        assert_eq!(conffiles.trim(), config.trim_start_matches('.'));
    }
    // The agent's config may hold a password: not world-readable.
    let deb = dir.path().join(format!("kedge-agent_{}_{arch}.deb", env!("CARGO_PKG_VERSION")));
    // Its Service rules need nft; removing it takes the pod network down.
    let info = run(Command::new("dpkg-deb").arg("-I").arg(&deb))?;
    assert!(info.lines().any(|l| l.starts_with(" Depends:") && l.contains("nftables")), "{info}");
    let prerm = run(Command::new("dpkg-deb").arg("-I").arg(&deb).arg("prerm"))?;
    assert!(prerm.contains("kedge-agent network cleanup"), "{prerm}");
    let contents = run(Command::new("dpkg-deb").arg("-c").arg(&deb))?;
    assert!(
        contents.lines().any(|l| l.starts_with("-rw------- root/root") && l.ends_with("./etc/kedge/agent.yaml")),
        "{contents}"
    );

    // A binary of another architecture is refused, naming both.
    let other = if arch == "arm64" { "amd64" } else { "arm64" };
    let out = Command::new("bash")
        .arg(workspace_root().join("scripts/package-deb.sh"))
        .args(["kedge-agent", other])
        .arg(binary("kedge-agent")?)
        .arg(dir.path())
        .output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("not {other}")), "{out:?}");
    Ok(())
}

#[test]
fn install_script_is_idempotent_and_keeps_other_settings() -> Result<()> {
    let Some(arch) = host_deb_arch() else { return Ok(()) };
    let dir = tempfile::tempdir()?;
    let deb = package("kedge-agent", &arch, dir.path())?;
    let root = dir.path().join("root");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "pa'ss\n")?;
    let token = format!("kedge1.{}.abcdef.0123456789abcdef", "A".repeat(43));
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{token}\n"))?;
    let install = |broker: &str, extra: &[&str]| -> Result<String> {
        run(Command::new("sh")
            .arg(workspace_root().join("deploy/install.sh"))
            .args(["--root"])
            .arg(&root)
            .args(["--deb"])
            .arg(&deb)
            .args(["--broker", broker, "--node-name", "pi-3", "--username", "pi-3", "--password-file"])
            .arg(&pw)
            .arg("--token-file")
            .arg(&token_file)
            .args(extra))
    };
    install("mqtt://10.0.0.9:1883", &[])?;
    let config = root.join("etc/kedge/agent.yaml");
    let first = std::fs::read_to_string(&config)?;
    let token_line = format!("token: '{token}'");
    for line in [
        "broker: 'mqtt://10.0.0.9:1883'",
        "node-name: 'pi-3'",
        "broker-username: 'pi-3'",
        "broker-password: 'pa''ss'",
        token_line.as_str(),
    ] {
        assert_eq!(first.lines().filter(|l| *l == line).count(), 1, "{line} once in:\n{first}");
    }
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&config)?.permissions().mode() & 0o777, 0o600);
    // The packaged binary is there and runs.
    let version = run(Command::new(root.join("usr/bin/kedge-agent")).arg("--version"))?;
    assert!(version.starts_with("kedge-agent "), "{version}");

    // Again with the same arguments: nothing changes.
    install("mqtt://10.0.0.9:1883", &[])?;
    assert_eq!(std::fs::read_to_string(&config)?, first);

    // A setting added by hand survives a new broker.
    std::fs::write(&config, format!("{first}pids-limit: 512\n"))?;
    install("mqtt://10.0.0.10:1883", &[])?;
    let third = std::fs::read_to_string(&config)?;
    assert!(third.contains("pids-limit: 512") && third.contains("broker: 'mqtt://10.0.0.10:1883'"), "{third}");
    assert!(!third.contains("10.0.0.9"), "{third}");

    // Over TLS: the broker's CA lands beside the config, which names it.
    let ca = dir.path().join("ca.crt");
    std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n")?;
    let ca_arg = ca.display().to_string();
    install("mqtts://10.0.0.10:8883", &["--broker-ca", &ca_arg])?;
    let fourth = std::fs::read_to_string(&config)?;
    assert!(
        fourth.contains("broker: 'mqtts://10.0.0.10:8883'") && fourth.contains("broker-ca: '/etc/kedge/broker-ca.crt'"),
        "{fourth}"
    );
    assert_eq!(std::fs::read(root.join("etc/kedge/broker-ca.crt"))?, std::fs::read(&ca)?);
    let out = Command::new("sh")
        .arg(workspace_root().join("deploy/install.sh"))
        .args(["--root"])
        .arg(&root)
        .args(["--broker", "mqtt://10.0.0.10:1883", "--node-name", "pi-3", "--broker-ca", &ca_arg])
        .output()?;
    assert!(String::from_utf8_lossy(&out.stderr).contains("--broker-ca is for TLS"), "{out:?}");
    assert_eq!(std::fs::read_to_string(&config)?, fourth);
    let third = fourth;

    // Bad input is refused before anything is touched.
    let out = Command::new("sh")
        .arg(workspace_root().join("deploy/install.sh"))
        .args(["--root"])
        .arg(&root)
        .args(["--broker", "10.0.0.9", "--node-name", "pi-3"])
        .output()?;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--broker mqtt://HOST[:PORT] or mqtts://HOST[:PORT] is required"),
        "{out:?}"
    );
    assert_eq!(std::fs::read_to_string(&config)?, third);
    Ok(())
}
