//! `llmtrain train` end to end: a short quickstart-shaped run, SIGKILL and resume (bit-identical), damaged
//! checkpoints, an earlier run never deleted unasked, Ctrl-C / SIGTERM checkpointing the step, and one test per
//! class of bad input.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{assert_one_line_error, fixture, llmtrain, llmtrain_bin, root};

/// A run directory with a small corpus and a config pretraining a tiny model on it.
struct Run {
    dir: tempfile::TempDir,
}

impl Run {
    fn new(extra_training: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let corpus = std::fs::read_to_string(root().join("data/shakespeare/hamlet.txt")).unwrap();
        std::fs::create_dir(dir.path().join("corpus")).unwrap();
        std::fs::write(dir.path().join("corpus/hamlet.txt"), &corpus[..40_000]).unwrap();
        let config = format!(
            "[model]\nhidden_size = 32\nintermediate_size = 64\nnum_hidden_layers = 2\nnum_attention_heads = 4\n\
             num_key_value_heads = 2\n\n[tokenizer]\ntrain_files = [\"corpus\"]\nvocab_size = 400\n\n\
             [data]\nfiles = [\"corpus\"]\nseq_len = 32\nbatch_size = 4\neval_fraction = 0.1\n\n\
             [training]\nmax_steps = 24\nlearning_rate = 0.01\nwarmup_steps = 2\nlogging_steps = 2\n\
             save_steps = 4\nsave_total_limit = 3\ngradient_accumulation_steps = 2\n{extra_training}\n\
             [output]\ndir = \"out\"\n"
        );
        std::fs::write(dir.path().join("run.toml"), config).unwrap();
        Self { dir }
    }

