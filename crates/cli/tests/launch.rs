//! `llmtrain launch` end to end: N in-process ranks follow the single-process run with an N times larger batch
//! (per-step losses and eval losses within 1e-5, final weights within 1e-4), rank 0 alone writes, and bad input (a config no
//! rank can read, a checkpoint of another world size, a command that is not a training command, a launcher
//! this build lacks) ends with one error line and no hang.

use crate::common;
use crate::launch_common;

use common::{assert_one_line_error, llmtrain_bin};
use launch_common::{Job, assert_follows_single_process, ok};

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
    let line = assert_one_line_error(
        &out,
        "written by a run of 2 rank(s) reading 4 rows per micro-batch in all; this run has 1 reading 2",
    );
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
    assert_one_line_error(&out, "--machine-rank 2 must be below --num-machines 2");
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
        format!(
            "srun --ntasks=8 --nodes=2 --kill-on-bad-exit=1 --export=ALL,MASTER_ADDR=10.0.0.1,MASTER_PORT=29500 \
             {bin} --device cpu train --config r.toml"
        )
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

#[test]
fn dry_run_shows_the_main_address_and_port_the_ranks_get() {
    let job = Job::new();
    let bin = llmtrain_bin().display().to_string();
    let hostfile = job.path("hosts");
    std::fs::write(&hostfile, "node1 slots=2\nnode2 slots=2\n").unwrap();
    #[rustfmt::skip]
    let out = job.run(&[
        "launch", "--num-processes", "4", "--num-machines", "2", "--main-process-ip", "node1",
        "--main-process-port", "29501", "--hostfile", hostfile.to_str().unwrap(), "--dry-run", "--", "train",
        "--config", "r.toml",
    ]);
    assert_eq!(
        ok(&out).trim(),
        format!(
            "mpirun -np 4 --hostfile {} --bind-to none -x MASTER_ADDR=node1 -x MASTER_PORT=29501 {bin} --device cpu \
             train --config r.toml",
            hostfile.display()
        )
    );
    // The old spellings are aliases; the port defaults to 29500.
    #[rustfmt::skip]
    let out = job.run(&[
        "launch", "--launcher", "srun", "--num-processes", "4", "--num-machines", "2", "--main-address", "node1",
        "--main-port", "1234", "--dry-run", "--", "train", "--config", "r.toml",
    ]);
    let stdout = ok(&out);
    assert!(stdout.contains(" --export=ALL,MASTER_ADDR=node1,MASTER_PORT=1234 "), "{stdout}");
    // In-process ranks are threads of one machine: the line says so (an address is not used).
    #[rustfmt::skip]
    let out = job.run(&[
        "launch", "--num-processes", "2", "--main-address", "node1", "--dry-run", "--", "train", "--config", "r.toml",
    ]);
    let stdout = ok(&out);
    assert_eq!(stdout.trim(), "2 in-process rank(s) on this one machine, on cpu: llmtrain train --config r.toml");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("node1 is not used"), "{stderr}");
}

#[test]
fn errors_name_the_flag_or_the_file_and_key_that_gave_the_value() {
    let job = Job::new();
    let file = job.path("launch.toml");
    std::fs::write(
        &file,
        "distributed_type = \"multi-cpu\"\nnum_machines = 2\nmain_process_ip = \"node1\"\nnum_processes = 4\n\
         launcher = \"srun\"\n",
    )
    .unwrap();
    let file_arg = file.to_str().unwrap();
    #[rustfmt::skip]
    let out = job.run(&[
        "launch", "--config-file", file_arg, "--machine-rank", "2", "--dry-run", "--", "train", "--config", "r.toml",
    ]);
    let line = assert_one_line_error(&out, "--machine-rank 2 must be below num_machines 2");
    assert!(line.starts_with(&format!("error: {}: ", file.display())), "{line}");
    // Flags alone: no file, no keys.
    #[rustfmt::skip]
    let out = job.run(&[
        "launch", "--num-processes", "3", "--num-machines", "2", "--main-process-ip", "node1", "--dry-run", "--",
        "train", "--config", "r.toml",
    ]);
    assert_one_line_error(&out, "error: --num-processes 3 does not divide evenly over --num-machines 2");
}

