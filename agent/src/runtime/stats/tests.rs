use super::*;

/// A hybrid host's mountinfo (this build machine's): v1 controllers, each on
/// its own, and an empty unified hierarchy beside them.
const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

/// Debian's and Raspberry Pi OS's layout: cpu and cpuacct mounted together (v1)…
const V1_COMOUNTED: &str = "\
25 24 0:22 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
26 24 0:23 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup rw,memory
";

/// … or the unified hierarchy alone (v2).
const UNIFIED: &str = "\
22 1 179:2 / / rw,noatime shared:1 - ext4 /dev/root rw
30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

#[test]
fn hierarchies_follow_the_mounts_as_libcontainer_does() {
    let hybrid = Hierarchies::parse(HYBRID);
    // A hybrid host's containers live in v1: the unified hierarchy has no controllers there.
    assert_eq!(hybrid.dir("cpuacct", "/kedge/p/c"), Some(CgroupDir::V1("/sys/fs/cgroup/cpuacct/kedge/p/c".into())));
    assert_eq!(hybrid.dir("memory", "/kedge/p"), Some(CgroupDir::V1("/sys/fs/cgroup/memory/kedge/p".into())));
    assert_eq!(
        Hierarchies::parse(V1_COMOUNTED).dir("cpuacct", "kedge/p"),
        Some(CgroupDir::V1("/sys/fs/cgroup/cpu,cpuacct/kedge/p".into()))
    );
    let unified = Hierarchies::parse(UNIFIED);
    assert_eq!(unified.dir("cpuacct", "/kedge/p/c"), Some(CgroupDir::V2("/sys/fs/cgroup/kedge/p/c".into())));
    assert_eq!(unified.dir("pids", "/kedge/p"), Some(CgroupDir::V2("/sys/fs/cgroup/kedge/p".into())));
    // `name=systemd` is no controller, and no cgroup file system at all gives nothing.
    assert_eq!(Hierarchies::parse(V1_COMOUNTED).dir("systemd", "x"), None);
    assert_eq!(Hierarchies::parse("").dir("memory", "x"), None);
}

/// A container's `memory.stat` on cgroup v1 (abridged from a real one).
const V1_MEMORY_STAT: &str = "\
cache 16711680
rss 5832704
pgfault 29811
pgmajfault 0
inactive_file 667648
active_file 5578752
hierarchical_memory_limit 67108864
total_cache 20480000
total_rss 6291456
total_pgfault 31000
total_pgmajfault 3
total_inactive_file 1048576
total_active_file 5578752
";

#[test]
fn v1_memory_counts_the_tree_and_takes_inactive_files_out_of_the_working_set() {
    let m = memory_v1("12582912\n", "67108864\n", V1_MEMORY_STAT).expect("parses");
    assert_eq!(
        m,
        Memory {
            usage: 12_582_912,
            working_set: 12_582_912 - 1_048_576,
            rss: Some(6_291_456),
            limit: Some(67_108_864),
            page_faults: Some(31_000),
            major_page_faults: Some(3),
        }
    );
    // No limit is the kernel's page-counter maximum; a leaf's stat without total_ lines still reads.
    let m = memory_v1("4096", "9223372036854771712", "rss 4096\ninactive_file 8192\n").expect("parses");
    assert_eq!((m.limit, m.rss, m.working_set), (None, Some(4096), 0), "working set never below zero");
    assert_eq!(memory_v1("", "1", V1_MEMORY_STAT), None);
    assert_eq!(cpu_v1("123456789\n"), Some(123_456_789));
    assert_eq!(cpu_v1("garbage"), None);
}

/// A container's `memory.stat` and `cpu.stat` on cgroup v2 (abridged from a Raspberry Pi 4's).
const V2_MEMORY_STAT: &str = "\
anon 1826816
file 7077888
kernel 434176
shmem 0
file_mapped 3674112
inactive_anon 1798144
active_anon 28672
inactive_file 4194304
active_file 2883584
pgfault 2563
pgmajfault 17
";
const V2_CPU_STAT: &str = "\
usage_usec 84211
user_usec 41005
system_usec 43206
nr_periods 0
nr_throttled 0
throttled_usec 0
";

#[test]
fn v2_memory_and_cpu_read_the_unified_files() {
    let m = memory_v2("9416704\n", "max\n", V2_MEMORY_STAT).expect("parses");
    assert_eq!(
        m,
        Memory {
            usage: 9_416_704,
            working_set: 9_416_704 - 4_194_304,
            rss: Some(1_826_816),
            limit: None,
            page_faults: Some(2563),
            major_page_faults: Some(17),
        }
    );
    assert_eq!(memory_v2("100", "134217728", "").map(|m| (m.limit, m.working_set)), Some((Some(134_217_728), 100)));
    assert_eq!(cpu_v2(V2_CPU_STAT), Some(84_211_000), "microseconds become nanoseconds");
    assert_eq!(cpu_v2("user_usec 5\n"), None);
}

