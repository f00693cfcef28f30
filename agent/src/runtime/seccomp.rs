//! The default seccomp profile for pod containers: moby's (Docker's) default profile, expressed as an
//! OCI [`LinuxSeccomp`] for libcontainer.
//!
//! Source of truth: `moby/profiles`, files `seccomp/default_linux.go` and the generated `seccomp/default.json`, at
//! commit `02e898b137aed1024e232d59bcb05e6179b72177` (newer than the `seccomp/v0.2.1` tag: it replaces the
//! `socket` rules with an address-family allow-list and cites kernels up to 7.2). containerd's
//! `contrib/seccomp/seccomp_default.go` is a port of the same profile (it lags behind moby's).
//!
//! What is transcribed:
//! - default action `SCMP_ACT_ERRNO` with `defaultErrnoRet` 1 (EPERM);
//! - the architecture map entry for the build target (x86_64, aarch64, arm);
//! - the unconditional allow list ([`ALLOWED`]), in source order;
//! - `socket(2)` allowed only for the address families moby allows (AF_ALG, AF_VSOCK and removed families are not);
//! - the `personality(2)` values, the arch-specific groups for our targets, the capability-gated groups
//!   (`includes.caps`) and the rules that apply only when CAP_SYS_ADMIN is absent (`excludes.caps`).
//!
//! What is left out: the rules for ppc64le, s390/s390x (including the s390 `clone` variant) and riscv64. The
//! `ptrace`/`process_vm_readv`/`process_vm_writev` rule is gated on `minKernel: 4.8` upstream; it is included
//! unconditionally here because we do not support kernels older than 4.8 (before 4.8 `ptrace` could bypass seccomp).
//!
//! Names the running kernel or libseccomp does not know (for example `cachestat` before Linux 6.5, or the 32-bit
//! `*_time64` calls on a 64-bit-only build) are harmless: libcontainer (with its `libseccomp` feature) resolves each
//! name for the running architecture and skips unknown ones with a warning, as runc does.
//!
//! Capability gating follows moby and containerd: the capabilities to pass are the container's *bounding* set.
//!
//! [`DEFAULT_CAPS`] (containerd's default capability set) lives here for now; it belongs in a `caps.rs` once the
//! capability handling grows one.

use libcontainer::oci_spec::OciSpecError;
use libcontainer::oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};

mod syscalls;
use syscalls::{
    ALLOWED, ALLOWED_SINCE_4_8, ALLOWED_WITH_CAP, PERSONALITIES, SOCKET_DOMAINS, SOCKET_DOMAINS_BELOW, allowed_for_arch,
};

/// containerd's default capability set for a container (`defaultUnixCaps` in containerd's `oci/spec.go`), in the
/// same order. Kubernetes' `RuntimeDefault` containers start from this set.
// TODO: move to `caps.rs` with the rest of the capability handling.
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// errno for the default action (moby's `defaultErrnoRet`).
const EPERM: u32 = 1;
/// errno returned for `clone3(2)` without CAP_SYS_ADMIN, so that libc falls back to `clone(2)` (whose flags seccomp
/// can inspect). 38 is ENOSYS on x86, x86_64, arm and aarch64 (moby hard-codes the same number in `default.json`).
const ENOSYS: u32 = 38;

// Namespace flags of clone(2), from <linux/sched.h>.
const CLONE_NEWNS: u64 = 0x0002_0000;
const CLONE_NEWCGROUP: u64 = 0x0200_0000;
const CLONE_NEWUTS: u64 = 0x0400_0000;
const CLONE_NEWIPC: u64 = 0x0800_0000;
const CLONE_NEWUSER: u64 = 0x1000_0000;
const CLONE_NEWPID: u64 = 0x2000_0000;
const CLONE_NEWNET: u64 = 0x4000_0000;

/// Without CAP_SYS_ADMIN, `clone(2)` is allowed only when none of these bits is set (2114060288 in moby's JSON).
const CLONE_NAMESPACE_FLAGS: u64 =
    CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWCGROUP;

/// Seccomp architectures for the build target: the native one plus the sub-architectures moby's `archMap` lists.
fn architectures() -> Vec<Arch> {
    if cfg!(target_arch = "x86_64") {
        vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
    } else if cfg!(target_arch = "aarch64") {
        vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]
    } else if cfg!(target_arch = "arm") {
        vec![Arch::ScmpArchArm]
    } else {
        // Other targets are not supported; an empty list filters the native architecture only.
        Vec::new()
    }
}

