//! `[zero]`: ZeRO stages 1, 2 and 3 on launched ranks against plain data parallelism on the same ranks (DeepSpeed's
//! own test: the same model, data and steps must give the same losses and weights), with accumulation and
//! clipping on, and collectives cut into several windows.

use std::path::Path;

use crate::common::assert_one_line_error;
use crate::launch_common::{
    Job, assert_zero_follows_plain_data_parallelism, curves, max_weight_diff, model_elements, ok, run_zero,
};

#[test]
fn stages_one_two_and_three_follow_plain_data_parallelism_on_two_and_four_ranks() {
    let job = Job::new();
    for world in [2, 4] {
        assert_zero_follows_plain_data_parallelism(&job, world, &[]);
    }
}

#[test]
fn a_zero_run_resumed_from_its_checkpoint_ends_bit_identical_with_the_optimizer_offloaded_or_not() {
    let job = Job::new();
    for (name, stage, offload) in [("resume", 2, "none"), ("resume-offload", 2, "cpu"), ("resume-stage3", 3, "none")] {
        let zero = format!("[zero]\nstage = {stage}\nreduce_bucket_size = 1000\noffload_optimizer = \"{offload}\"");
        run_zero(&job, 2, &[], name, &zero);
        let out = job.path(&format!("out-{name}"));
        let straight = std::fs::read(out.join("final/model.safetensors")).unwrap();
        let (straight_loss, _) = curves(&out);
        let checkpoint = out.join("checkpoint-16");
        let config = job.path(&format!("{name}.toml"));
        let args = ["launch", "--num-processes", "2", "--", "train", "--config", config.to_str().unwrap()];
        let resume = ["--max-steps", "20", "--resume", checkpoint.to_str().unwrap()];
        let resumed = job.run(&[&args[..], &resume[..]].concat());
        let stdout = ok(&resumed);
        assert!(String::from_utf8_lossy(&resumed.stderr).contains("(step 16)"), "{name}: it resumed at step 16");
        assert!(!stdout.contains("nothing to resume"), "{stdout}");
        let (resumed_loss, _) = curves(&out);
        assert_eq!(resumed_loss, straight_loss, "{name}: steps 17-20 again, from each rank's share of the optimizer");
        assert!(
            std::fs::read(out.join("final/model.safetensors")).unwrap() == straight,
            "{name}: final weights differ"
        );
    }
}

#[test]
fn a_stage_or_offload_this_build_cannot_run_is_refused_by_key_before_any_step() {
    let job = Job::new();
    for (zero, needle) in [
        ("stage = 5", "key `zero.stage`: must be 0, 1, 2 or 3, got 5"),
        ("stage = 0\noffload_optimizer = \"cpu\"", "key `zero.offload_optimizer`: needs stage 1, 2 or 3"),
        ("stage = 2\noffload_param = \"cpu\"", "key `zero.offload_param`: needs stage 3"),
        ("stage = 3\noffload_param = \"nvme\"", "key `zero.offload_param`: \"nvme\" (ZeRO-Infinity) is not built"),
        ("stage = 1\nreduce_bucket_size = 0", "key `zero.reduce_bucket_size`: must be a number of elements ≥ 1"),
    ] {
        let config = job.config(2, "bad", "");
        let text = std::fs::read_to_string(&config).unwrap();
        std::fs::write(&config, format!("{text}\n[zero]\n{zero}\n")).unwrap();
        let out = job.run(&["train", "--config", config.to_str().unwrap()]);
        assert_one_line_error(&out, needle);
        assert!(!job.path("out-bad").exists(), "{zero}: nothing written");
    }
}

