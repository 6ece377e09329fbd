//! `[zero]`: ZeRO stages 1 and 2 on launched ranks against plain data parallelism on the same ranks (DeepSpeed's
//! own test: the same model, data and steps must give the same losses and weights), with accumulation and
//! clipping on, and collectives cut into several windows.

use crate::common::assert_one_line_error;
use crate::launch_common::{Job, assert_zero_follows_plain_data_parallelism, curves, ok, run_zero};

#[test]
fn stages_one_and_two_follow_plain_data_parallelism_on_two_and_four_ranks() {
    let job = Job::new();
    for world in [2, 4] {
        assert_zero_follows_plain_data_parallelism(&job, world, &[]);
    }
}

#[test]
fn a_zero_run_resumed_from_its_checkpoint_ends_bit_identical() {
    let job = Job::new();
    let name = "resume";
    run_zero(&job, 2, &[], name, "[zero]\nstage = 2\nreduce_bucket_size = 1000");
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
