//! Helpers for the end-to-end tests in `tests/tests/`: build the real `llmtrain` binary once and run it.
//!
//! The binary lives in another package, so cargo does not hand us its path; we ask cargo to build it (a no-op
//! when it is fresh) and run it from the workspace's target directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ sits in the workspace").to_path_buf()
}

/// A committed model fixture (an HF checkpoint directory made by transformers).
pub fn fixture(name: &str) -> PathBuf {
    root().join("crates/core/tests/fixtures").join(name)
}

/// Path of a freshly built `llmtrain` binary.
pub fn llmtrain_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(root())
            .args(["build", "--quiet", "-p", "llmtrain-cli", "--bin", "llmtrain"])
            .args(if cfg!(feature = "mpi") { &["--features", "mpi"][..] } else { &[][..] })
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building llmtrain failed");
        let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"));
        target.join("debug").join(format!("llmtrain{}", std::env::consts::EXE_SUFFIX))
    })
}

/// Runs `llmtrain args...` to completion.
pub fn llmtrain(args: &[&str]) -> Output {
    Command::new(llmtrain_bin()).args(args).output().expect("llmtrain starts")
}

/// Asserts a run failed with a non-zero exit and one error line (the last line of stderr; progress lines may
/// come before it) containing `needle`, and returns that line.
pub fn assert_one_line_error(out: &Output, needle: &str) -> String {
    assert!(!out.status.success(), "expected failure, got success; stdout: {}", String::from_utf8_lossy(&out.stdout));
    let stderr = String::from_utf8_lossy(&out.stderr).trim_end().to_string();
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "one error line expected, got:\n{stderr}");
    let last = stderr.lines().last().unwrap_or_default().to_string();
    assert!(last.starts_with("error: "), "the error is not the last line:\n{stderr}");
    assert!(last.contains(needle), "`{needle}` not in: {last}");
    assert!(!stderr.contains("panicked") && !stderr.contains("stack backtrace"), "{stderr}");
    last
}

/// Runs `llmtrain args...` with `input` on its stdin and the environment changed by `env` (`None` removes a
/// variable), to completion.
pub fn llmtrain_with_stdin(args: &[&str], input: &str, env: &[(&str, Option<&str>)]) -> Output {
    use std::io::Write;
    use std::process::Stdio;

    let mut command = Command::new(llmtrain_bin());
    command.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (name, value) in env {
        match value {
            Some(value) => command.env(name, value),
            None => command.env_remove(name),
        };
    }
    let mut child = command.spawn().expect("llmtrain starts");
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let input = input.to_string();
    // Written from a thread so a child that fills its output pipes first cannot deadlock us; a child that exits
    // before reading everything (an error) closes the pipe, which is not our failure.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let output = child.wait_with_output().expect("llmtrain runs");
    writer.join().expect("stdin writer");
    output
}