    /// A run that checkpoints only at its end.
    fn without_periodic_checkpoints() -> Self {
        let run = Self::new("");
        let config = std::fs::read_to_string(run.path("run.toml")).unwrap();
        std::fs::write(run.path("run.toml"), config.replace("save_steps = 4", "save_steps = 0")).unwrap();
        run
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn command(&self, extra: &[&str]) -> Command {
        let mut cmd = Command::new(llmtrain_bin());
        cmd.args(["train", "--config", self.path("run.toml").to_str().unwrap()]).args(extra);
        cmd.env("LLMTRAIN_CACHE", self.path("cache"));
        cmd
    }

    fn train(&self, extra: &[&str]) -> std::process::Output {
        self.command(extra).output().unwrap()
    }

    fn final_weights(&self) -> Vec<u8> {
        std::fs::read(self.path("out/final/model.safetensors")).unwrap()
    }
}

fn ok(out: &std::process::Output) -> String {
    assert!(out.status.success(), "stderr:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn short_run_writes_metrics_checkpoints_and_an_hf_final_directory() {
    let run = Run::new("eval_steps = 8");
    let stdout = ok(&run.train(&[]));
    assert!(stdout.contains("final eval loss"), "{stdout}");
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        assert!(run.path("out/final").join(f).exists(), "final/{f}");
    }
    let png = std::fs::read(run.path("out/loss_curve.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    let metrics = std::fs::read_to_string(run.path("out/metrics.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = metrics.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let steps: Vec<u64> =
        records.iter().filter(|r| r.get("loss").is_some()).map(|r| r["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, (1..=12).map(|k| 2 * k).collect::<Vec<_>>());
    for r in records.iter().filter(|r| r.get("loss").is_some()) {
        assert!(
            r["loss"].as_f64().unwrap().is_finite()
                && r["lr"].as_f64().is_some()
                && r["tokens_per_sec"].as_f64().unwrap() > 0.0
        );
    }
    assert!(records.iter().any(|r| r.get("eval_loss").is_some()));
    // The first logged loss is above the last: it learns.
    let losses: Vec<f64> = records.iter().filter_map(|r| r["loss"].as_f64()).collect();
    assert!(losses.last().unwrap() < losses.first().unwrap(), "{losses:?}");
    // Keep-last-3 retention, checkpoint at the end included.
    let mut ckpts: Vec<String> = std::fs::read_dir(run.path("out"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("checkpoint-"))
        .collect();
    ckpts.sort();
    assert_eq!(ckpts, vec!["checkpoint-16", "checkpoint-20", "checkpoint-24"]);
    // final/ is an HF directory llmtrain itself can read back.
    let logits = llmtrain(&["logits", "--model", run.path("out/final").to_str().unwrap(), "--tokens", "1,2,3"]);
    ok(&logits);
}

/// Starts a run and SIGKILLs it once `trigger` exists plus `delay`; returns whether it was still running.
fn kill_when(run: &Run, extra: &[&str], trigger: &Path, delay: Duration) -> bool {
    let mut child = run.command(extra).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !trigger.exists() && Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(delay);
    let alive = child.try_wait().unwrap().is_none();
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    alive
}

#[test]
fn sigkill_then_resume_ends_bit_identical_to_an_uninterrupted_run() {
    let reference = Run::new("");
    ok(&reference.train(&[]));
    let want = reference.final_weights();

    let run = Run::new("");
    // Kill twice at different moments (mid-step after a checkpoint, and during a later checkpoint write), resuming
    // each time; the cache is shared so the tokenizer is identical.
    assert!(
        kill_when(&run, &[], &run.path("out/checkpoint-4"), Duration::from_millis(30)),
        "run ended before the kill"
    );
    kill_when(&run, &["--resume"], &run.path("out/checkpoint-12"), Duration::from_millis(0));
    let out = run.train(&["--resume"]);
    let stdout = ok(&out);
    assert!(stdout.contains("steps: 24"), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("resuming from"), "the last run must resume, not restart");
    assert_eq!(run.final_weights(), want, "resumed run differs from the uninterrupted one");
    // metrics.jsonl holds each logged step once.
    let metrics = std::fs::read_to_string(run.path("out/metrics.jsonl")).unwrap();
    let steps: Vec<u64> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r.get("loss").is_some())
        .map(|r| r["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (1..=12).map(|k| 2 * k).collect::<Vec<_>>());
}

#[test]
fn a_damaged_checkpoint_is_skipped_with_a_warning() {
    // A constant schedule, so stopping at step 8 and going on to 12 follows the 12-step run's learning rates.
    let reference = Run::new("lr_schedule = \"constant\"");
    ok(&reference.train(&["--max-steps", "12"]));
    let want = reference.final_weights();
    let run = Run::new("lr_schedule = \"constant\"");
    ok(&run.train(&["--max-steps", "8"]));
    // Damage the newest checkpoint (8): resume must fall back to checkpoint-4 and still end identical.
    let weights = run.path("out/checkpoint-8/model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() - 100]).unwrap();
    let out = run.train(&["--resume", "--max-steps", "12"]);
    ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("skipping damaged checkpoint") && stderr.contains("checkpoint-8"), "{stderr}");
    assert!(stderr.contains("resuming from") && stderr.contains("checkpoint-4"), "{stderr}");
    assert_eq!(run.final_weights(), want);
}

#[test]
fn unknown_config_key_names_it_and_the_closest_key() {
    let run = Run::new("lerning_rate = 0.1");
    let err = assert_one_line_error(&run.train(&[]), "unknown key `lerning_rate` in [training]");
    assert!(err.contains("run.toml:") && err.contains("did you mean `learning_rate`?"), "{err}");
    assert!(!run.path("out").exists(), "nothing written for a bad config");
}

#[test]
fn missing_data_file_is_named() {
    let run = Run::new("");
    std::fs::remove_dir_all(run.path("corpus")).unwrap();
    assert_one_line_error(&run.train(&[]), "corpus");
}

#[test]
fn malformed_jsonl_row_names_file_line_and_field_or_is_skipped_and_counted() {
    let run = Run::new("");
    let mut rows = String::new();
    for i in 0..200 {
        rows.push_str(&format!("{{\"text\": \"line {i}: to be or not to be, that is the question\"}}\n"));
    }
    rows.push_str("{\"text\": 5}\n");
    std::fs::write(run.path("rows.jsonl"), rows).unwrap();
    let config = std::fs::read_to_string(run.path("run.toml")).unwrap();
    std::fs::write(
        run.path("run.toml"),
        config.replace("files = [\"corpus\"]\nseq_len", "files = [\"rows.jsonl\"]\nseq_len"),
    )
    .unwrap();
    let err = assert_one_line_error(&run.train(&[]), "rows.jsonl:201");
    assert!(err.contains("text"), "{err}");
    let config = std::fs::read_to_string(run.path("run.toml")).unwrap();
    std::fs::write(
        run.path("run.toml"),
        config.replace("eval_fraction = 0.1", "eval_fraction = 0.1\nskip_malformed = true"),
    )
    .unwrap();
    let stdout = ok(&run.train(&["--max-steps", "2"]));
    assert!(stdout.contains("skipped malformed rows: 1"), "{stdout}");
}

#[test]
fn tokenizer_larger_than_the_model_vocabulary_is_refused() {
    let run = Run::new("");
    // The Qwen2 fixture has 256 token ids; the run's tokenizer has 400.
    let model = fixture("qwen2_bias");
    let err = assert_one_line_error(&run.train(&["--model", model.to_str().unwrap()]), "tokenizer has");
    assert!(err.contains("vocab_size is 256"), "{err}");
}

#[test]
fn memopt_switches_train_end_to_end() {
    // fp16 with loss scaling, flash attention and offloaded checkpointing together; the metrics log the scale
    // and the checkpoints carry the scaler so a resumed run continues with it.
    let memopt = "eval_steps = 8\n\n[memopt]\nmixed_precision = \"fp16\"\nattention = \"flash\"\nflash_block = 8\n\
                  gradient_checkpointing = true\ncheckpoint_offload = true\ninitial_scale_power = 24\n";
    let run = Run::new(memopt);
    let stdout = ok(&run.train(&[]));
    assert!(stdout.contains("fp16: ") && stdout.contains("final loss scale"), "{stdout}");
    let metrics = std::fs::read_to_string(run.path("out/metrics.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = metrics.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let scales: Vec<f64> = records.iter().filter_map(|r| r["loss_scale"].as_f64()).collect();
    assert_eq!(scales.len(), 12, "every training record has the loss scale: {metrics}");
    let losses: Vec<f64> = records.iter().filter_map(|r| r["loss"].as_f64()).collect();
    assert!(losses.last().unwrap() < losses.first().unwrap(), "{losses:?}");
    let state = std::fs::read_to_string(run.path("out/checkpoint-24/trainer_state.json")).unwrap();
    assert!(state.contains("loss_scaler"), "{state}");

    // bf16 from the command line overrides the config's fp16: no loss scale.
    let bf16 = ok(&run.train(&["--mixed-precision", "bf16", "--overwrite"]));
    assert!(!bf16.contains("fp16: "), "{bf16}");
}

#[test]
fn unknown_precision_names_the_key() {
    let run = Run::new("\n[memopt]\nmixed_precision = \"fp8\"\n");
    let out = run.train(&[]);
    let line = assert_one_line_error(&out, "fp8");
    assert!(line.contains("run.toml:28:"), "names the file and line: {line}");
}

/// Every file under `dir` with its bytes, to show a refused command changed nothing.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push((path.clone(), std::fs::read(&path).unwrap()));
            }
        }
    }
    files.sort();
    files
}

#[test]
fn an_earlier_run_is_kept_unless_resumed_or_overwritten() {
    let run = Run::new("");
    ok(&run.train(&["--max-steps", "4"]));
    std::fs::write(run.path("out/notes.txt"), "mine").unwrap();
    let before = snapshot(&run.path("out"));
    let err = assert_one_line_error(&run.train(&["--max-steps", "8"]), "holds an earlier run (checkpoint-4/, final/");
    assert!(err.contains("--resume") && err.contains("--overwrite"), "{err}");
    assert_eq!(snapshot(&run.path("out")), before, "a refused run changed the earlier one");
    // --overwrite starts over: the earlier run's files go, the user's stay.
    ok(&run.train(&["--max-steps", "8", "--overwrite"]));
    let ckpts: Vec<String> = std::fs::read_dir(run.path("out"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("checkpoint-"))
        .collect();
    assert_eq!(ckpts.len(), 2, "checkpoints 4 and 8 of the new run: {ckpts:?}");
    assert_eq!(std::fs::read_to_string(run.path("out/notes.txt")).unwrap(), "mine");
}

#[test]
fn resume_with_nothing_to_resume_says_so_and_writes_nothing() {
    let run = Run::new("");
    let err = assert_one_line_error(&run.train(&["--resume"]), "nothing to resume");
    assert!(err.contains("output directory") && err.contains("does not exist"), "{err}");
    assert!(!run.path("out").exists(), "a refused resume created the output directory");
    std::fs::create_dir(run.path("out")).unwrap();
    assert_one_line_error(&run.train(&["--resume"]), "holds no intact checkpoint");
    // A mistyped output directory is named with the one that exists.
    ok(&run.train(&["--max-steps", "4"]));
    let typo = run.path("oot");
    let err = assert_one_line_error(&run.train(&["--resume", "--output-dir", typo.to_str().unwrap()]), "oot");
    assert!(
        err.contains("did you mean") && err.ends_with("nothing to resume; run without --resume to start a new run"),
        "{err}"
    );
}

#[test]
fn resuming_a_finished_run_changes_nothing() {
    let run = Run::new("");
    ok(&run.train(&["--max-steps", "4"]));
    let before = snapshot(&run.path("out"));
    let out = run.train(&["--max-steps", "4", "--resume"]);
    let stdout = ok(&out);
    assert!(stdout.contains("nothing to resume") && stdout.contains("already reached step 4"), "{stdout}");
    assert!(!stdout.contains("NaN"), "{stdout}");
    assert_eq!(snapshot(&run.path("out")), before, "a finished run resumed must be a no-op");
}

/// Sends `signal` (a `kill` name: INT, TERM) to a process.
fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).status().unwrap();
    assert!(status.success());
}

/// Starts a run, waits for `trigger` to exist, sends `signals` (one `kill` each, back to back), and returns the
/// run's output.
fn signal_when(run: &Run, extra: &[&str], trigger: &Path, signals: &[&str]) -> std::process::Output {
    let child = run.command(extra).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !trigger.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    for signal in signals {
        send_signal(child.id(), signal);
    }
    child.wait_with_output().unwrap()
}

/// The step `interrupted at step N` names.
fn interrupted_step(stderr: &str) -> u64 {
    let line = stderr.lines().find(|l| l.starts_with("interrupted at step ")).unwrap_or_else(|| panic!("{stderr}"));
    assert!(line.ends_with(": resume with --resume"), "{line}");
    line["interrupted at step ".len()..].split(':').next().unwrap().parse().unwrap()
}

#[test]
fn ctrl_c_checkpoints_the_current_step_and_resume_ends_identical() {
    let reference = Run::new("");
    ok(&reference.train(&["--max-steps", "100"]));
    let want = reference.final_weights();

    // No periodic checkpoints: the one at the interrupted step is the signal's.
    let run = Run::without_periodic_checkpoints();
    let out = signal_when(&run, &["--max-steps", "100"], &run.path("out/metrics.jsonl"), &["INT"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    let step = interrupted_step(&stderr);
    assert!((1..100).contains(&step), "{stderr}");
    assert!(run.path(&format!("out/checkpoint-{step}/trainer_state.json")).exists(), "no checkpoint at step {step}");
    assert!(!run.path("out/final").exists(), "an interrupted run has no final model");
    let resumed = run.train(&["--max-steps", "100", "--resume"]);
    ok(&resumed);
    let resumed_stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed_stderr.contains(&format!("(step {step})")), "{resumed_stderr}");
    assert_eq!(run.final_weights(), want, "the interrupted and resumed run differs from the uninterrupted one");

    // SIGTERM (a scheduler's pre-emption) does the same, with its own exit code.
    let run = Run::without_periodic_checkpoints();
    let out = signal_when(&run, &["--max-steps", "100"], &run.path("out/metrics.jsonl"), &["TERM"]);
    assert_eq!(out.status.code(), Some(143), "{}", String::from_utf8_lossy(&out.stderr));
    let step = interrupted_step(&String::from_utf8_lossy(&out.stderr));
    assert!(run.path(&format!("out/checkpoint-{step}/trainer_state.json")).exists());
}

#[test]
fn a_second_ctrl_c_stops_at_once_and_leaves_no_temporary_files() {
    let run = Run::new("");
    let out = signal_when(&run, &["--max-steps", "400"], &run.path("out/checkpoint-4"), &["INT", "INT"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    // Whichever signal the run saw first, no half-written directory is left and a resume finds an intact
    // checkpoint.
    let hidden: Vec<String> = std::fs::read_dir(run.path("out"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(hidden.is_empty(), "temporary files left: {hidden:?}");
    ok(&run.train(&["--max-steps", "6", "--resume"]));
}

#[test]
fn csv_and_tensorboard_loggers_hold_what_metrics_jsonl_holds_through_a_kill_and_resume() {
    let run = Run::new("eval_steps = 8\n\n[logging]\nloggers = [\"jsonl\", \"csv\", \"tensorboard\"]\n");
    assert!(
        kill_when(&run, &[], &run.path("out/checkpoint-8"), Duration::from_millis(30)),
        "run ended before the kill"
    );
    ok(&run.train(&["--resume"]));
    let metrics = std::fs::read_to_string(run.path("out/metrics.jsonl")).unwrap();
    let records: Vec<serde_json::Map<String, serde_json::Value>> =
        metrics.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let steps: Vec<u64> =
        records.iter().filter(|r| r.contains_key("loss")).map(|r| r["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, (1..=12).map(|k| 2 * k).collect::<Vec<_>>(), "metrics.jsonl after the resume");

    // TensorBoard, read as it reads a run (the killed run's points after its checkpoint dropped): every numeric
    // value of metrics.jsonl, at its step, as f32.
    let want: Vec<(i64, String, f32)> = records
        .iter()
        .flat_map(|r| {
            let step = r["step"].as_i64().unwrap();
            r.iter().filter(|(k, _)| *k != "step").filter_map(move |(k, v)| Some((step, k.clone(), v.as_f64()? as f32)))
        })
        .collect();
    let tensorboard = run.path("out/tensorboard");
    assert_eq!(llmtrain_lightning::loggers::tensorboard::read_scalars(&tensorboard).unwrap(), want);
    assert_eq!(std::fs::read_dir(&tensorboard).unwrap().count(), 2, "one event file per session");

    // Lightning's CSV layout: a sorted header holding `step`, one row per record, empty cells for absent names.
    let csv = std::fs::read_to_string(run.path("out/metrics.csv")).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let mut sorted = header.clone();
    sorted.sort();
    assert_eq!(header, sorted);
    assert!(["step", "loss", "lr", "eval_loss"].iter().all(|c| header.contains(c)), "{header:?}");
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), records.len());
    for (row, record) in rows.iter().zip(&records) {
        for (column, cell) in header.iter().zip(row) {
            let step = &record["step"];
            match record.get(*column).and_then(|v| v.as_f64()) {
                // serde_json's parsing of the test's JSONL may differ in the last digit; the CSV holds the value
                // the trainer logged.
                Some(value) => {
                    let written: f64 = cell.parse().unwrap_or(f64::NAN);
                    assert!((written - value).abs() <= 1e-12 * value.abs(), "column {column} at step {step}: {cell}")
                }
                None => assert_eq!(*cell, record.get(*column).map(|v| v.to_string()).unwrap_or_default()),
            }
        }
    }
    let hparams = std::fs::read_to_string(run.path("out/hparams.yaml")).unwrap();
    assert!(hparams.contains("training:\n") && hparams.contains("  max_steps: 24\n"), "{hparams}");
}

#[test]
fn a_logging_section_without_jsonl_or_with_an_unknown_logger_is_one_line() {
    let run = Run::new("\n[logging]\nloggers = [\"csv\"]\n");
    let err = assert_one_line_error(&run.train(&[]), "logging.loggers");
    assert!(err.contains("must include \"jsonl\""), "{err}");
    assert!(!run.path("out").exists(), "nothing written");
    let run = Run::new("\n[logging]\nloggers = [\"jsonl\", \"wandb\"]\n");
    let err = assert_one_line_error(&run.train(&[]), "wandb");
    assert!(err.contains("run.toml"), "{err}");
}

#[test]
fn early_stopping_ends_a_run_that_stops_improving_and_its_count_survives_a_resume() {
    // Every validation after the first fails to improve by 1000: with patience 2, the run validating every 2
    // steps stops at step 6. A first session ends at step 4 (one non-improving validation counted, in its
    // checkpoint); the resumed one must stop at 6 too — with the count lost it would go on to step 10.
    let run =
        Run::new("eval_steps = 2\n\n[early_stopping]\nmonitor = \"eval_loss\"\nmin_delta = 1000.0\npatience = 2\n");
    ok(&run.train(&["--max-steps", "4"]));
    let stdout = ok(&run.train(&["--resume"]));
    assert!(
        stdout.contains("stopped early at step 6: eval_loss did not improve by more than 1000 over 2 validations"),
        "{stdout}"
    );
    assert!(run.path("out/final/model.safetensors").exists() && run.path("out/checkpoint-6").is_dir());
    let metrics = std::fs::read_to_string(run.path("out/metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    assert_eq!(last["step"], 6, "one validation record at the stopping step, none after: {last}");
    assert_eq!(metrics.lines().filter(|l| l.contains("eval_loss") && l.contains("\"step\":6")).count(), 1);
    // The stopped run is finished: a resume changes nothing.
    let before = snapshot(&run.path("out"));
    let stdout = ok(&run.train(&["--resume"]));
    assert!(stdout.contains("nothing to resume") && stdout.contains("stopped early at step 6"), "{stdout}");
    assert_eq!(snapshot(&run.path("out")), before);
}

#[test]
fn an_unknown_monitor_is_one_line_naming_the_logged_metrics() {
    let run = Run::new("eval_steps = 2\n\n[early_stopping]\nmonitor = \"val_loss\"\n");
    let err =
        assert_one_line_error(&run.train(&[]), "early_stopping.monitor: `val_loss` is not a metric this run logs");
    assert!(err.contains("eval_loss") && err.contains("grad_norm"), "{err}");
    assert!(!run.path("out/metrics.jsonl").exists(), "nothing written");
}

/// The `checkpoint-*` directory names of `out`, sorted by step.
fn checkpoint_names(out: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("checkpoint-"))
        .collect();
    names.sort_by_key(|n| n["checkpoint-".len()..].split('-').next().unwrap().parse::<u64>().unwrap());
    names
}

#[test]
fn model_checkpoint_keeps_the_top_k_by_the_monitor_and_resume_best_continues_from_the_best() {
    // Ranked by the highest eval loss (max mode), so the best checkpoints are early ones, not the last.
    let run = Run::new(
        "eval_steps = 2\n\n[model_checkpoint]\nmonitor = \"eval_loss\"\nmode = \"max\"\nsave_top_k = 2\n\
         every_n_train_steps = 2\n",
    );
    ok(&run.train(&["--max-steps", "12"]));
    let metrics = std::fs::read_to_string(run.path("out/metrics.jsonl")).unwrap();
    let mut evals: Vec<(u64, f64)> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|r| Some((r["step"].as_u64()?, r["eval_loss"].as_f64()?)))
        .collect();
    assert_eq!(evals.len(), 6, "a validation every 2 steps: {evals:?}");
    evals.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut kept: Vec<u64> = vec![evals[0].0, evals[1].0, 12];
    kept.sort();
    kept.dedup();
    let names = checkpoint_names(&run.path("out"));
    let expected: Vec<String> = kept
        .iter()
        .map(|step| {
            let value = evals.iter().find(|(s, _)| s == step).unwrap().1;
            format!("checkpoint-{step}-eval_loss={value:.4}")
        })
        .collect();
    assert_eq!(names, expected, "the 2 highest eval losses and the last, each named with its value");

    // --resume best continues from the best one; what came after it moves aside, and since resuming is exact
    // the run ends where it ended before.
    let before = run.final_weights();
    let best = evals[0].0;
    let resumed = run.train(&["--resume", "best", "--max-steps", "12"]);
    ok(&resumed);
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(
        stderr.contains(&format!("checkpoint-{best}-eval_loss=")) && stderr.contains(&format!("(step {best})")),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was deleted"), "{stderr}");
    let aside: Vec<PathBuf> = std::fs::read_dir(run.path("out"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("superseded-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert!(std::fs::read(aside[0].join("final/model.safetensors")).unwrap() == before, "the old final/ kept");
    assert!(aside[0].join("metrics.jsonl").is_file());
    assert!(run.final_weights() == before, "resumed from step {best}: the same end");
    assert_eq!(checkpoint_names(&run.path("out")), names, "the same checkpoints again");
}

#[test]
fn resume_best_without_a_monitor_and_resume_of_a_missing_directory_are_one_line() {
    let run = Run::new("");
    ok(&run.train(&["--max-steps", "4"]));
    let before = snapshot(&run.path("out"));
    assert_one_line_error(&run.train(&["--resume", "best"]), "ranks no checkpoint by a metric");
    assert_one_line_error(
        &run.train(&["--resume", "no/such/checkpoint"]),
        "--resume no/such/checkpoint: not an intact checkpoint",
    );
    assert_eq!(snapshot(&run.path("out")), before, "nothing written");
}

#[test]
fn learning_rate_and_throughput_monitors_add_lightnings_metrics_to_every_training_record() {
    let run = Run::new(
        "\n[logging]\nloggers = [\"jsonl\", \"csv\"]\nlearning_rate_monitor = true\nthroughput_monitor = true\n\
         peak_flops = 1e12\n",
    );
    let out = run.train(&["--max-steps", "4"]);
    ok(&out);
    let metrics = std::fs::read_to_string(run.path("out/metrics.jsonl")).unwrap();
    let training: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|r: &serde_json::Value| r["loss"].is_f64())
        .collect();
    assert_eq!(training.len(), 2, "{metrics}");
    let flops_per_token =
        training[0]["device/flops_per_sec"].as_f64().unwrap() / training[0]["tokens_per_sec"].as_f64().unwrap();
    for record in &training {
        assert_eq!(record["lr-AdamW"], record["lr"], "{record}");
        let (flops, mfu) = (record["device/flops_per_sec"].as_f64().unwrap(), record["device/mfu"].as_f64().unwrap());
        let tokens = record["tokens_per_sec"].as_f64().unwrap();
        assert!(
            (flops / tokens - flops_per_token).abs() < 1e-6 * flops_per_token && (mfu - flops / 1e12).abs() < 1e-15,
            "{record}"
        );
    }
    // The model's training FLOPs per token: hidden 32, 2 layers, vocab 400, seq 32 (see Run::new).
    assert!(flops_per_token > 6.0 * 30_000.0 && flops_per_token < 6.0 * 60_000.0, "{flops_per_token}");
    let header = std::fs::read_to_string(run.path("out/metrics.csv")).unwrap();
    assert!(header.lines().next().unwrap().contains("device/flops_per_sec,device/mfu,"), "{header}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.lines().any(|l| l.contains("\"lr-AdamW\"")), "the progress lines show what the callbacks added");
}

#[test]
fn fast_dev_run_trains_and_validates_a_few_batches_and_writes_nothing() {
    let run = Run::new("\n[trainer]\nfast_dev_run = 2\n");
    let out = run.train(&[]);
    let stdout = ok(&out);
    assert!(stdout.contains("fast_dev_run: 2 step(s) and a validation ran; nothing was written"), "{stdout}");
    assert!(!run.path("out").exists(), "no output directory");
    // Beside an earlier run it runs too, and leaves that run as it was.
    let config = std::fs::read_to_string(run.path("run.toml")).unwrap();
    std::fs::write(run.path("run.toml"), config.replace("fast_dev_run = 2", "fast_dev_run = false")).unwrap();
    ok(&run.train(&["--max-steps", "2"]));
    let before = snapshot(&run.path("out"));
    std::fs::write(run.path("run.toml"), config.replace("fast_dev_run = 2", "fast_dev_run = true")).unwrap();
    let stdout = ok(&run.train(&[]));
    assert!(stdout.contains("fast_dev_run: 1 step(s)"), "{stdout}");
    assert_eq!(snapshot(&run.path("out")), before);
}

#[test]
fn max_epochs_with_limit_train_batches_ends_the_run_after_those_epochs() {
    // 4 micro-batches an epoch, 2 per step (gradient_accumulation_steps = 2): 2 epochs are 4 steps.
    let run = Run::new("\n[trainer]\nmax_epochs = 2\nlimit_train_batches = 4\n");
    let stdout = ok(&run.train(&[]));
    assert!(stdout.contains("stopped early at step 4: max_epochs = 2 reached"), "{stdout}");
    let state = std::fs::read_to_string(run.path("out/checkpoint-4/trainer_state.json")).unwrap();
    let state: serde_json::Value = serde_json::from_str(&state).unwrap();
    assert_eq!(state["data_position"], serde_json::json!({"epoch": 1, "batch_in_epoch": 4}), "{state}");
    let stdout = ok(&run.train(&["--resume"]));
    assert!(stdout.contains("nothing to resume"), "{stdout}");
}

#[test]
fn single_device_strategy_refuses_several_ranks_and_lightning_precision_names_are_accepted() {
    let run = Run::new("\n[trainer]\nstrategy = \"single_device\"\n");
    let config = run.path("run.toml");
    let launch = ["launch", "--num-processes", "2", "--", "train", "--config", config.to_str().unwrap()];
    let out = Command::new(llmtrain_bin()).args(launch).env("LLMTRAIN_CACHE", run.path("cache")).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("strategy = \"single_device\" but this run has 2 ranks"));
    let stdout = ok(&run.train(&["--max-steps", "1", "--mixed-precision", "bf16-mixed"]));
    assert!(stdout.contains("steps: 1"), "{stdout}");
}

#[test]
fn an_unwritable_output_directory_is_one_line() {
    // Root may write anywhere, so "unwritable" is a path through a regular file.
    let run = Run::new("\n[logging]\nloggers = [\"jsonl\", \"csv\", \"tensorboard\"]\n");
    std::fs::write(run.path("taken"), "a file, not a directory").unwrap();
    let out = run.train(&["--output-dir", run.path("taken/out").to_str().unwrap()]);
    let err = assert_one_line_error(&out, "taken/out");
    assert!(err.contains("Not a directory") || err.contains("not a directory"), "{err}");
    assert_eq!(std::fs::read_to_string(run.path("taken")).unwrap(), "a file, not a directory");
}
