//! `llmtrain launch --launcher mpirun` end to end (built with `--features mpi`; CI runs it with
//! `cargo test --workspace --features llmtrain-cli/mpi --test launch_mpi`): 2 and 4 MPI ranks follow the single-process run
//! with the same global batch within 1e-5, and a missing mpirun is one clear error; `raytrain_mpi` covers the
//! `[scaling]` driver's restarts under mpirun and runs the shipped configs whose workers mpirun starts.
#![cfg(feature = "mpi")]

mod common;
mod launch_common;
mod raytrain_mpi;

use common::assert_one_line_error;
use launch_common::{Job, assert_follows_single_process};

#[test]
fn mpi_ranks_follow_the_single_process_run() {
    let job = Job::new();
    assert_follows_single_process(&job, 2, &["--launcher", "mpirun"]);
    assert_follows_single_process(&job, 4, &["--launcher", "mpirun"]);
}

#[test]
fn a_failing_mpi_rank_ends_the_job_with_its_error() {
    let job = Job::new();
    let missing = job.path("missing.toml");
    // Built first: the time limit is for the job, not for compiling the binary.
    common::llmtrain_bin();
    let started = std::time::Instant::now();
    let out = job.run(
        &["launch", "--launcher", "mpirun", "--num-processes", "2", "--", "train", "--config"]
            .into_iter()
            .chain([missing.to_str().unwrap()])
            .collect::<Vec<_>>(),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.trim_end().lines().last().unwrap_or_default();
    assert!(last.starts_with("error: mpirun exited with"), "{stderr}");
    assert!(
        stderr.lines().any(|l| l.starts_with("error: rank ") && l.contains(" failed: ") && l.contains("missing.toml")),
        "each rank's error names the rank and the file: {stderr}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
}

#[test]
fn a_missing_mpirun_is_one_clear_error() {
    let job = Job::new();
    let config = job.config(2, "nompirun", "");
    let out = std::process::Command::new(common::llmtrain_bin())
        .args(["launch", "--launcher", "mpirun", "--num-processes", "2", "--", "train", "--config"])
        .arg(&config)
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert_one_line_error(&out, "mpirun not found on PATH");
}

#[test]
fn zero_stages_under_mpirun_follow_plain_data_parallelism() {
    let job = Job::new();
    for world in [2, 4] {
        launch_common::assert_zero_follows_plain_data_parallelism(&job, world, &["--launcher", "mpirun"]);
    }
}