/// Returns moby's default seccomp profile for a container whose bounding capability set is `caps`.
///
/// Capability names are matched ASCII-case-insensitively, with or without the `CAP_` prefix (`"CAP_SYS_ADMIN"` and
/// Kubernetes' `"SYS_ADMIN"` both count).
///
/// The builders only fail on uninitialised fields and every field here has a default, so in practice this does not
/// return an error; the `Result` keeps the builders' contract instead of unwrapping.
pub fn default_profile<S: AsRef<str>>(caps: &[S]) -> Result<LinuxSeccomp, OciSpecError> {
    let has_cap = |wanted: &str| caps.iter().any(|cap| same_cap(cap.as_ref(), wanted));

    let mut syscalls = vec![allow(ALLOWED)?, allow(ALLOWED_SINCE_4_8)?];
    syscalls.push(allow_if("socket", arg(0, LinuxSeccompOperator::ScmpCmpLt, SOCKET_DOMAINS_BELOW)?)?);
    for &domain in SOCKET_DOMAINS {
        syscalls.push(allow_if("socket", arg(0, LinuxSeccompOperator::ScmpCmpEq, domain)?)?);
    }
    for &persona in PERSONALITIES {
        syscalls.push(allow_if("personality", arg(0, LinuxSeccompOperator::ScmpCmpEq, persona)?)?);
    }
    let arch_specific = allowed_for_arch();
    if !arch_specific.is_empty() {
        syscalls.push(allow(arch_specific)?);
    }
    for &(cap, names) in ALLOWED_WITH_CAP {
        if has_cap(cap) {
            syscalls.push(allow(names)?);
        }
    }
    // moby's `excludes.caps` rules: with CAP_SYS_ADMIN, clone and clone3 are allowed outright (above).
    if !has_cap("CAP_SYS_ADMIN") {
        syscalls.push(allow_if("clone", masked_eq_zero(0, CLONE_NAMESPACE_FLAGS)?)?);
        syscalls.push(rule(&["clone3"], LinuxSeccompAction::ScmpActErrno).errno_ret(ENOSYS).build()?);
    }

    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(EPERM)
        .architectures(architectures())
        .syscalls(syscalls)
        .build()
}

/// Whether capability name `cap` (as given by the caller) names `wanted` (a `CAP_*` constant).
fn same_cap(cap: &str, wanted: &str) -> bool {
    fn bare(name: &str) -> &str {
        let name = name.trim();
        match (name.get(..4), name.get(4..)) {
            (Some(prefix), Some(rest)) if prefix.eq_ignore_ascii_case("CAP_") => rest,
            _ => name,
        }
    }
    bare(cap).eq_ignore_ascii_case(bare(wanted))
}

fn rule(names: &[&str], action: LinuxSeccompAction) -> LinuxSyscallBuilder {
    LinuxSyscallBuilder::default()
        .names(names.iter().map(|&name| name.to_owned()).collect::<Vec<String>>())
        .action(action)
}

fn allow(names: &[&str]) -> Result<LinuxSyscall, OciSpecError> {
    rule(names, LinuxSeccompAction::ScmpActAllow).build()
}

fn allow_if(name: &str, condition: LinuxSeccompArg) -> Result<LinuxSyscall, OciSpecError> {
    rule(&[name], LinuxSeccompAction::ScmpActAllow).args(vec![condition]).build()
}

fn arg(index: usize, op: LinuxSeccompOperator, value: u64) -> Result<LinuxSeccompArg, OciSpecError> {
    LinuxSeccompArgBuilder::default().index(index).op(op).value(value).build()
}

