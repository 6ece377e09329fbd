//! `llmtrain train` with `[grpo]` or `[rloo]`: the online trainers sample their own completions from the policy,
//! score them and train, on the tiny policy and tokenizer of llmtrain-trl's fixtures.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::common::{assert_one_line_error, llmtrain, root};
use crate::launch_common::ok;

fn fixtures() -> PathBuf {
    root().join("crates/trl/tests/fixtures")
}

/// A directory with `prompts.jsonl`: one-digit sums with their answers.
fn job() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let rows: String = (0..16)
        .map(|i| format!("{{\"prompt\": \"{} + {} =\", \"answer\": \"{}\"}}\n", i % 5, i % 4, i % 5 + i % 4))
        .collect();
    std::fs::write(dir.path().join("prompts.jsonl"), rows).unwrap();
    dir
}

/// Writes `<name>.toml` in `dir`: `section` on the fixture policy, 4 completions per micro-batch.
fn config(dir: &Path, name: &str, training: &str, section: &str) -> PathBuf {
    let fixtures = fixtures();
    let text = format!(
        "[model]\npath = \"{policy}\"\n\n[tokenizer]\npath = \"{tokenizer}\"\n\n\
         [data]\nfiles = [\"prompts.jsonl\"]\nseq_len = 64\nbatch_size = 4\neval_fraction = 0.25\n\n\
         [training]\nlogging_steps = 1\nlearning_rate = 1e-3\n{training}\n\n[output]\ndir = \"out-{name}\"\n\n{section}\n",
        policy = fixtures.join("dpo_policy").display(),
        tokenizer = fixtures.join("dpo_tokenizer").display(),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn records(dir: &Path, name: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(dir.join(format!("out-{name}/metrics.jsonl"))).unwrap();
    text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()).filter(|r| r.get("loss").is_some()).collect()
}

const REWARDS: &str = "reward_funcs = [\"exact_match\", \"soft_overlong_punishment\"]\nreward_weights = [1.0, 0.5]\n\
                       max_completion_length = 6\nsoft_punish_cache = 2\n";

#[test]
fn grpo_and_rloo_sample_score_and_train_with_trls_figures_the_same_every_run() {
    let dir = job();
    let cases = [
        ("dapo", format!("[grpo]\nnum_generations = 4\n{REWARDS}")),
        ("grpo", format!("[grpo]\nnum_generations = 4\nloss_type = \"grpo\"\nbeta = 0.04\n{REWARDS}")),
        ("dr_grpo", format!("[grpo]\nnum_generations = 2\nloss_type = \"dr_grpo\"\nnum_iterations = 2\n{REWARDS}")),
        ("rloo", format!("[rloo]\nnum_generations = 4\n{REWARDS}")),
        // Every completion cut at one token and masked: micro-batches with no counted token add 0, not NaN.
        (
            "masked",
            "[grpo]\nnum_generations = 4\nmax_completion_length = 1\nmask_truncated_completions = true\n\
             reward_funcs = [\"exact_match\", \"soft_overlong_punishment\"]\nsoft_punish_cache = 1\n"
                .to_string(),
        ),
        // The reference of a LoRA run is the policy with its adapters disabled.
        (
            "lora",
            format!(
                "[grpo]\nnum_generations = 4\nbeta = 0.1\n{REWARDS}\n[lora]\nr = 4\nalpha = 8\ntarget_modules = \"all-linear\"\n"
            ),
        ),
    ];
    for (name, section) in &cases {
        let path = config(dir.path(), name, "max_steps = 2\ngradient_accumulation_steps = 2", section);
        let stdout = ok(&llmtrain(&["train", "--config", path.to_str().unwrap()]));
        let records = records(dir.path(), name);
        assert_eq!(records.len(), 2, "{name}: {stdout}");
        for key in [
            "reward",
            "reward_std",
            "frac_reward_zero_std",
            "rewards/exact_match/mean",
            "rewards/soft_overlong_punishment/std",
            "completions/mean_length",
            "completions/clipped_ratio",
            "entropy",
            "clip_ratio/region_mean",
        ] {
            assert!(records[0][key].as_f64().is_some_and(f64::is_finite), "{name}: no {key} in {}", records[0]);
        }
        assert!(stdout.contains("held-out held_out/exact_match (4 prompts): "), "{name}: {stdout}");
        assert!(records.iter().all(|r| r["grad_norm"].as_f64().is_some_and(f64::is_finite)), "{name}: {records:?}");
        let length = records[0]["completions/mean_length"].as_f64().unwrap();
        assert!((1.0..=6.0).contains(&length), "{name}: completions are 1 to 6 tokens: {length}");
        if ["grpo", "rloo", "lora"].contains(name) {
            assert!(records[0]["kl"].as_f64().is_some(), "{name} logs the KL to the reference");
        }
        let written = if *name == "lora" { "adapter_model.safetensors" } else { "model.safetensors" };
        assert!(dir.path().join(format!("out-{name}/final/{written}")).is_file(), "{name}: {stdout}");
        if *name == "lora" {
            assert!(stdout.contains("the policy with its adapters disabled"), "{stdout}");
        }
        // Seeded sampling: a second run draws the same completions and logs the same figures.
        let again = format!("{name}-again");
        let path = config(dir.path(), &again, "max_steps = 2\ngradient_accumulation_steps = 2", section);
        ok(&llmtrain(&["train", "--config", path.to_str().unwrap()]));
        let (a, b) = (&records[1], &self::records(dir.path(), &again)[1]);
        for key in ["loss", "reward", "completions/mean_length", "entropy"] {
            assert_eq!(a[key], b[key], "{name}: {key}");
        }
    }
    let summary = std::fs::read_to_string(dir.path().join("out-dapo/metrics.jsonl")).unwrap();
    assert!(summary.contains("held_out/exact_match"), "held-out prompts are scored: {summary}");
}

#[test]
fn online_trainers_refuse_an_unknown_reward_a_group_that_does_not_fit_a_step_and_other_rows() {
    let dir = job();
    let cases = [
        (
            "[grpo]\nreward_funcs = [\"exact\"]\n",
            "",
            "unknown reward function `exact`; expected one of: exact_match, format",
        ),
        (
            "[grpo]\nnum_generations = 3\nreward_funcs = [\"exact_match\"]\n",
            "",
            "num_generations = 3 does not divide the 4 completions of a step (data.batch_size 4 × gradient_accumulation_steps 1 × 1 rank(s))",
        ),
        (
            "[rloo]\nreward_funcs = [\"exact_match\"]\nscale_rewards = \"batch\"\n",
            "",
            "key `rloo.scale_rewards`: is a [grpo] key",
        ),
        ("[grpo]\nreward_funcs = [\"format\"]\n", "", "`format` needs format_pattern"),
        ("[grpo]\nnum_generations = 4\nreward_model = \"nowhere\"\nreward_funcs = []\n", "", "nowhere"),
    ];
    for (i, (section, training, needle)) in cases.iter().enumerate() {
        let path = config(dir.path(), &format!("bad{i}"), &format!("max_steps = 1\n{training}"), section);
        assert_one_line_error(&llmtrain(&["train", "--config", path.to_str().unwrap()]), needle);
    }
    std::fs::write(dir.path().join("prompts.jsonl"), "{\"text\": \"not a prompt\"}\n").unwrap();
    let path =
        config(dir.path(), "text", "max_steps = 1", "[grpo]\nnum_generations = 4\nreward_funcs = [\"exact_match\"]\n");
    assert_one_line_error(&llmtrain(&["train", "--config", path.to_str().unwrap()]), "prompts.jsonl:1: a text row");
}

#[test]
fn grpo_and_rloo_on_two_launched_ranks_follow_one_process_with_the_whole_batch() {
    let dir = job();
    // Groups of 4 over 2 ranks of 2 completions: each group's advantages need both ranks' rewards; RLOO's
    // normalisation takes the whole batch's deviation.
    let cases = [
        ("grpo", format!("[grpo]\nnum_generations = 4\nbeta = 0.04\n{REWARDS}")),
        ("rloo", format!("[rloo]\nnum_generations = 4\nnormalize_advantages = true\n{REWARDS}")),
    ];
    let training = "max_steps = 3\ngradient_accumulation_steps = 2\nseed = 5";
    for (trainer, section) in &cases {
        let (single, ranks) = (format!("{trainer}-single"), format!("{trainer}-ranks"));
        let single_path = config(dir.path(), &single, training, section);
        let ranks_path = config(dir.path(), &ranks, training, section);
        let text = std::fs::read_to_string(&ranks_path).unwrap().replace("batch_size = 4", "batch_size = 2");
        std::fs::write(&ranks_path, text).unwrap();
        ok(&llmtrain(&["train", "--config", single_path.to_str().unwrap()]));
        let stdout =
            ok(&llmtrain(&["launch", "--num-processes", "2", "--", "train", "--config", ranks_path.to_str().unwrap()]));
        assert!(stdout.contains("ranks: 2"), "{trainer}: {stdout}");
        let (one, two) = (records(dir.path(), &single), records(dir.path(), &ranks));
        assert_eq!((one.len(), two.len()), (3, 3), "{trainer}");
        let mut worst = 0.0f64;
        for (a, b) in one.iter().zip(&two) {
            for key in
                ["loss", "reward", "reward_std", "completions/mean_length", "entropy", "clip_ratio/region_mean", "kl"]
            {
                let (x, y) = (a[key].as_f64().unwrap(), b[key].as_f64().unwrap());
                assert!((x - y).abs() <= 1e-5, "{trainer}: step {}: {key}: one process {x}, two ranks {y}", a["step"]);
                worst = worst.max((x - y).abs());
            }
        }
        eprintln!("parity {trainer} 1 process vs 2 ranks: largest difference {worst:.1e}");
    }
}

#[test]
fn ppo_samples_scores_with_the_reward_model_and_trains_policy_and_value_head_and_resumes_exactly() {
    let dir = job();
    let reward = fixtures().join("reward_model");
    let section = format!(
        "[ppo]\nresponse_length = 6\nnum_ppo_epochs = 2\nmissing_eos_penalty = 1.0\nreward_model_path = \"{}\"\n",
        reward.display()
    );
    let training = "max_steps = 4\ngradient_accumulation_steps = 2\nsave_steps = 2";
    let path = config(dir.path(), "ppo", training, &section);
    let stdout = ok(&llmtrain(&["train", "--config", path.to_str().unwrap()]));
    let records = records(dir.path(), "ppo");
    assert_eq!(records.len(), 4, "{stdout}");
    for key in [
        "objective/kl",
        "objective/scores",
        "objective/rlhf_reward",
        "policy/approxkl_avg",
        "policy/clipfrac_avg",
        "loss/policy_avg",
        "loss/value_avg",
        "val/ratio",
    ] {
        assert!(records[0][key].as_f64().is_some_and(f64::is_finite), "no {key} in {}", records[0]);
    }
    // Step 1 trains on fresh rollouts: the policy is the sampler, so the ratio is 1 and the KL to the frozen
    // copy is 0; step 2 trains on the same rollouts with a moved policy.
    assert!((records[0]["val/ratio"].as_f64().unwrap() - 1.0).abs() < 1e-5, "{}", records[0]);
    assert!(records[0]["objective/kl"].as_f64().unwrap().abs() < 1e-5, "{}", records[0]);
    assert_eq!(records[0]["objective/scores"], records[1]["objective/scores"], "epoch 2 reuses the rollouts");
    let out = dir.path().join("out-ppo");
    assert!(out.join("final/model.safetensors").is_file());
    assert!(out.join("checkpoint-2/value_head.mpk").is_file(), "checkpoints keep the value head");
    // Resumed from step 2, the last two steps repeat exactly.
    let resumed = config(dir.path(), "ppo-resumed", training, &section);
    let text = std::fs::read_to_string(&resumed).unwrap().replace("out-ppo-resumed", "out-ppo");
    std::fs::write(&resumed, text).unwrap();
    let checkpoint = out.join("checkpoint-2");
    ok(&llmtrain(&["train", "--config", resumed.to_str().unwrap(), "--resume", checkpoint.to_str().unwrap()]));
    let again = self::records(dir.path(), "ppo");
    let last = |r: &[Value]| r.iter().rev().find(|r| r["step"] == 4).cloned().unwrap();
    for key in ["loss", "loss/value_avg", "objective/scores"] {
        assert_eq!(last(&records)[key], last(&again)[key], "{key} after resuming");
    }
    assert_one_line_error(
        &llmtrain(&["train", "--config", config(dir.path(), "ppo-bad", "max_steps = 1", "[ppo]\n").to_str().unwrap()]),
        "reward_model_path",
    );
}