#[test]
fn a_checkpoint_of_four_ranks_resumes_on_two_and_on_one_with_the_same_rows_per_step() {
    // DeepSpeed's universal checkpoints: each rank's share is saved with the layout, so another number of ranks
    // takes its own shares from the files that hold them; the data position holds when batch_size × ranks stays 8.
    let job = Job::new();
    let name = "universal";
    // Saved by stage 3 (a window per layer) on 4 ranks; resumed by stage 3 on 2 and by stage 1 (one window) on 1.
    run_zero(&job, 4, &[], name, "[zero]\nstage = 3");
    let out = job.path(&format!("out-{name}"));
    let (four, _) = curves(&out);
    let four_final = out.join("four-final.safetensors");
    std::fs::copy(out.join("final/model.safetensors"), &four_final).unwrap();
    let checkpoint = out.join("checkpoint-16");
    let text = std::fs::read_to_string(job.path(&format!("{name}.toml"))).unwrap();
    for (world, batch, stage) in [(2, 4, 3), (1, 8, 1)] {
        let config = job.path(&format!("{name}-{world}.toml"));
        let zero_stage = format!("stage = {stage}");
        std::fs::write(
            &config,
            text.replace("batch_size = 2", &format!("batch_size = {batch}")).replace("stage = 3", &zero_stage),
        )
        .unwrap();
        let world_text = world.to_string();
        let args = ["launch", "--num-processes", &world_text, "--", "train", "--config", config.to_str().unwrap()];
        let resume = ["--max-steps", "20", "--resume", checkpoint.to_str().unwrap()];
        let resumed = job.run(&[&args[..], &resume[..]].concat());
        ok(&resumed);
        assert!(String::from_utf8_lossy(&resumed.stderr).contains("(step 16)"), "{world} ranks resumed at step 16");
        let (loss, _) = curves(&out);
        assert_eq!(loss.len(), 20);
        let loss_diff = four.iter().zip(&loss).map(|(a, b)| (a.1 - b.1).abs()).fold(0.0, f64::max);
        let weight_diff = max_weight_diff(&four_final, &out.join("final/model.safetensors"));
        eprintln!("4 ranks -> {world}: steps 17-20 max |Δloss| {loss_diff:.1e}, final |Δweight| {weight_diff:.1e}");
        assert!(
            loss_diff <= 1e-5 && weight_diff <= 1e-5,
            "{world} ranks: |Δloss| {loss_diff}, |Δweight| {weight_diff}"
        );
    }
    // Another number of rows per step is refused, naming what to keep.
    let config = job.path(&format!("{name}-bad.toml"));
    std::fs::write(&config, &text).unwrap();
    let args = ["launch", "--num-processes", "2", "--", "train", "--config", config.to_str().unwrap()];
    let out = job.run(&[&args[..], &["--max-steps", "20", "--resume", checkpoint.to_str().unwrap()]].concat());
    assert_one_line_error(&out, "reading 8 rows per micro-batch in all; this run has 2 reading 4");
}

/// transformers' documented ZeRO-2 config: every value "auto" (the run's own), the optimizer offloaded, and the
/// overlap and bucket hints DeepSpeed takes.
const HF_ZERO2: &str = r#"{
    "fp16": {"enabled": "auto", "loss_scale": 0, "loss_scale_window": 1000, "initial_scale_power": 16,
             "hysteresis": 2, "min_loss_scale": 1},
    "optimizer": {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"}},
    "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu", "pin_memory": true},
                          "allgather_partitions": true, "allgather_bucket_size": 2e8, "overlap_comm": true,
                          "reduce_scatter": true, "reduce_bucket_size": 1000, "contiguous_gradients": true},
    "gradient_accumulation_steps": "auto", "gradient_clipping": "auto", "steps_per_print": 2000,
    "train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto", "wall_clock_breakdown": false
}"#;

/// transformers' documented ZeRO-3 config ("auto" throughout, stage 3's tuning keys, the optimizer and the
/// parameters offloaded to the CPU).
const HF_ZERO3: &str = r#"{
    "bf16": {"enabled": "auto"},
    "optimizer": {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"}},
    "zero_optimization": {
        "stage": 3,
        "offload_optimizer": {"device": "cpu", "pin_memory": true},
        "offload_param": {"device": "cpu", "pin_memory": true},
        "overlap_comm": true, "contiguous_gradients": true, "sub_group_size": 1e9,
        "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto",
        "stage3_param_persistence_threshold": "auto", "stage3_max_live_parameters": 1e9,
        "stage3_max_reuse_distance": 1e9, "stage3_gather_16bit_weights_on_model_save": true
    },
    "gradient_accumulation_steps": "auto", "gradient_clipping": "auto", "steps_per_print": 2000,
    "train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto", "wall_clock_breakdown": false
}"#;

