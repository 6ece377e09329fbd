//! The `[scaling]` driver under mpirun (2 ranks): a worker killed with SIGKILL costs a restart from the newest
//! checkpoint, not the run, and the final model is byte-identical to an uninterrupted run's; with no failures
//! allowed the kill ends the run naming the worker and the signal; a killed driver started again continues the run;
//! an elastic group shrinks from 2 workers to 1 and keeps the global batch; the shipped configs with mpirun workers
//! (configs/multinode.toml) run as written.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{MPI_CONFIGS, assert_trained, llmtrain_bin, root, tiny_model};
use crate::launch_common::{Job, curves, max_weight_diff, ok};

/// Steps of every run here: long enough that a kill lands mid-run.
const STEPS: u64 = 40;

/// A config of `job` whose run the driver starts as `num_workers` under mpirun.
fn driver_config(job: &Job, name: &str, num_workers: &str, max_failures: i64, hostfile: Option<&Path>) -> PathBuf {
    let config = job.config(2, name, &format!("max_steps = {STEPS}"));
    let hostfile = hostfile.map(|h| format!("hostfile = \"{}\"\n", h.display())).unwrap_or_default();
    let text = std::fs::read_to_string(&config).unwrap().replace("max_steps = 12\n", "")
        + &format!(
            "\n[scaling]\nnum_workers = {num_workers}\nlauncher = \"mpirun\"\n{hostfile}\n[run]\nname = \"{name}\"\n\
             storage_path = \"runs\"\n\n[failure]\nmax_failures = {max_failures}\n"
        );
    std::fs::write(&config, text).unwrap();
    config
}

