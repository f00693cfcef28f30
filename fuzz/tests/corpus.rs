//! Every fuzz target over its whole corpus, each input once — so what a
//! fuzzer once found stays fixed — and then a few seconds of libFuzzer's own
//! mutations. These binaries are the test suite's ordinary build, without
//! coverage instrumentation (a second, instrumented build of the workspace
//! would cost CI minutes it does not have), so the mutations are blind: the
//! coverage-guided runs are `scripts/fuzz.sh` (fuzz/README.md).

use std::path::Path;
use std::process::Command;

/// Seconds of mutations after the corpus.
const SECONDS: u32 = 4;

fn run(target: &str, bin: &str) {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    let inputs = std::fs::read_dir(&corpus).map(|d| d.count()).unwrap_or(0);
    assert!(inputs > 0, "{} is empty: run `cargo run -p kedge-fuzz --bin seeds`", corpus.display());
    // New inputs and crashes go to a scratch directory, not the repository.
    let scratch = tempfile::tempdir().expect("tempdir");
    let out = Command::new(bin)
        // The targets' own scratch directories (never removed by them) too.
        .env("TMPDIR", scratch.path())
        .arg(scratch.path())
        .arg(&corpus)
        .arg(format!("-max_total_time={SECONDS}"))
        .args(["-rss_limit_mb=2048", "-timeout=20", "-print_final_stats=1"])
        .arg(format!("-artifact_prefix={}/", scratch.path().display()))
        .output()
        .expect("run the fuzz target");
    let log = String::from_utf8_lossy(&out.stderr);
    let crashed: Vec<_> = std::fs::read_dir(scratch.path())
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    let tail = lines[lines.len().saturating_sub(40)..].join("\n");
    assert!(out.status.success(), "{target} failed ({}); artifacts {crashed:?}:\n{tail}", out.status);
    // The whole corpus was read (libFuzzer names how many files it took).
    let read = log
        .lines()
        .find_map(|l| l.strip_prefix("INFO: seed corpus: files: "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse::<usize>().ok());
    assert_eq!(read, Some(inputs), "{target}: libFuzzer did not take the whole corpus:\n{tail}");
}

macro_rules! targets {
    ($($t:ident),* $(,)?) => {$(
        #[test]
        fn $t() {
            run(stringify!($t), env!(concat!("CARGO_BIN_EXE_", stringify!($t))));
        }
    )*};
}

targets!(
    agent_config,
    envelope,
    image_archive,
    image_manifest,
    layer_unpack,
    patch,
    protobuf_body,
    static_pod,
    strict_json,
    wire,
);