/// The condition `args[index] & mask == 0`, encoded for libcontainer 0.7.
///
/// runc and crun read SCMP_CMP_MASKED_EQ as "`value` is the mask, `valueTwo` the expected result", which is how moby
/// writes its clone rule (`value` 2114060288, no `valueTwo`). libcontainer 0.7 reads it the other way round: its
/// `translate_op` makes `value_two` the mask and compares against `value` (`ScmpArgCompare::new(index,
/// MaskedEqual(value_two), value)`). Written moby's way the rule would become `arg & 0 == 2114060288`, which never
/// matches, so every fork and thread creation would fail with EPERM. Hence mask in `value_two`, expected 0 in
/// `value`. If libcontainer starts following runc, or this profile is handed to another runtime, swap them back; both
/// mistakes fail closed (clone denied), and the `clone_rule_*` tests pin the encoding.
fn masked_eq_zero(index: usize, mask: u64) -> Result<LinuxSeccompArg, OciSpecError> {
    LinuxSeccompArgBuilder::default()
        .index(index)
        .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
        .value(0_u64)
        .value_two(mask)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(caps: &[&str]) -> LinuxSeccomp {
        default_profile(caps).expect("default profile builds")
    }

    fn default_caps_plus(extra: &str) -> Vec<&str> {
        let mut caps = DEFAULT_CAPS.to_vec();
        caps.push(extra);
        caps
    }

    fn rules_for<'a>(profile: &'a LinuxSeccomp, name: &str) -> Vec<&'a LinuxSyscall> {
        profile.syscalls().iter().flatten().filter(|rule| rule.names().iter().any(|n| n == name)).collect()
    }

    fn allowed_unconditionally(profile: &LinuxSeccomp, name: &str) -> bool {
        rules_for(profile, name).iter().any(|rule| {
            rule.action() == LinuxSeccompAction::ScmpActAllow && rule.args().as_ref().is_none_or(Vec::is_empty)
        })
    }

    /// Evaluates one condition the way libcontainer 0.7 hands it to libseccomp (see [`masked_eq_zero`]).
    fn libcontainer_matches(cond: &LinuxSeccompArg, value: u64) -> bool {
        match cond.op() {
            LinuxSeccompOperator::ScmpCmpNe => value != cond.value(),
            LinuxSeccompOperator::ScmpCmpLt => value < cond.value(),
            LinuxSeccompOperator::ScmpCmpLe => value <= cond.value(),
            LinuxSeccompOperator::ScmpCmpEq => value == cond.value(),
            LinuxSeccompOperator::ScmpCmpGe => value >= cond.value(),
            LinuxSeccompOperator::ScmpCmpGt => value > cond.value(),
            LinuxSeccompOperator::ScmpCmpMaskedEq => (value & cond.value_two().unwrap_or(0)) == cond.value(),
        }
    }

    /// Whether some allow rule for `name` accepts a call whose first argument is `arg0`.
    fn allows_arg0(profile: &LinuxSeccomp, name: &str, arg0: u64) -> bool {
        rules_for(profile, name)
            .iter()
            .filter(|rule| rule.action() == LinuxSeccompAction::ScmpActAllow)
            .any(|rule| rule.args().iter().flatten().all(|cond| cond.index() != 0 || libcontainer_matches(cond, arg0)))
    }

    #[test]
    fn default_action_is_errno_eperm() {
        let profile = profile(DEFAULT_CAPS);
        assert_eq!(profile.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(profile.default_errno_ret(), Some(1));
    }

    #[test]
    fn no_rule_repeats_the_default_action() {
        // libcontainer silently skips rules whose action equals the default action.
        let profile = profile(&default_caps_plus("CAP_SYS_ADMIN"));
        for rule in profile.syscalls().iter().flatten() {
            let same_as_default =
                rule.action() == LinuxSeccompAction::ScmpActErrno && rule.errno_ret().unwrap_or(EPERM) == EPERM;
            assert!(!same_as_default, "redundant rule {rule:?}");
        }
    }

    #[test]
    fn basic_syscalls_are_allowed() {
        let profile = profile(DEFAULT_CAPS);
        for name in ["read", "write", "exit_group", "openat", "execve", "futex", "rt_sigreturn"] {
            assert!(allowed_unconditionally(&profile, name), "{name} should be allowed");
        }
    }

    #[test]
    fn allow_list_has_no_duplicates_and_expected_size() {
        let mut names = ALLOWED.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALLOWED.len(), "duplicate names in ALLOWED");
        // moby/profiles@02e898b1: 361 names in the first rule. Update together with the source commit.
        assert_eq!(ALLOWED.len(), 361);
    }

    #[test]
    fn clone_mask_matches_moby() {
        assert_eq!(CLONE_NAMESPACE_FLAGS, 2_114_060_288);
    }

    #[test]
    fn clone_rule_is_conditional_without_sys_admin() {
        let profile = profile(DEFAULT_CAPS);
        assert!(!allowed_unconditionally(&profile, "clone"));
        let rules = rules_for(&profile, "clone");
        assert_eq!(rules.len(), 1);
        let cond = rules[0].args().as_ref().and_then(|args| args.first()).expect("clone rule has a condition");
        assert_eq!(cond.index(), 0);
        assert_eq!(cond.op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
        assert_eq!((cond.value(), cond.value_two()), (0, Some(2_114_060_288)));
    }

    #[test]
    fn clone_rule_allows_fork_and_threads_but_not_namespaces() {
        let profile = profile(DEFAULT_CAPS);
        const SIGCHLD: u64 = 17;
        // glibc pthread_create: CLONE_VM|FS|FILES|SIGHAND|THREAD|SYSVSEM|SETTLS|PARENT_SETTID|CHILD_CLEARTID.
        const THREAD_FLAGS: u64 = 0x003d_0f00;
        assert!(allows_arg0(&profile, "clone", SIGCHLD));
        assert!(allows_arg0(&profile, "clone", THREAD_FLAGS));
        for flag in
            [CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET]
        {
            assert!(!allows_arg0(&profile, "clone", SIGCHLD | flag), "clone with {flag:#x} should be denied");
        }
    }

    #[test]
    fn clone3_returns_enosys_without_sys_admin() {
        let profile = profile(DEFAULT_CAPS);
        let rules = rules_for(&profile, "clone3");
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(rules[0].errno_ret(), Some(38));
    }

    #[test]
    fn privileged_syscalls_are_denied_with_default_caps() {
        let profile = profile(DEFAULT_CAPS);
        for name in ["mount", "umount2", "unshare", "setns", "reboot", "kexec_load", "bpf", "init_module"] {
            assert!(!allowed_unconditionally(&profile, name), "{name} should not be allowed");
            let any_allow = rules_for(&profile, name).iter().any(|r| r.action() == LinuxSeccompAction::ScmpActAllow);
            assert!(!any_allow, "{name} should have no allow rule");
        }
    }

    #[test]
    fn default_caps_include_chroot() {
        // CAP_SYS_CHROOT is in containerd's default set, so chroot is allowed.
        assert!(allowed_unconditionally(&profile(DEFAULT_CAPS), "chroot"));
        assert!(!allowed_unconditionally(&profile(&["CAP_CHOWN"]), "chroot"));
    }

    #[test]
    fn sys_admin_allows_mount_clone_and_clone3() {
        let profile = profile(&default_caps_plus("CAP_SYS_ADMIN"));
        for name in ["mount", "umount2", "unshare", "setns", "clone", "clone3"] {
            assert!(allowed_unconditionally(&profile, name), "{name} should be allowed with CAP_SYS_ADMIN");
        }
        // The excludes-CAP_SYS_ADMIN rules are gone.
        assert_eq!(rules_for(&profile, "clone").len(), 1);
        assert!(rules_for(&profile, "clone3").iter().all(|r| r.action() == LinuxSeccompAction::ScmpActAllow));
        // Other gated groups stay closed.
        assert!(!allowed_unconditionally(&profile, "reboot"));
        assert!(!allowed_unconditionally(&profile, "kexec_load"));
    }

    #[test]
    fn capability_names_are_normalised() {
        let kubernetes_style = profile(&["sys_admin"]);
        assert!(allowed_unconditionally(&kubernetes_style, "mount"));
        let owned: Vec<String> = vec!["CAP_SYS_PTRACE".to_owned()];
        let profile = default_profile(&owned).expect("default profile builds");
        assert!(allowed_unconditionally(&profile, "process_madvise"));
    }

    #[test]
    fn other_capability_groups() {
        for (cap, name) in [
            ("CAP_SYS_BOOT", "reboot"),
            ("CAP_SYS_MODULE", "finit_module"),
            ("CAP_SYS_TIME", "clock_settime"),
            ("CAP_BPF", "bpf"),
            ("CAP_PERFMON", "perf_event_open"),
            ("CAP_DAC_READ_SEARCH", "open_by_handle_at"),
        ] {
            assert!(!allowed_unconditionally(&profile(DEFAULT_CAPS), name));
            assert!(allowed_unconditionally(&profile(&default_caps_plus(cap)), name), "{cap} should allow {name}");
        }
    }

    #[test]
    fn socket_families() {
        let profile = profile(DEFAULT_CAPS);
        assert!(!allowed_unconditionally(&profile, "socket"));
        for (domain, allowed) in [(1, true), (2, true), (10, true), (16, true), (17, true), (44, true), (45, true)] {
            assert_eq!(allows_arg0(&profile, "socket", domain), allowed, "AF {domain}");
        }
        for blocked in [12, 19, 20, 23, 25, 34, 37, 38, 40, 46] {
            assert!(!allows_arg0(&profile, "socket", blocked), "AF {blocked} should be denied");
        }
    }

    #[test]
    fn personality_values() {
        let profile = profile(DEFAULT_CAPS);
        for persona in [0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff] {
            assert!(allows_arg0(&profile, "personality", persona));
        }
        assert!(!allows_arg0(&profile, "personality", 0x0040_0000)); // READ_IMPLIES_EXEC
    }

    #[test]
    fn architectures_for_target() {
        let profile = profile(DEFAULT_CAPS);
        let arches = profile.architectures().clone().unwrap_or_default();
        if cfg!(target_arch = "x86_64") {
            assert_eq!(arches, vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]);
            assert!(allowed_unconditionally(&profile, "arch_prctl"));
            assert!(allowed_unconditionally(&profile, "modify_ldt"));
            assert!(!allowed_unconditionally(&profile, "set_tls"));
        } else if cfg!(target_arch = "aarch64") {
            assert_eq!(arches, vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]);
            assert!(allowed_unconditionally(&profile, "set_tls"));
            assert!(!allowed_unconditionally(&profile, "arch_prctl"));
        } else if cfg!(target_arch = "arm") {
            assert_eq!(arches, vec![Arch::ScmpArchArm]);
            assert!(allowed_unconditionally(&profile, "set_tls"));
        } else {
            assert!(arches.is_empty());
        }
    }
}