fn start(job: &Job, config: &Path) -> Child {
    Command::new(llmtrain_bin())
        .args(["train", "--config", config.to_str().unwrap()])
        .env("LLMTRAIN_CACHE", job.path("cache"))
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until `dir` holds an intact checkpoint of `step` (its trainer_state.json is written last).
fn wait_for_checkpoint(dir: &Path, step: u64) {
    let state = dir.join(format!("checkpoint-{step}/trainer_state.json"));
    let deadline = Instant::now() + Duration::from_secs(120);
    while !state.is_file() {
        assert!(Instant::now() < deadline, "no {} after 120 s", state.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The pids of the worker processes writing into `run_dir` with world rank `rank`.
fn worker_pids(run_dir: &Path, rank: usize) -> Vec<u32> {
    let wanted = format!("OMPI_COMM_WORLD_RANK={rank}");
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else { continue };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if !cmdline.contains("--raytrain-worker") || !cmdline.contains(run_dir.to_str().unwrap()) {
            continue;
        }
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        if environ.split(|&b| b == 0).any(|var| var == wanted.as_bytes()) {
            pids.push(pid);
        }
    }
    pids
}

fn kill(pid: u32, signal: &str) {
    let status = Command::new("kill").args([signal, &pid.to_string()]).status().unwrap();
    assert!(status.success());
}

/// Kills worker `rank` of the run in `run_dir` with SIGKILL once checkpoint `step` is written.
fn kill_worker_after(run_dir: &Path, step: u64, rank: usize) {
    wait_for_checkpoint(run_dir, step);
    let pids = worker_pids(run_dir, rank);
    assert_eq!(pids.len(), 1, "one rank-{rank} worker of {}", run_dir.display());
    kill(pids[0], "-KILL");
}

fn finish(child: Child) -> (bool, String, String) {
    let out = child.wait_with_output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn run_result(run_dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(run_dir.join("result.json")).unwrap()).unwrap()
}

fn final_model(run_dir: &Path) -> Vec<u8> {
    std::fs::read(run_dir.join("final/model.safetensors")).unwrap()
}

#[test]
fn a_killed_worker_costs_a_restart_and_the_model_is_identical() {
    let job = Job::new();
    crate::common::llmtrain_bin();
    let clean = driver_config(&job, "clean", "2", 0, None);
    ok(&job.run(&["train", "--config", clean.to_str().unwrap()]));

    let config = driver_config(&job, "killed", "2", 1, None);
    let run_dir = job.path("runs/killed");
    let child = start(&job, &config);
    kill_worker_after(&run_dir, 8, 1);
    let (success, stdout, stderr) = finish(child);
    assert!(success, "{stderr}");
    assert!(stdout.contains("raytrain: finished with 1 restart(s)"), "{stdout}");
    assert!(
        stderr.contains("raytrain: worker rank 1 (node ")
            && stderr.contains("killed by signal 9 (SIGKILL); restart 1 of 1 from checkpoint-"),
        "{stderr}"
    );
    let result = run_result(&run_dir);
    assert_eq!(result["status"], "finished");
    let restarts = result["restarts"].as_array().unwrap();
    assert_eq!(restarts.len(), 1);
    assert_eq!(restarts[0]["worker_rank"], 1);
    assert_eq!(restarts[0]["exit"], "signal 9 (SIGKILL)");
    assert!(restarts[0]["resumed_step"].as_u64().unwrap() >= 8);
    eprintln!("restart: {}", restarts[0]);
    assert_eq!(result["metrics"]["step"], STEPS);
    assert!(final_model(&run_dir) == final_model(&job.path("runs/clean")), "the final model differs");

    // No failure allowed: the same kill ends the run, naming the worker and the signal.
    let config = driver_config(&job, "no-restart", "2", 0, None);
    let run_dir = job.path("runs/no-restart");
    let child = start(&job, &config);
    kill_worker_after(&run_dir, 4, 1);
    let (success, _, stderr) = finish(child);
    assert!(!success);
    let last = stderr.trim_end().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: worker rank 1 (node ")
            && last.ends_with("was killed by signal 9 (SIGKILL); [failure] max_failures = 0 allows no restart"),
        "{stderr}"
    );
    assert_eq!(run_result(&run_dir)["status"], "failed");
}

#[test]
fn a_killed_driver_started_again_continues_the_run() {
    let job = Job::new();
    crate::common::llmtrain_bin();
    let clean = driver_config(&job, "clean", "2", 0, None);
    ok(&job.run(&["train", "--config", clean.to_str().unwrap()]));

    let config = driver_config(&job, "driver", "2", 0, None);
    let run_dir = job.path("runs/driver");
    let child = start(&job, &config);
    wait_for_checkpoint(&run_dir, 8);
    kill(child.id(), "-KILL");
    let _ = finish(child);
    // The group dies with its driver (SIGTERM: the workers checkpoint their step and stop).
    let deadline = Instant::now() + Duration::from_secs(60);
    while !worker_pids(&run_dir, 0).is_empty() || !worker_pids(&run_dir, 1).is_empty() {
        assert!(Instant::now() < deadline, "the workers outlived their driver");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!run_dir.join("final").exists(), "the run ended before the driver was killed");

    let out = job.run(&["train", "--config", config.to_str().unwrap()]);
    let stdout = ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("raytrain: continuing the run in "), "{stderr}");
    assert!(stdout.contains("raytrain: finished with 0 restart(s)"), "{stdout}");
    assert!(final_model(&run_dir) == final_model(&job.path("runs/clean")), "the final model differs");
}

#[test]
fn an_elastic_group_shrinks_to_the_slots_left_and_keeps_the_global_batch() {
    let job = Job::new();
    crate::common::llmtrain_bin();
    let hostfile = job.path("hostfile");
    std::fs::write(&hostfile, "localhost slots=2\n").unwrap();
    let clean = driver_config(&job, "clean", "2", 0, None);
    ok(&job.run(&["train", "--config", clean.to_str().unwrap()]));

    let config = driver_config(&job, "elastic", "[1, 2]", 1, Some(&hostfile));
    let run_dir = job.path("runs/elastic");
    let child = start(&job, &config);
    wait_for_checkpoint(&run_dir, 8);
    // A machine's slot is gone: the hostfile says so before the worker on it dies.
    std::fs::write(&hostfile, "localhost slots=1\n").unwrap();
    kill_worker_after(&run_dir, 8, 1);
    let (success, stdout, stderr) = finish(child);
    assert!(success, "{stderr}");
    assert!(stderr.contains("with 1 worker(s)"), "{stderr}");
    assert!(stdout.contains("raytrain: finished with 1 restart(s)"), "{stdout}");
    let restart = &run_result(&run_dir)["restarts"][0];
    assert_eq!((restart["workers"].as_u64(), restart["gradient_accumulation_steps"].as_u64()), (Some(1), Some(2)));

    // One worker accumulating two micro-batches follows two workers step for step. (Evaluations differ: each
    // rank scores at most `eval_batches` batches, so two ranks score more of the held-out rows than one.)
    let (elastic, _) = curves(&run_dir);
    let (two, _) = curves(&job.path("runs/clean"));
    assert_eq!(elastic.len(), STEPS as usize);
    let worst = elastic.iter().zip(&two).map(|(a, b)| (a.1 - b.1).abs()).fold(0.0, f64::max);
    let weights =
        max_weight_diff(&run_dir.join("final/model.safetensors"), &job.path("runs/clean/final/model.safetensors"));
    eprintln!("elastic 2 -> 1 worker: max |Δloss| {worst:.2e}, final max |Δweight| {weights:.2e}");
    assert!(worst < 1e-5 && weights < 1e-5, "{worst} {weights}");
}

/// The shipped configs whose workers mpirun starts (`common::MPI_CONFIGS`; the e2e `shipped_configs` test checks
/// that it lists every one) run as written, with their hostfile, for 2 steps from the tiny fixture model: the
/// driver's workers train, write final/, and result.json reports the run finished without a restart.
/// `llmtrain recommend --nodes 2` writes a `[scaling]` config that the driver runs under mpirun as written (but
/// for `use_gpu`: these machines have no GPU).
#[test]
fn a_multi_node_config_recommend_writes_runs_under_mpirun() {
    let job = Job::new();
    let model = tiny_model(job.dir.path());
    let config = job.path("multinode.toml");
    let data = root().join("data/sft/train.jsonl");
    let recommend = [
        "recommend",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--gpus",
        "2",
        "--nodes",
        "2",
        "--seq-len",
        "32",
        "--batch",
        "2",
        "--out",
        config.to_str().unwrap(),
    ];
    let stdout = ok(&job.run(&recommend));
    assert!(stdout.contains("decision guide: Multi-node cluster (Ray Train) -> llmtrain-raytrain"), "{stdout}");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("launcher = \"mpirun\"") && text.contains("num_workers = 2"), "{text}");
    std::fs::write(&config, text.replace("use_gpu = true", "use_gpu = false")).unwrap();
    let out = job.path("out-multinode");
    let train =
        ["train", "--config", config.to_str().unwrap(), "--max-steps", "2", "--output-dir", out.to_str().unwrap()];
    let stdout = ok(&job.run(&train));
    assert!(stdout.contains("raytrain: finished with 0 restart(s)"), "{stdout}");
    assert_trained("multinode", &out);
    assert_eq!(run_result(&out)["status"], "finished");
}

#[test]
fn shipped_mpi_configs_run_as_written() {
    let job = Job::new();
    let model = tiny_model(job.dir.path());
    for name in MPI_CONFIGS {
        let config = root().join(format!("configs/{name}.toml"));
        let out = job.path(&format!("out-{name}"));
        let mut args = vec!["train", "--config", config.to_str().unwrap(), "--max-steps", "2"];
        args.extend(["--model", model.to_str().unwrap(), "--output-dir", out.to_str().unwrap()]);
        let stdout = ok(&job.run(&args));
        assert!(stdout.contains("raytrain: finished with 0 restart(s)"), "{name}: {stdout}");
        assert_trained(name, &out);
        let result = run_result(&out);
        assert_eq!(result["status"], "finished", "{name}: {result}");
        assert!(result["error"].is_null(), "{name}: {result}");
        assert_eq!(result["restarts"].as_array().map(Vec::len), Some(0), "{name}: {result}");
        assert_eq!(result["metrics"]["step"], 2, "{name}: {result}");
    }
}