/// The `llmtrain` under test is built without `cuda` / `wgpu`.
#[test]
fn a_gpu_launch_on_a_cpu_only_build_is_refused() {
    let job = Job::new();
    let file = job.path("gpu.toml");
    std::fs::write(&file, "distributed_type = \"multi-gpu\"\nnum_processes = 2\n").unwrap();
    let file_arg = file.to_str().unwrap();
    let build = "cargo build --release -p llmtrain-cli --features cuda";
    let out = job.run(&["launch", "--config-file", file_arg, "--dry-run", "--", "train", "--config", "r.toml"]);
    let line = assert_one_line_error(&out, build);
    assert!(line.starts_with(&format!("error: {}: ", file.display())) && line.contains("multi-gpu"), "{line}");
    // A device asked for, on launch or in the command, for in-process ranks or processes.
    for args in [
        &["--device", "cuda", "launch", "--num-processes", "2", "--dry-run", "--", "train", "--config", "r.toml"][..],
        &["launch", "--num-processes", "2", "--dry-run", "--", "--device", "cuda", "train", "--config", "r.toml"],
        &[
            "launch",
            "--launcher",
            "srun",
            "--device=cuda",
            "--num-processes",
            "2",
            "--dry-run",
            "--",
            "train",
            "--config",
            "r",
        ],
    ] {
        let line = assert_one_line_error(&job.run(args), build);
        assert!(line.starts_with("error: --device cuda: "), "{line}");
    }
    // `--device cpu` runs a multi-gpu config on the CPU, as asked.
    #[rustfmt::skip]
    let out = job.run(&[
        "launch", "--config-file", file_arg, "--device", "cpu", "--dry-run", "--", "train", "--config", "r.toml",
    ]);
    assert!(ok(&out).starts_with("2 in-process rank(s) on this one machine, on cpu: "));
}

/// Every option of `launch` and `config` has a help line: clap prints an option and its help on one line, so an
/// option line holding nothing after its name (and value) has none.
#[test]
fn every_flag_of_launch_and_config_has_a_help_line() {
    for command in ["launch", "config"] {
        let out = common::llmtrain(&[command, "--help"]);
        let help = ok(&out);
        let options: Vec<&str> = help.lines().map(str::trim).filter(|l| l.starts_with('-')).collect();
        assert!(options.len() > 5, "{help}");
        for line in options {
            let described = line.split_once("  ").is_some_and(|(_, text)| !text.trim().is_empty());
            assert!(described, "`llmtrain {command} --help`: no help for `{line}`:\n{help}");
        }
        // Accelerate's spellings; the old ones stay as hidden aliases.
        assert!(help.contains("--main-process-ip <ADDRESS>") && help.contains("--main-process-port <PORT>"), "{help}");
        assert!(!help.contains("--main-address") && !help.contains("--main-port"), "{help}");
    }
}

#[test]
fn sigterm_stops_every_rank_after_the_same_step_with_a_checkpoint() {
    let job = Job::new();
    let config = job.config(2, "signal", "");
    let config = config.to_str().unwrap();
    // No periodic checkpoint: the one at the stopped step is the signal's.
    std::fs::write(config, std::fs::read_to_string(config).unwrap().replace("save_steps = 4", "save_steps = 0"))
        .unwrap();
    let mut child = std::process::Command::new(llmtrain_bin())
        .args(["launch", "--num-processes", "2", "--", "train", "--config", config, "--max-steps", "200"])
        .env("LLMTRAIN_CACHE", job.path("cache"))
        .env("LLMTRAIN_CONFIG_DIR", job.path("launch-config"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let metrics = job.path("out-signal/metrics.jsonl");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !metrics.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let kill = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143), "{stderr}");
    let line = stderr.lines().find(|l| l.starts_with("interrupted at step ")).unwrap_or_else(|| panic!("{stderr}"));
    assert_eq!(stderr.matches("interrupted at step").count(), 1, "reported once, not per rank: {stderr}");
    let step: u64 = line["interrupted at step ".len()..].split(':').next().unwrap().parse().unwrap();
    let state = std::fs::read_to_string(job.path(&format!("out-signal/checkpoint-{step}/trainer_state.json")))
        .unwrap_or_else(|_| panic!("no checkpoint at step {step}: {stderr}"));
    assert!(state.contains("\"world_size\": 2"), "{state}");
    // The two ranks resume together from there. (On a loaded machine the signal may land many steps in: the
    // resumed run goes a few steps past wherever it stopped.)
    let end = (step + 4).to_string();
    let resume = ["launch", "--num-processes", "2", "--", "train", "--config", config, "--max-steps", &end, "--resume"];
    let stdout = ok(&job.run(&resume));
    assert!(stdout.contains(&format!("steps: {end}")), "{stdout}");
}