/// DeepSpeed's own style: numbers, the batch triple given as two of three, Adam (in AdamW mode).
const DEEPSPEED_ZERO1: &str = r#"{
    "train_batch_size": 8,
    "gradient_accumulation_steps": 2,
    "gradient_clipping": 0.5,
    "optimizer": {"type": "Adam", "params": {"lr": 0.01, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0}},
    "fp16": {"enabled": false},
    "zero_optimization": {"stage": 1}
}"#;

#[test]
fn stage_three_with_an_adapter_or_a_preference_objective_is_refused_in_one_line_before_anything_is_written() {
    // An adapter's frozen base is not partitioned, nor are the preference objectives' forwards (yet).
    let job = Job::new();
    for (section, what) in [("[lora]\nr = 4", "not [lora]"), ("[dpo]\nbeta = 0.1", "not [dpo]")] {
        let config = job.config(2, "unsharded", "");
        let text = std::fs::read_to_string(&config).unwrap();
        std::fs::write(&config, format!("{text}\n{section}\n\n[zero]\nstage = 3\n")).unwrap();
        let out = job.run(&["train", "--config", config.to_str().unwrap()]);
        let line = assert_one_line_error(&out, "key `zero.stage`: ZeRO stage 3 trains the causal-LM objectives");
        assert!(line.contains("unsharded.toml"), "{line}");
        assert!(line.contains(what), "{line}");
        assert!(!job.path("out-unsharded").exists(), "{section}: nothing written");
    }
}

#[test]
fn ds_config_files_as_deepspeed_and_transformers_document_them_train_as_the_same_zero_section() {
    let job = Job::new();
    for (name, ds_config, zero) in [
        ("hf-zero2", HF_ZERO2, "[zero]\nstage = 2\nreduce_bucket_size = 1000\noffload_optimizer = \"cpu\""),
        ("ds-zero1", DEEPSPEED_ZERO1, "[zero]\nstage = 1"),
        ("hf-zero3", HF_ZERO3, "[zero]\nstage = 3\noffload_optimizer = \"cpu\"\noffload_param = \"cpu\""),
    ] {
        let reference = format!("{name}-section");
        run_zero(&job, 2, &[], &reference, zero);
        let file = job.path(&format!("{name}.json"));
        std::fs::write(&file, ds_config).unwrap();
        // The same run with the JSON instead of [zero] (its batch triple gives batch 2 × accumulation 2 × 2 ranks).
        let config = job.config(2, name, "gradient_accumulation_steps = 2\nmax_grad_norm = 0.5");
        // transformers' file through `launch --deepspeed` (Accelerate's way), DeepSpeed's through `train --deepspeed`.
        let deepspeed = ["--deepspeed", file.to_str().unwrap()];
        let (launch_flag, train_flag): (&[&str], &[&str]) =
            if name == "hf-zero2" { (&deepspeed, &[]) } else { (&[], &deepspeed) };
        let launch = [&["launch", "--num-processes", "2"][..], launch_flag].concat();
        let train = ["--", "train", "--config", config.to_str().unwrap(), "--max-steps", "20", "--overwrite"];
        let out = job.run(&[&launch[..], &train[..], train_flag].concat());
        assert!(ok(&out).contains("strategy: ZeRO stage"), "{name}");
        let (expected, _) = curves(&job.path(&format!("out-{reference}")));
        let (loss, _) = curves(&job.path(&format!("out-{name}")));
        assert_eq!(loss, expected, "{name}: the ds_config run follows the [zero] run");
    }
}

