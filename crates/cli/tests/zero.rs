//! `[zero]`: ZeRO stages 1 and 2 on launched ranks against plain data parallelism on the same ranks (DeepSpeed's
//! own test: the same model, data and steps must give the same losses and weights), with accumulation and
//! clipping on, and collectives cut into several windows.

use crate::common::assert_one_line_error;
use crate::launch_common::{Job, curves, max_weight_diff, ok};

/// Runs `name` as `world` launched ranks with `zero` appended to its config; returns its stdout.
fn run(job: &Job, world: usize, name: &str, zero: &str) -> String {
    let config = job.config(2, name, "gradient_accumulation_steps = 2\nmax_grad_norm = 0.5");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}\n{zero}\n")).unwrap();
    let world = world.to_string();
    let args = ["launch", "--num-processes", &world, "--", "train", "--config", config.to_str().unwrap()];
    ok(&job.run(&[&args[..], &["--max-steps", "20"]].concat()))
}

#[test]
fn stages_one_and_two_follow_plain_data_parallelism_on_two_and_four_ranks() {
    let job = Job::new();
    for world in [2, 4] {
        let plain = format!("plain{world}");
        run(&job, world, &plain, "");
        let (plain_loss, _) = curves(&job.path(&format!("out-{plain}")));
        assert_eq!(plain_loss.len(), 20);
        for (stage, bucket) in [(1, 5e8), (2, 5e8), (2, 1000.0)] {
            let name = format!("zero{stage}-{world}-{bucket}");
            let stdout = run(&job, world, &name, &format!("[zero]\nstage = {stage}\nreduce_bucket_size = {bucket}"));
            assert!(stdout.contains(&format!("strategy: ZeRO stage {stage}")), "{stdout}");
            let (loss, _) = curves(&job.path(&format!("out-{name}")));
            let loss_diff = plain_loss.iter().zip(&loss).map(|(a, b)| (a.1 - b.1).abs()).fold(0.0, f64::max);
            let weight_diff = max_weight_diff(
                &job.path(&format!("out-{plain}/final/model.safetensors")),
                &job.path(&format!("out-{name}/final/model.safetensors")),
            );
            eprintln!(
                "zero stage {stage}, {world} ranks, bucket {bucket}: max |Δloss| {loss_diff:.1e}, |Δweight| {weight_diff:.1e}"
            );
            assert_eq!(loss.len(), 20, "{name}");
            assert!(loss_diff <= 1e-5 && weight_diff <= 1e-5, "{name}: |Δloss| {loss_diff}, |Δweight| {weight_diff}");
            // The checkpoint holds the whole optimizer state, gathered from the ranks' shares.
            let moments = max_weight_diff(
                &job.path(&format!("out-{plain}/checkpoint-16/optimizer.safetensors")),
                &job.path(&format!("out-{name}/checkpoint-16/optimizer.safetensors")),
            );
            assert!(moments <= 1e-5, "{name}: Adam's moments differ from plain data parallelism's by {moments}");
            assert_model_states(&job.path(&format!("out-{name}/metrics.jsonl")), stage, world, bucket);
        }
    }
}

/// Each record's `zero/*` bytes are what rank 0 holds: whole parameters; whole gradients (stage 1) or its share
/// (stage 2); Adam's two moments for its share. With one window its share is ⌈Ψ/N⌉, as the formula says.
fn assert_model_states(metrics: &std::path::Path, stage: u8, world: usize, bucket: f64) {
    let text = std::fs::read_to_string(metrics).unwrap();
    let last: serde_json::Value = text.lines().rfind(|l| l.contains("zero/")).unwrap().parse().unwrap();
    let bytes = |key: &str| last[key].as_u64().unwrap_or_else(|| panic!("no {key} in {last}"));
    let params = bytes("zero/params_bytes") / 4;
    let share = if bucket >= params as f64 { params.div_ceil(world as u64) } else { bytes("zero/optimizer_bytes") / 8 };
    assert!(
        share >= params / world as u64 && share <= params / world as u64 + bucket as u64,
        "share {share} of {params}"
    );
    assert_eq!(bytes("zero/optimizer_bytes"), 8 * share);
    assert_eq!(bytes("zero/grads_bytes"), if stage == 1 { 4 * params } else { 4 * share });
    assert!(bytes("zero/transient_peak_bytes") > 0);
}

#[test]
fn a_zero_run_resumed_from_its_checkpoint_ends_bit_identical() {
    let job = Job::new();
    let name = "resume";
    run(&job, 2, name, "[zero]\nstage = 2\nreduce_bucket_size = 1000");
    let out = job.path(&format!("out-{name}"));
    let straight = std::fs::read(out.join("final/model.safetensors")).unwrap();
    let (straight_loss, _) = curves(&out);
    let checkpoint = out.join("checkpoint-16");
    let config = job.path(&format!("{name}.toml"));
    let args = ["launch", "--num-processes", "2", "--", "train", "--config", config.to_str().unwrap()];
    let resume = ["--max-steps", "20", "--resume", checkpoint.to_str().unwrap()];
    let resumed = job.run(&[&args[..], &resume[..]].concat());
    let stdout = ok(&resumed);
    assert!(String::from_utf8_lossy(&resumed.stderr).contains("(step 16)"), "it resumed at step 16");
    assert!(!stdout.contains("nothing to resume"), "{stdout}");
    let (resumed_loss, _) = curves(&out);
    assert_eq!(resumed_loss, straight_loss, "steps 17-20 again, from the gathered and re-partitioned optimizer");
    assert!(std::fs::read(out.join("final/model.safetensors")).unwrap() == straight, "final weights differ");
}

#[test]
fn a_stage_or_offload_this_build_cannot_run_is_refused_by_key_before_any_step() {
    let job = Job::new();
    for (zero, needle) in [
        ("stage = 5", "key `zero.stage`: must be 0, 1, 2 or 3, got 5"),
        ("stage = 3", "key `zero.stage`: stage 3 (partitioned parameters) is not built yet"),
        ("stage = 2\noffload_optimizer = \"cpu\"", "key `zero.offload_optimizer`: ZeRO-Offload is not built yet"),
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
