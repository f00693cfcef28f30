//! The API is HTTPS with a bearer token on every address, loopback
//! included; the kubeconfig the controller writes carries both (0600), and
//! they survive a restart.

use anyhow::Result;
use kedge_tests::{Controller, Kubectl, kubectl_path, require};

#[test]
fn tls_and_token_guard_the_api() -> Result<()> {
    let Some(bin) = kubectl_path() else {
        require(false, "kubectl is not installed");
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");

    // A wildcard listen is not loopback: TLS and the token are switched on.
    // (The test client still connects through 127.0.0.1.)
    let mut ctl = Controller::start_on(&data, "0.0.0.0:0")?;
    let kubeconfig = std::fs::read_to_string(ctl.kubeconfig())?;
    assert!(kubeconfig.contains("server: https://127.0.0.1:"), "{kubeconfig}");
    assert!(kubeconfig.contains("certificate-authority-data:") && kubeconfig.contains("token:"), "{kubeconfig}");
    let k = Kubectl { bin: bin.clone(), kubeconfig: ctl.kubeconfig(), cache: dir.path().join("cache") };
    assert!(k.ok(&["get", "ns"])?.contains("kube-system"));

    // The fleet signing key sits beside the CA, root's alone; its public
    // half is there to pin.
    use std::os::unix::fs::PermissionsExt;
    let key = std::fs::metadata(data.join("tls/signing.key"))?;
    assert_eq!(key.permissions().mode() & 0o777, 0o600);
    let public = std::fs::read_to_string(data.join("tls/signing.pub"))?;
    assert!(public.trim().parse::<kedge_common::sign::PublicKey>().is_ok(), "{public:?}");

    // A wrong token: 401.
    let no_token: String = kubeconfig
        .lines()
        .map(|l| if l.contains("token:") { "    token: not-the-token".to_owned() } else { l.to_owned() })
        .collect::<Vec<_>>()
        .join("\n");
    let anon_path = dir.path().join("anon.yaml");
    std::fs::write(&anon_path, no_token)?;
    let anon = Kubectl { bin: bin.clone(), kubeconfig: anon_path, cache: dir.path().join("cache2") };
    let err = anon.fails(&["get", "ns"])?;
    assert!(err.contains("Unauthorized") || err.contains("provide credentials"), "{err}");

    // Without the CA: the certificate is not trusted.
    let no_ca: String =
        kubeconfig.lines().filter(|l| !l.contains("certificate-authority-data")).collect::<Vec<_>>().join("\n");
    let untrusted_path = dir.path().join("untrusted.yaml");
    std::fs::write(&untrusted_path, no_ca)?;
    let untrusted = Kubectl { bin: bin.clone(), kubeconfig: untrusted_path, cache: dir.path().join("cache3") };
    let err = untrusted.fails(&["get", "ns"])?;
    assert!(err.contains("certificate"), "{err}");

    // Restart on the same port and data dir, on loopback (HTTPS there too,
    // by default): the old kubeconfig (same CA, same token) keeps working.
    let saved = dir.path().join("saved.yaml");
    std::fs::copy(ctl.kubeconfig(), &saved)?;
    let port = ctl.addr.rsplit(':').next().unwrap_or_default().to_owned();
    ctl.terminate()?;
    drop(ctl);
    let _ctl = Controller::start_with(&data, &format!("127.0.0.1:{port}"), &[])?;
    let again = Kubectl { bin, kubeconfig: saved, cache: dir.path().join("cache4") };
    assert!(again.ok(&["get", "ns"])?.contains("default"));
    Ok(())
}

/// The serving certificate as `openssl` sees it: on a wildcard listen it
/// names the host's real addresses (here a lab machine's LAN address), and
/// it is valid for a year from about now — not from 1975 to 4096.
#[test]
fn the_serving_certificate_names_the_host_addresses_and_lasts_a_year() -> Result<()> {
    if !require(kedge_tests::is_root(), "root (a network namespace for the controller)") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let mut lab = kedge_tests::netlab::Lab::new()?;
    let server = lab.machine("server")?;
    let _ctl = Controller::start_in(Some(&server.netns_path()), &dir.path().join("data"), "0.0.0.0:6443", &[])?;
    let shown = kedge_tests::wait_for("the certificate", std::time::Duration::from_secs(20), || {
        let out = server.run(
            "sh",
            &["-c", "openssl s_client -connect 127.0.0.1:6443 </dev/null 2>/dev/null | openssl x509 -noout -dates -ext subjectAltName"],
        );
        Ok(out.ok().filter(|o| o.contains("notAfter")))
    })?;
    let lan = server.ip().to_string();
    anyhow::ensure!(shown.contains(&format!("IP Address:{lan}")), "the LAN address {lan} is named: {shown}");
    anyhow::ensure!(shown.contains("IP Address:127.0.0.1") && shown.contains("DNS:localhost"), "{shown}");
    let date = |key: &str| -> Result<jiff::Timestamp> {
        let line = shown.lines().find_map(|l| l.strip_prefix(key)).unwrap_or_default();
        // openssl: "Dec  6 00:00:00 2027 GMT"
        let parsed = jiff::fmt::strtime::parse("%b %e %H:%M:%S %Y GMT", line.trim())?;
        Ok(parsed.to_datetime()?.to_zoned(jiff::tz::TimeZone::UTC)?.timestamp())
    };
    let now = jiff::Timestamp::now().as_second();
    let (from, until) = (date("notBefore=")?.as_second(), date("notAfter=")?.as_second());
    anyhow::ensure!(now - from <= 2 * 86_400 && from <= now, "valid from about now: {shown}");
    let days = (until - now) / 86_400;
    anyhow::ensure!((364..=366).contains(&days), "valid for a year ({days} days): {shown}");
    Ok(())
}

/// Loopback is not a trust boundary: any local user reaches it. As
/// `nobody`, with the real kubectl and curl: the kubeconfig cannot be read,
/// and the API refuses to create a pod (the hostPath one that would own the
/// host) without its credentials — and the pod does not exist after.
#[test]
fn a_local_user_without_the_kubeconfig_can_do_nothing() -> Result<()> {
    let Some(bin) = kubectl_path() else {
        require(false, "kubectl is not installed");
        return Ok(());
    };
    if !require(kedge_tests::is_root(), "root (to run clients as nobody)") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let ctl = Controller::start_on(&data, "127.0.0.1:0")?;
    assert!(ctl.tls, "HTTPS on loopback by default");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(ctl.kubeconfig())?.permissions().mode() & 0o777, 0o600);
    // A world-readable place for the manifest and nobody's kubectl cache.
    let public = tempfile::Builder::new().prefix("kedge-nobody").tempdir_in("/tmp")?;
    std::fs::set_permissions(public.path(), std::fs::Permissions::from_mode(0o777))?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let pod = public.path().join("pod.yaml");
    std::fs::write(
        &pod,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: owned, namespace: default}\nspec:\n  containers: [{name: c, image: busybox, volumeMounts: [{name: host, mountPath: /host}]}]\n  volumes: [{name: host, hostPath: {path: /}}]\n",
    )?;
    std::fs::set_permissions(&pod, std::fs::Permissions::from_mode(0o644))?;
    let as_nobody = |program: &std::path::Path, args: &[&str]| -> Result<std::process::Output> {
        Ok(std::process::Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .arg(program)
            .args(args)
            .env("HOME", public.path())
            .output()?)
    };
    let read = as_nobody(std::path::Path::new("/bin/cat"), &[&ctl.kubeconfig().to_string_lossy()])?;
    assert!(!read.status.success(), "nobody reads the kubeconfig: {read:?}");
    let server = format!("https://{}", ctl.addr);
    let cache = public.path().join("cache");
    let out = as_nobody(
        &bin,
        &[
            "--server",
            &server,
            "--insecure-skip-tls-verify",
            // A guessed token (with none at all, kubectl asks for a user name).
            "--token",
            "guessed",
            "--cache-dir",
            &cache.to_string_lossy(),
            "create",
            "-f",
            &pod.to_string_lossy(),
        ],
    )?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && (err.contains("Unauthorized") || err.contains("provide credentials")),
        "kubectl as nobody: {out:?}"
    );
    let curl = as_nobody(
        std::path::Path::new("/usr/bin/curl"),
        &[
            "-sk",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/yaml",
            "--data-binary",
            &format!("@{}", pod.display()),
            &format!("{server}/api/v1/namespaces/default/pods"),
        ],
    )?;
    assert_eq!(String::from_utf8_lossy(&curl.stdout), "401", "curl as nobody: {curl:?}");
    let plain = as_nobody(
        std::path::Path::new("/usr/bin/curl"),
        &["-s", "-o", "/dev/null", "-w", "%{http_code}", &format!("http://{}/api/v1/pods", ctl.addr)],
    )?;
    assert_ne!(String::from_utf8_lossy(&plain.stdout), "200", "no plain HTTP answers: {plain:?}");
    let k = Kubectl { bin, kubeconfig: ctl.kubeconfig(), cache: dir.path().join("cache") };
    assert!(k.fails(&["get", "pod", "owned"])?.contains("NotFound"), "nothing was created");
    Ok(())
}