#[test]
fn a_ds_config_key_that_cannot_be_taken_is_one_line_naming_it() {
    let job = Job::new();
    let cases = [
        (
            r#"{"zero_optimization": {"stage": 2, "cpu_offload": true}}"#,
            "key `zero_optimization.cpu_offload`: not supported",
        ),
        (r#"{"train_batch_size": 7, "train_micro_batch_size_per_gpu": 2}"#, "key `train_batch_size`: does not divide"),
        (
            r#"{"train_batch_size": 16, "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 2}"#,
            "key `train_batch_size`: 16 is not micro-batch 2 × accumulation 2 × 1 rank(s) = 4",
        ),
        (r#"{"optimizer": {"type": "Lamb"}}"#, "key `optimizer.type`: \"Lamb\""),
        (
            r#"{"scheduler": {"type": "WarmupDecayLR", "params": {"total_num_steps": 99}}}"#,
            "key `scheduler.params.total_num_steps`: 99 differs from the run's max_steps (12)",
        ),
        (r#"{"zero_optimization": {"stage": 4}}"#, "key `zero_optimization.stage`: must be 0, 1, 2 or 3"),
        (r#"{"zero_optimization": {"stage": -1}}"#, "key `zero_optimization.stage`: must be a whole number ≥ 0"),
        (r#"{"fp16": {"enabled": true}, "bf16": {"enabled": true}}"#, "key `bf16.enabled`: true, and so is fp16"),
        (r#"{"optimizer": {"type": "AdamW", "params": {"lr": 0}}}"#, "key `optimizer.params.lr`: must be a positive"),
        (r#"{"optimizer": {"type": "AdamW", "params": {"betas": [0.9, 1.5]}}}"#, "key `optimizer.params.betas`"),
    ];
    for (i, (json, needle)) in cases.iter().enumerate() {
        let file = job.path(&format!("bad{i}.json"));
        std::fs::write(&file, json).unwrap();
        let config = job.config(2, "bad", "");
        let out = job.run(&["train", "--config", config.to_str().unwrap(), "--deepspeed", file.to_str().unwrap()]);
        let line = assert_one_line_error(&out, needle);
        assert!(line.contains(&format!("bad{i}.json")), "{line}");
        assert!(!job.path("out-bad").exists(), "{json}: nothing written");
    }
    // Both ways of saying ZeRO at once.
    let file = job.path("ok.json");
    std::fs::write(&file, r#"{"zero_optimization": {"stage": 1}}"#).unwrap();
    let config = job.config(2, "both", "");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}\n[zero]\nstage = 1\n")).unwrap();
    let out = job.run(&["train", "--config", config.to_str().unwrap(), "--deepspeed", file.to_str().unwrap()]);
    assert_one_line_error(&out, "both [zero] and a DeepSpeed config");
}

#[test]
fn a_damaged_shard_or_a_zero_checkpoint_resumed_without_zero_is_refused_in_one_line() {
    let job = Job::new();
    let name = "shards";
    run_zero(&job, 2, &[], name, "[zero]\nstage = 1");
    let checkpoint = job.path(&format!("out-{name}/checkpoint-16"));
    let shard = checkpoint.join("optimizer-rank-1-of-2.safetensors");
    let intact = std::fs::read(&shard).unwrap();
    let resume = |config: &str| {
        let config = job.path(config);
        let args = ["launch", "--num-processes", "2", "--", "train", "--config", config.to_str().unwrap()];
        job.run(&[&args[..], &["--max-steps", "20", "--resume", checkpoint.to_str().unwrap()]].concat())
    };
    // One byte of rank 1's share changed: the checkpoint's digests catch it before anything loads.
    let mut damaged = intact.clone();
    let last = damaged.len() - 1;
    damaged[last] ^= 0x40;
    std::fs::write(&shard, &damaged).unwrap();
    let line = assert_one_line_error(&resume(&format!("{name}.toml")), "not an intact checkpoint");
    assert!(line.contains("optimizer-rank-1-of-2.safetensors"), "{line}");
    std::fs::write(&shard, &intact).unwrap();
    // Plain data parallelism has no way to take the shares.
    let plain = job.config(2, "plain-resume", "gradient_accumulation_steps = 2\nmax_grad_norm = 0.5");
    let text = std::fs::read_to_string(&plain).unwrap().replace("out-plain-resume", &format!("out-{name}"));
    std::fs::write(&plain, text).unwrap();
    assert_one_line_error(&resume("plain-resume.toml"), "the optimizer state is in per-rank ZeRO shards");
    assert_eq!(std::fs::read(&shard).unwrap(), intact, "the checkpoint is kept");
}

#[test]
fn launch_passes_its_deepspeed_config_to_every_rank_process_unless_the_command_names_one() {
    let job = Job::new();
    let config = job.config(2, "dry", "");
    let config = config.to_str().unwrap();
    let dry = ["launch", "--launcher", "mpirun", "--num-processes", "2", "--deepspeed", "ds.json", "--dry-run"];
    let line = ok(&job.run(&[&dry[..], &["--", "train", "--config", config]].concat()));
    assert!(line.contains("train --config") && line.trim_end().ends_with("--deepspeed ds.json"), "{line}");
    let own = ok(&job.run(&[&dry[..], &["--", "train", "--config", config, "--deepspeed", "own.json"]].concat()));
    assert!(own.contains("--deepspeed own.json") && !own.contains("ds.json"), "{own}");
}

#[test]
fn zero_to_hf_writes_a_stage_three_checkpoints_model_as_an_hf_directory_and_refuses_a_damaged_one() {
    let job = Job::new();
    let name = "to-hf";
    run_zero(&job, 2, &[], name, "[zero]\nstage = 3");
    run_zero(&job, 2, &[], "to-hf-plain", "");
    let out = job.path(&format!("out-{name}"));
    let checkpoint = out.join("checkpoint-16");
    let hf = job.path("hf");
    let args = |target: &Path| {
        ["zero-to-hf", checkpoint.to_str().unwrap(), "--out", target.to_str().unwrap()].map(str::to_string)
    };
    let stdout = ok(&job.run(&args(&hf).iter().map(String::as_str).collect::<Vec<_>>()));
    assert!(stdout.contains("the model of step 16"), "{stdout}");
    // The model alone, as transformers reads it: weights, config and tokenizer; no optimizer or trainer state.
    assert!(hf.join("config.json").is_file() && hf.join("tokenizer.json").is_file());
    assert!(!hf.join("trainer_state.json").exists() && !hf.join("optimizer.json").exists());
    // The model at step 16, gathered from the two ranks' shares: plain data parallelism's at that step.
    let plain = job.path("out-to-hf-plain/checkpoint-16/model.safetensors");
    let diff = max_weight_diff(&plain, &hf.join("model.safetensors"));
    eprintln!("zero-to-hf of a stage 3 checkpoint vs plain data parallelism's at step 16: max |Δweight| {diff:.1e}");
    assert!(diff <= 1e-5, "|Δweight| {diff}");
    // A share cut short: refused in one line naming it, nothing written.
    let shard = checkpoint.join("optimizer-rank-1-of-2.safetensors");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() / 2]).unwrap();
    let other = job.path("hf-damaged");
    let line = assert_one_line_error(&job.run(&args(&other).iter().map(String::as_str).collect::<Vec<_>>()), "crc");
    assert!(line.contains("optimizer-rank-1-of-2.safetensors"), "{line}");
    assert!(!other.exists(), "nothing written");
}

#[test]
fn a_stage_three_fp16_run_skips_the_overflowing_steps_plain_data_parallelism_skips_and_follows_it() {
    // A loss scale of 2^20 overflows fp16 at first: the ranks agree to skip (DeepSpeed's dynamic loss scale), and
    // stage 3 must release what the skipped step had gathered and keep its shares untouched.
    let job = Job::new();
    let fp16 = "[memopt]\nmixed_precision = \"fp16\"\ninitial_scale_power = 20";
    let plain = run_zero(&job, 2, &[], "fp16-plain", fp16);
    let stage3 = run_zero(&job, 2, &[], "fp16-zero3", &format!("{fp16}\n\n[zero]\nstage = 3"));
    let skipped = |stdout: &str| stdout.lines().find(|l| l.contains("fp16: ")).map(str::to_owned);
    assert!(skipped(&plain).is_some_and(|l| !l.starts_with("fp16: 0 ")), "the plain run skipped steps: {plain}");
    assert_eq!(skipped(&plain), skipped(&stage3), "the same steps skipped, the same final scale");
    let (plain_loss, _) = curves(&job.path("out-fp16-plain"));
    let (loss, _) = curves(&job.path("out-fp16-zero3"));
    let diff = plain_loss.iter().zip(&loss).map(|(a, b)| (a.1 - b.1).abs()).fold(0.0, f64::max);
    eprintln!("fp16 with skipped steps, stage 3 vs plain on 2 ranks: max |Δloss| {diff:.1e}");
    assert!(diff <= 1e-3, "|Δloss| {diff}");
}

#[test]
fn stage_three_writes_checkpoints_and_final_gathering_one_layer_at_a_time() {
    // Without validation (which gathers the whole model on every rank), no rank's device holds the whole model
    // at once while a stage 3 run trains and writes: rank 0 gathers each layer while it writes it, the other
    // ranks serving.
    let job = Job::new();
    let mut runs = Vec::new();
    for (name, zero) in [("stream-plain", ""), ("stream-zero3", "[zero]\nstage = 3")] {
        let config = job.config(2, name, "gradient_accumulation_steps = 2\nmax_grad_norm = 0.5");
        // Layers that outweigh the embeddings and head (in the tests' usual shape these are more than half).
        let text = std::fs::read_to_string(&config)
            .unwrap()
            .replace("eval_fraction = 0.1", "eval_fraction = 0.0")
            .replace("intermediate_size = 64\nnum_hidden_layers = 2", "intermediate_size = 256\nnum_hidden_layers = 4");
        std::fs::write(&config, format!("{text}\n{zero}\n")).unwrap();
        let args = ["launch", "--num-processes", "2", "--", "train", "--config", config.to_str().unwrap()];
        ok(&job.run(&[&args[..], &["--max-steps", "20"]].concat()));
        runs.push(job.path(&format!("out-{name}")));
    }
    let model = |run: &Path, dir: &str| run.join(dir).join("model.safetensors");
    for dir in ["checkpoint-16", "final"] {
        let diff = max_weight_diff(&model(&runs[0], dir), &model(&runs[1], dir));
        eprintln!("stage 3 {dir} written layer by layer vs plain data parallelism's: max |Δweight| {diff:.1e}");
        assert!(diff <= 1e-5, "{dir}: |Δweight| {diff}");
    }
    let metrics = std::fs::read_to_string(runs[1].join("metrics.jsonl")).unwrap();
    let last: serde_json::Value = metrics.lines().rfind(|l| l.contains("zero/")).unwrap().parse().unwrap();
    let transient = last["zero/transient_peak_bytes"].as_u64().unwrap();
    let whole = 4 * model_elements(&model(&runs[0], "final"));
    eprintln!("stage 3 without validation: held at most {transient} bytes at once, the whole model {whole}");
    assert!(transient < whole, "the largest held at once ({transient} bytes) is less than the whole model ({whole})");
}

#[test]
fn a_stage_three_run_with_a_held_out_accuracy_gathers_the_model_on_every_rank_for_it() {
    // Only rank 0 reads the accuracy examples; every rank must still take part in gathering the model for them.
    let job = Job::new();
    let file = crate::common::root().join("data/sft/test.jsonl");
    let accuracy = format!("accuracy_file = {:?}\naccuracy_samples = 4", file.to_str().unwrap());
    let config = job.config(2, "accuracy", &accuracy);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}\n[zero]\nstage = 3\n")).unwrap();
    let args = ["launch", "--num-processes", "2", "--", "train", "--config", config.to_str().unwrap()];
    ok(&job.run(&args));
    let metrics = std::fs::read_to_string(job.path("out-accuracy/metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().filter(|l| l.contains("\"accuracy_total\":4")).count(), 2, "{metrics}");
}
