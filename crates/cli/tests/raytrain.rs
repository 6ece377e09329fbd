//! `[scaling]` runs without MPI: the driver runs a group of thread workers to the end and writes result.json, and
//! every bad setting is one line before anything starts. The restarts under mpirun are in `raytrain_mpi/`
//! (the `launch_mpi` target).

use std::path::{Path, PathBuf};

use crate::common::{assert_one_line_error, llmtrain_with_stdin};
use crate::launch_common::{Job, ok};

/// `job`'s config with the driver's sections appended.
fn with_sections(job: &Job, name: &str, sections: &str) -> PathBuf {
    let config = job.config(2, name, "");
    let text = std::fs::read_to_string(&config).unwrap() + "\n" + sections;
    std::fs::write(&config, text).unwrap();
    config
}

fn train(job: &Job, config: &Path, env: &[(&str, Option<&str>)]) -> std::process::Output {
    let cache = job.path("cache");
    let mut env = env.to_vec();
    env.push(("LLMTRAIN_CACHE", cache.to_str()));
    llmtrain_with_stdin(&["train", "--config", config.to_str().unwrap()], "", &env)
}

#[test]
fn thread_workers_run_to_the_end_and_the_result_is_written() {
    let job = Job::new();
    let config = with_sections(
        &job,
        "threads",
        "[scaling]\nnum_workers = 2\n\n[run]\nname = \"threads\"\nstorage_path = \"runs\"\n\n[failure]\n\
         max_failures = -1\n\n[model_checkpoint]\nnum_to_keep = 1\ncheckpoint_score_attribute = \"eval_loss\"\n\
         checkpoint_score_order = \"min\"\n",
    );
    let stdout = ok(&train(&job, &config, &[]));
    assert!(stdout.contains("raytrain: 2 worker(s) (in-process launcher, num_workers = 2), max_failures = -1"));
    assert!(stdout.contains("ranks: 2") && stdout.contains("raytrain: finished with 0 restart(s)"), "{stdout}");
    let run_dir = job.path("runs/threads");
    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("result.json")).unwrap()).unwrap();
    assert_eq!(result["status"], "finished");
    assert_eq!(result["metrics"]["step"], 12);
    assert!(result["metrics"]["eval_loss"].is_number());
    // Ray's retention names: the one best by eval_loss kept (the Trainer's default keeps two).
    let kept = result["checkpoints"].as_array().unwrap();
    assert_eq!(kept.len(), 1, "{result}");
    assert!(result["best_checkpoint"].as_str().unwrap().contains("eval_loss="), "{result}");
    assert!(run_dir.join("final/model.safetensors").is_file());

    // The same command again: the run is there, and is not restarted or resumed unasked.
    assert_one_line_error(&train(&job, &config, &[]), "holds an earlier run");
    let again = llmtrain_with_stdin(
        &["train", "--config", config.to_str().unwrap(), "--resume"],
        "",
        &[("LLMTRAIN_CACHE", job.path("cache").to_str())],
    );
    assert!(ok(&again).contains("nothing to resume: the run in"));
}

#[test]
fn bad_scaling_settings_are_one_line_before_anything_starts() {
    let job = Job::new();
    let hostfile = job.path("hostfile");
    std::fs::write(&hostfile, "localhost slots=1\n").unwrap();
    let mpirun = |name: &str, workers: &str| {
        with_sections(
            &job,
            name,
            &format!(
                "[scaling]\nnum_workers = {workers}\nlauncher = \"mpirun\"\nhostfile = \"{}\"\n\n[run]\nname = \
                 \"{name}\"\nstorage_path = \"runs\"\n",
                hostfile.display()
            ),
        )
    };
    let config = mpirun("too-many", "2");
    let line = assert_one_line_error(&train(&job, &config, &[]), "[scaling] num_workers = 2 needs 2 worker(s), but ");
    assert!(line.ends_with(&format!("the hostfile {} places 1", hostfile.display())), "{line}");
    let config = mpirun("too-many-elastic", "[2, 4]");
    assert_one_line_error(&train(&job, &config, &[]), "num_workers = [2, 4] needs 2 worker(s), but the hostfile");

    std::fs::write(&hostfile, "localhost slots=two\n").unwrap();
    let config = mpirun("bad-hostfile", "1");
    let line = assert_one_line_error(&train(&job, &config, &[]), "`slots=two`: slots must be a whole number");
    assert!(line.starts_with(&format!("error: {}:1: ", hostfile.display())), "{line}");

    let srun = with_sections(&job, "srun", "[scaling]\nnum_workers = 2\nlauncher = \"srun\"\n");
    assert_one_line_error(
        &train(&job, &srun, &[("SLURM_JOB_ID", None)]),
        "[scaling] launcher = \"srun\" but the driver is not inside a Slurm allocation (no SLURM_JOB_ID)",
    );

    // Storage under a file: it cannot be created.
    std::fs::write(job.path("a-file"), "").unwrap();
    let storage = with_sections(
        &job,
        "storage",
        "[scaling]\nnum_workers = 1\n\n[run]\nname = \"x\"\nstorage_path = \"a-file\"\n",
    );
    assert_one_line_error(&train(&job, &storage, &[]), "a-file/x is not writable: ");

    let bad_key = with_sections(&job, "bad-key", "[scaling]\nnum_workers = 1\nmax_workers = 2\n");
    assert_one_line_error(&train(&job, &bad_key, &[]), "max_workers");
    for name in ["too-many", "too-many-elastic", "bad-hostfile"] {
        assert!(!job.path(&format!("runs/{name}")).exists(), "{name}: nothing is started or written");
    }
}