/// Lays out one container's cgroup files under `root` as the kernel shows them.
fn write_files(dir: &Path, files: &[(&str, &str)]) {
    fs::create_dir_all(dir).expect("cgroup dir");
    for (name, text) in files {
        fs::write(dir.join(name), text).expect("cgroup file");
    }
}

fn mountinfo(root: &Path, fixture: &str) -> Hierarchies {
    Hierarchies::parse(&fixture.replace(" /sys/fs/cgroup", &format!(" {}", root.display())))
}

#[test]
fn usage_reads_a_v1_container_cgroup() {
    let root = tempfile::tempdir().expect("tempdir");
    let h = mountinfo(root.path(), HYBRID);
    let rel = "/kedge/pod1/ctr1";
    write_files(&root.path().join("cpuacct/kedge/pod1/ctr1"), &[("cpuacct.usage", "2500000000\n")]);
    write_files(
        &root.path().join("memory/kedge/pod1/ctr1"),
        &[
            ("memory.usage_in_bytes", "12582912\n"),
            ("memory.limit_in_bytes", "67108864\n"),
            ("memory.stat", V1_MEMORY_STAT),
        ],
    );
    write_files(&root.path().join("pids/kedge/pod1/ctr1"), &[("pids.current", "3\n")]);
    let u = usage(&h, rel);
    assert_eq!(u.cpu_ns, Some(2_500_000_000));
    assert_eq!(u.memory.map(|m| (m.working_set, m.limit)), Some((11_534_336, Some(67_108_864))));
    assert_eq!(u.processes, Some(3));
    // A cgroup that is gone (the container was deleted) reads as nothing.
    assert_eq!(usage(&h, "/kedge/pod1/gone"), Usage::default());
}

#[test]
fn usage_reads_a_v2_container_cgroup() {
    let root = tempfile::tempdir().expect("tempdir");
    let h = mountinfo(root.path(), UNIFIED);
    write_files(
        &root.path().join("kedge/pod1/ctr1"),
        &[
            ("cpu.stat", V2_CPU_STAT),
            ("memory.current", "9416704\n"),
            ("memory.max", "max\n"),
            ("memory.stat", V2_MEMORY_STAT),
            ("pids.current", "1\n"),
        ],
    );
    let u = usage(&h, "/kedge/pod1/ctr1");
    assert_eq!(u.cpu_ns, Some(84_211_000));
    assert_eq!(u.memory.map(|m| (m.usage, m.working_set, m.rss)), Some((9_416_704, 5_222_400, Some(1_826_816))));
    assert_eq!(u.processes, Some(1));
    let answer = memory_usage(7, &u).expect("memory");
    assert_eq!((answer.timestamp, answer.available_bytes), (7, None), "no limit, so nothing to say is available");
}

#[test]
fn nanocores_are_the_rate_since_the_previous_reading_or_the_start() {
    let rates = CpuRates::default();
    const S: i64 = 1_000_000_000;
    // Half a core since the start 10 s before the first reading.
    assert_eq!(rates.rate("a", 0, 10 * S, 5_000_000_000), Some(500_000_000));
    // Then two full cores over the next second.
    assert_eq!(rates.rate("a", 0, 11 * S, 7_000_000_000), Some(2_000_000_000));
    // No time between two readings, or a counter that went back: no rate.
    assert_eq!(rates.rate("a", 0, 11 * S, 7_000_000_000), None);
    assert_eq!(rates.rate("a", 0, 12 * S, 1_000), None);
    // Objects that are gone are forgotten: a new "a" starts from its own start.
    rates.retain(&BTreeSet::new());
    assert_eq!(rates.rate("a", 12 * S, 13 * S, 250_000_000), Some(250_000_000));
}

#[test]
fn writable_layer_counts_blocks_and_inodes_once_per_hard_link() {
    let dir = tempfile::tempdir().expect("tempdir");
    let upper = dir.path().join("upper");
    fs::create_dir_all(upper.join("etc")).expect("mkdir");
    fs::write(upper.join("etc/blob"), vec![7u8; 64 * 1024]).expect("write");
    fs::hard_link(upper.join("etc/blob"), upper.join("blob-again")).expect("link");
    let fs_usage = writable_layer(dir.path(), Snapshotter::Overlay, 5).expect("usage");
    assert_eq!(fs_usage.inodes_used.map(|v| v.value), Some(3), "upper, etc and the blob once");
    let bytes = fs_usage.used_bytes.map(|v| v.value).unwrap_or(0);
    assert!((64 * 1024..2 * 64 * 1024).contains(&bytes), "{bytes} bytes: the blob counted once");
    assert_eq!(fs_usage.fs_id.map(|f| f.mountpoint), Some(upper.display().to_string()));
    assert_eq!(writable_layer(dir.path(), Snapshotter::Copy, 5), None, "no rootfs copied yet");
}
