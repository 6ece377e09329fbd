//! `llmtrain launch` end to end: N in-process ranks follow the single-process run with an N times larger batch
//! (per-step losses, eval losses and final weights within 1e-5), rank 0 alone writes, and bad input (a config no
//! rank can read, a checkpoint of another world size, a command that is not a training command, a launcher
//! this build lacks) ends with one error line and no hang.

mod launch_common;

use launch_common::{Job, assert_follows_single_process, ok};
use llmtrain_e2e::{assert_one_line_error, llmtrain_bin};

#[test]
fn two_and_four_in_process_ranks_follow_the_single_process_run() {
    let job = Job::new();
    assert_follows_single_process(&job, 2, &[]);
    assert_follows_single_process(&job, 4, &[]);
}

#[test]
fn resuming_with_another_world_size_is_refused_and_the_checkpoint_kept() {
    let job = Job::new();
    let config = job.config(2, "resume", "");
    let config = config.to_str().unwrap();
    ok(&job.run(&["launch", "--num-processes", "2", "--", "train", "--config", config, "--max-steps", "4"]));
    let weights = std::fs::read(job.path("out-resume/checkpoint-4/model.safetensors")).unwrap();
    let out = job.run(&["train", "--config", config, "--resume"]);
    let line = assert_one_line_error(&out, "written by a run of 2 rank(s); this run has 1");
    assert!(line.contains("checkpoint-4"), "{line}");
    assert_eq!(std::fs::read(job.path("out-resume/checkpoint-4/model.safetensors")).unwrap(), weights);
    // The same world size resumes.
    let stdout = ok(&job.run(&["launch", "--num-processes", "2", "--", "train", "--config", config, "--resume"]));
    assert!(stdout.contains("steps: 12"), "{stdout}");
}

#[test]
fn a_config_no_rank_can_read_fails_once_without_hanging() {
    let job = Job::new();
    let missing = job.path("missing.toml");
    let out = job.run(&["launch", "--num-processes", "3", "--", "train", "--config", missing.to_str().unwrap()]);
    let line = assert_one_line_error(&out, "missing.toml");
    assert!(line.starts_with("error: rank ") && line.contains(" failed: "), "{line}");
}

#[test]
fn launch_refuses_non_training_commands_and_launchers_this_build_lacks() {
    let job = Job::new();
    let out = job.run(&["launch", "--num-processes", "2", "--", "logits", "--model", "x"]);
    assert_one_line_error(&out, "launch runs training commands");
    if !cfg!(feature = "mpi") {
        let config = job.config(2, "nompi", "");
        let out = job.run(&[
            "launch",
            "--launcher",
            "mpirun",
            "--num-processes",
            "2",
            "--",
            "train",
            "--config",
            config.to_str().unwrap(),
        ]);
        assert_one_line_error(&out, "built without the `mpi` feature");
    }
    let out = job.run(&[
        "launch",
        "--num-processes",
        "4",
        "--num-machines",
        "2",
        "--machine-rank",
        "2",
        "--",
        "train",
        "--config",
        "x.toml",
    ]);
    assert_one_line_error(&out, "machine_rank 2 must be below num_machines 2");
}

#[test]
fn dry_run_prints_the_exact_mpirun_and_srun_lines() {
    let job = Job::new();
    let out = job.run(&[
        "launch",
        "--launcher",
        "mpirun",
        "--num-processes",
        "4",
        "--dry-run",
        "--",
        "train",
        "--config",
        "my run.toml",
    ]);
    let stdout = ok(&out);
    let bin = llmtrain_bin().display().to_string();
    assert_eq!(
        stdout.trim(),
        format!("mpirun -np 4 --oversubscribe --bind-to none {bin} --device cpu train --config 'my run.toml'")
    );
    let hostfile = job.path("hosts");
    std::fs::write(&hostfile, "node1 slots=4\nnode2 slots=4\n").unwrap();
    let out = job.run(&[
        "launch",
        "--num-processes",
        "8",
        "--num-machines",
        "2",
        "--main-address",
        "10.0.0.1",
        "--hostfile",
        hostfile.to_str().unwrap(),
        "--dry-run",
        "--",
        "train",
        "--config",
        "r.toml",
    ]);
    let stdout = ok(&out);
    assert!(stdout.starts_with(&format!("mpirun -np 8 --hostfile {} --bind-to none", hostfile.display())), "{stdout}");
    let out = job.run(&[
        "launch",
        "--launcher",
        "srun",
        "--num-processes",
        "8",
        "--num-machines",
        "2",
        "--main-address",
        "10.0.0.1",
        "--dry-run",
        "--",
        "train",
        "--config",
        "r.toml",
    ]);
    assert_eq!(
        ok(&out).trim(),
        format!("srun --ntasks=8 --nodes=2 --kill-on-bad-exit=1 {bin} --device cpu train --config r.toml")
    );
    // The command's own `--device X` is the ranks' device, passed once.
    let out = job.run(&[
        "launch",
        "--launcher",
        "mpirun",
        "--num-processes",
        "2",
        "--dry-run",
        "--",
        "--device",
        "cpu",
        "train",
        "--config",
        "r.toml",
    ]);
    assert_eq!(
        ok(&out).trim(),
        format!("mpirun -np 2 --oversubscribe --bind-to none {bin} --device cpu train --config r.toml")
    );
}

#[test]
fn gradient_checkpointing_from_the_config_follows_the_plain_run() {
    // 2 ranks of 4 rows with checkpointing against one plain process of 8 rows: the same global batch.
    let job = Job::new();
    let plain = job.config(8, "plain8", "");
    let checkpointed = job.config(4, "ckpt", "");
    let text = std::fs::read_to_string(&checkpointed).unwrap() + "\n[memopt]\ngradient_checkpointing = true\n";
    std::fs::write(&checkpointed, text).unwrap();
    ok(&job.run(&["train", "--config", plain.to_str().unwrap()]));
    ok(&job.run(&["launch", "--num-processes", "2", "--", "train", "--config", checkpointed.to_str().unwrap()]));
    let (plain_loss, _) = launch_common::curves(&job.path("out-plain8"));
    let (ckpt_loss, _) = launch_common::curves(&job.path("out-ckpt"));
    assert_eq!(ckpt_loss.len(), plain_loss.len());
    let diff = ckpt_loss.iter().zip(&plain_loss).map(|(a, b)| (a.1 - b.1).abs()).fold(0.0, f64::max);
    eprintln!("checkpointed (2 ranks) vs plain (1 rank, same global batch): max |Δloss| {diff:.2e}");
    assert!(diff <= 1e-5, "{diff}");
}
