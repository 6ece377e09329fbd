//! What the end-to-end tests share: the real `llmtrain` binary (cargo builds it for these tests and names it in
//! `CARGO_BIN_EXE_llmtrain`: no nested build), the workspace's fixtures, and running the binary as a user would.
//! Each test file uses some of these helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("the workspace root exists")
}

/// A committed model fixture (an HF checkpoint directory made by transformers).
pub fn fixture(name: &str) -> PathBuf {
    root().join("crates/core/tests/fixtures").join(name)
}

/// Path of the `llmtrain` binary built for these tests (with the features the test run has, `mpi` included).
pub fn llmtrain_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_llmtrain"))
}

/// The shipped configs (`configs/*.toml`) whose `[scaling]` launcher starts worker processes (mpirun, srun): a
/// build without the `mpi` feature cannot run them, so `shipped_configs` (the e2e target) skips them after checking
/// each is listed here, and `raytrain_mpi::shipped_mpi_configs_run_as_written` (the `launch_mpi` target) runs
/// these.
pub const MPI_CONFIGS: &[&str] = &["multinode"];

/// The trl fixtures' tiny Llama with its tokenizer, as one HF directory under `dir`: what the shipped configs
/// finetune in the tests instead of the runs they build on (`--model`).
pub fn tiny_model(dir: &Path) -> PathBuf {
    let model = dir.join("model");
    std::fs::create_dir_all(&model).unwrap();
    let fixtures = root().join("crates/trl/tests/fixtures");
    for source in ["dpo_policy", "dpo_tokenizer"] {
        for entry in std::fs::read_dir(fixtures.join(source)).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, model.join(path.file_name().unwrap())).unwrap();
        }
    }
    model
}

/// Asserts that the run of shipped config `name` in `out` logged a training loss and wrote `final/`.
pub fn assert_trained(name: &str, out: &Path) {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let steps = text.lines().filter(|line| line.contains("\"loss\"")).count();
    assert!(steps >= 1, "{name}: no training record in {text}");
    assert!(out.join("final").is_dir(), "{name}: no final/");
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
