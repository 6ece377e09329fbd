//! GRPO's and RLOO's loss on one fixed batch of rollouts against TRL 1.16's `_compute_loss` on the same batch
//! (`fixtures/online.json`, made by `scripts/make_online_fixtures.py`): the per-token log-probs of the completions
//! at the sampling temperature, the loss of every aggregation, and the figures TRL logs with it.

use std::path::PathBuf;

use burn::tensor::ElementConversion;
use llmtrain_core::device::CpuBackend as B;
use llmtrain_core::hf;
use llmtrain_trl::online::loss::{GrpoLossType, OnlineLoss, RolloutLogps};
use llmtrain_trl::online::rollout::{completion_logps, completion_mask, host_rows, padded_rows};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn ids(value: &Value) -> Vec<Vec<u32>> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row.as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect())
        .collect()
}

fn floats(value: &Value) -> Vec<Vec<f32>> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect())
        .collect()
}

fn loss_of(case: &Value) -> OnlineLoss {
    let epsilon_low = case["epsilon"].as_f64().unwrap();
    let epsilon_high = case["epsilon_high"].as_f64().unwrap_or(epsilon_low);
    if case["trainer"] == "rloo" {
        return OnlineLoss::Rloo { epsilon_low, epsilon_high };
    }
    OnlineLoss::Grpo {
        loss_type: case["loss_type"].as_str().unwrap().parse::<GrpoLossType>().unwrap(),
        epsilon_low,
        epsilon_high,
        beta: case["beta"].as_f64().unwrap(),
        bias_correction_kl: case["use_bias_correction_kl"].as_bool().unwrap(),
        max_completion_length: case["max_completion_length"].as_u64().unwrap() as usize,
    }
}

#[test]
fn grpo_and_rloo_losses_on_a_fixed_rollout_batch_equal_trls() {
    let text = std::fs::read_to_string(fixtures().join("online.json")).unwrap();
    let fixture: Value = serde_json::from_str(&text).unwrap();
    let device = Default::default();
    let (policy, _) = hf::load_model::<B>(&fixtures().join("dpo_policy"), &device).unwrap();
    let mut worst = (0.0f64, 0.0f64, 0.0f64);
    for case in fixture["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let (prompts, completions) = (ids(&case["prompts"]), ids(&case["completions"]));
        let rows: Vec<(&[u32], &[u32])> =
            prompts.iter().zip(&completions).map(|(p, c)| (p.as_slice(), c.as_slice())).collect();
        let lengths: Vec<usize> = completions.iter().map(Vec::len).collect();
        let temperature = case["temperature"].as_f64().unwrap();
        let forward = completion_logps(&policy, &rows, temperature, 0, &device);
        for (ours, theirs) in host_rows(forward.logps.clone(), &lengths).iter().zip(floats(&case["per_token_logps"])) {
            for (a, b) in ours.iter().zip(&theirs) {
                worst.0 = worst.0.max(f64::from((a - b).abs()));
            }
        }
        let width = forward.width;
        let mask = completion_mask::<B>(lengths.iter().copied(), width, &device);
        let tensor = |key: &str| {
            let rows = floats(&case[key]);
            padded_rows::<B>(&rows.iter().map(Vec::as_slice).collect::<Vec<_>>(), width, &device)
        };
        let advantages: Vec<f32> = floats(&serde_json::json!([case["advantages"]]))[0].clone();
        let loss = loss_of(case);
        let sums = loss.sums(RolloutLogps {
            logps: forward.logps,
            mask: mask.clone(),
            old: Some(tensor("old_per_token_logps")),
            reference: Some(tensor("ref_per_token_logps")),
            advantages: burn::tensor::Tensor::from_data(advantages.as_slice(), &device),
        });
        let weight: f64 = lengths.iter().map(|&n| loss.row_weight(n)).sum();
        let ours = sums.loss.into_scalar().elem::<f64>() / weight;
        let theirs = case["loss"].as_f64().unwrap();
        assert!((ours - theirs).abs() <= 1e-5, "{name}: loss {ours} vs TRL {theirs}");
        worst.1 = worst.1.max((ours - theirs).abs());
        let tokens: f64 = lengths.iter().sum::<usize>() as f64;
        let entropy = (forward.entropy * mask).sum().into_scalar().elem::<f64>() / tokens;
        let mut figures = vec![
            ("entropy", entropy),
            ("clip_ratio/low_mean", sums.clipped_low / sums.clip_count),
            ("clip_ratio/high_mean", sums.clipped_high / sums.clip_count),
            ("clip_ratio/region_mean", sums.clipped_region / sums.clip_count),
        ];
        if let Some(kl) = sums.kl {
            figures.push(("kl", kl / tokens));
        }
        for (key, ours) in figures {
            let theirs = case["metrics"][key].as_f64().unwrap_or_else(|| panic!("{name}: TRL logged no {key}"));
            assert!((ours - theirs).abs() <= 1e-5, "{name}: {key} {ours} vs TRL {theirs}");
            worst.2 = worst.2.max((ours - theirs).abs());
        }
    }
    eprintln!(
        "parity online: per-token log-probs {:.1e}, losses {:.1e}, figures {:.1e} (largest |llmtrain - TRL|)",
        worst.0, worst.1, worst.2
    );
}
