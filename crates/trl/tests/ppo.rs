//! PPO's rollout targets (KL penalty, score placement, GAE, whitening) and one micro-batch's policy and value
//! losses against the last TRL PPOTrainer's (0.29) on fixed tensors (`fixtures/ppo.json`, made by
//! `scripts/make_ppo_fixture.py`).

use std::path::PathBuf;

use burn::tensor::{Tensor, TensorData};
use llmtrain_core::device::CpuBackend as B;
use llmtrain_trl::ppo::loss::{PpoBatch, PpoLoss};
use llmtrain_trl::ppo::targets::{RolloutBatch, TargetSettings};
use serde_json::Value;

fn flat(value: &Value) -> Vec<f64> {
    value
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
        .collect()
}

fn f32s(value: &Value) -> Vec<f32> {
    flat(value).into_iter().map(|v| v as f32).collect()
}

#[test]
fn ppo_targets_and_losses_equal_the_last_trl_ppo_trainers() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ppo.json");
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let device = Default::default();
    let mut worst = (0.0f64, 0.0f64);
    for case in fixture["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let last: Vec<i64> = case["sequence_lengths"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        let (rows, width) = (last.len(), case["logprobs"][0].as_array().unwrap().len());
        let batch = RolloutBatch {
            rows,
            width,
            last,
            logprobs: f32s(&case["logprobs"]),
            ref_logprobs: f32s(&case["ref_logprobs"]),
            values: f32s(&case["values"]),
            scores: case["scores"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect(),
        };
        let f = |key: &str| case[key].as_f64().unwrap();
        let settings = TargetSettings {
            kl_coef: f("kl_coef"),
            k3: case["k3"].as_bool().unwrap(),
            whiten_rewards: case["whiten_rewards"].as_bool().unwrap(),
            gamma: f("gamma"),
            lam: f("lam"),
        };
        let targets = batch.targets(&settings);
        for (key, ours) in [
            ("kl", &targets.kl),
            ("rewards", &targets.rewards),
            ("advantages", &targets.advantages),
            ("returns", &targets.returns),
        ] {
            for (k, (a, b)) in ours.iter().zip(flat(&case[key])).enumerate() {
                assert!((a - b).abs() <= 1e-5, "{name}: {key}[{}][{}]: {a} vs TRL {b}", k / width, k % width);
                worst.0 = worst.0.max((a - b).abs());
            }
        }
        let tensor = |values: Vec<f32>| Tensor::<B, 2>::from_data(TensorData::new(values, [rows, width]), &device);
        let mask = |keep: &dyn Fn(usize, usize) -> bool| {
            tensor((0..rows * width).map(|k| f32::from(u8::from(keep(k / width, k % width)))).collect())
        };
        let parts = PpoLoss { cliprange: f("cliprange"), cliprange_value: f("cliprange_value"), vf_coef: f("vf_coef") }
            .loss(PpoBatch {
                new_logprobs: tensor(f32s(&case["new_logprobs"])),
                old_logprobs: tensor(batch.logprobs.clone()),
                advantages: tensor(targets.advantages.iter().map(|&v| v as f32).collect()),
                returns: tensor(targets.returns.iter().map(|&v| v as f32).collect()),
                old_values: tensor(batch.values.clone()),
                values: tensor(f32s(&case["vpred"])),
                token_mask: mask(&|i, t| batch.is_token(i, t)),
                value_mask: mask(&|i, t| batch.has_value(i, t)),
            });
        let loss = f64::from(parts.loss.into_scalar());
        for (key, ours) in [
            ("loss", loss),
            ("pg_loss", parts.pg_loss),
            ("vf_loss", parts.vf_loss),
            ("pg_clipfrac", parts.pg_clipfrac),
            ("vf_clipfrac", parts.vf_clipfrac),
            ("approxkl", parts.approxkl),
            ("ratio", parts.ratio),
        ] {
            assert!((ours - f(key)).abs() <= 1e-5, "{name}: {key}: {ours} vs TRL {}", f(key));
            worst.1 = worst.1.max((ours - f(key)).abs());
        }
        assert!(parts.pg_clipfrac > 0.0 && parts.vf_clipfrac > 0.0, "{name}: both clip ranges bind");
    }
    eprintln!(
        "parity ppo: targets {:.1e}, losses and figures {:.1e} (largest |llmtrain - TRL 0.29|)",
        worst.0, worst.1
    );
}