/// The embedded broker off loopback speaks TLS only: plain MQTT on a
/// non-loopback address is refused at start, naming the way; the TLS
/// listener shows a certificate of the cluster CA (`DATA/tls/ca.crt`) that
/// `mosquitto_sub` checks, turns away plain MQTT and a client that trusts
/// another CA, and a client that connects and says nothing holds up no one.
#[test]
fn the_broker_off_loopback_speaks_tls_only() -> Result<()> {
    use std::process::Command;
    use std::time::Duration;
    if !require(
        Command::new("sh").args(["-c", "command -v mosquitto_sub"]).output().is_ok_and(|o| o.status.success()),
        "mosquitto_sub (Debian's mosquitto-clients)",
    ) {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let refused = Command::new(kedge_tests::binary("kedge-controller")?)
        .arg("--data-dir")
        .arg(dir.path().join("refused"))
        .args(["--listen", "127.0.0.1:0", "--mqtt-listen", "0.0.0.0:0"])
        .output()?;
    let err = String::from_utf8_lossy(&refused.stderr);
    anyhow::ensure!(
        !refused.status.success() && err.contains("loopback only") && err.contains("--mqtts-listen"),
        "plain MQTT off loopback is refused, naming the way: {refused:?}"
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let tls = format!("127.0.0.1:{port}");
    let ctl = Controller::start_with(&dir.path().join("data"), "127.0.0.1:0", &["--mqtts-listen", &tls])?;
    anyhow::ensure!(
        ctl.broker.as_deref() == Some(format!("mqtts://{tls}").as_str()),
        "agents are told: {:?}",
        ctl.broker
    );
    let ca = ctl.data_dir.join("tls/ca.crt").display().to_string();
    // Holds a connection open without a word, for the whole test.
    let _silent = std::net::TcpStream::connect(&tls)?;
    let p = port.to_string();
    let sub = |extra: &[&str]| -> Result<std::process::Output> {
        Ok(Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &p, "-t", "kedge/v1/cluster/network", "-C", "1", "-W", "5"])
            .args(extra)
            .output()?)
    };
    let read = kedge_tests::wait_for("the network table over TLS", Duration::from_secs(20), || {
        let out = sub(&["--cafile", &ca])?;
        Ok((out.status.success() && !out.stdout.is_empty()).then_some(out))
    })?;
    anyhow::ensure!(!read.stdout.is_empty());
    let plain = sub(&[])?;
    anyhow::ensure!(!plain.status.success() && plain.stdout.is_empty(), "plain MQTT on the TLS port: {plain:?}");
    // Another CA: the system's roots.
    let other = sub(&["--capath", "/etc/ssl/certs"])?;
    anyhow::ensure!(!other.status.success() && other.stdout.is_empty(), "a client trusting another CA: {other:?}");
    Ok(())
}
