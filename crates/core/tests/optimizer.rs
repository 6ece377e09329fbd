//! AdamW, clipping and gradient accumulation against PyTorch (fixture from scripts/make_fixtures.py).

use std::path::Path;

use burn::backend::Autodiff;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use llmtrain_core::device::CpuBackend;
use llmtrain_core::hf;
use llmtrain_core::train::{AdamW, AdamWConfig, GradientBuffer, causal_lm_loss, causal_lm_loss_parts, clip_grad_norm};

type A = Autodiff<CpuBackend>;

fn fixture() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama_gqa_tied")
}

fn floats(st: &safetensors::SafeTensors, name: &str) -> Vec<f32> {
    st.tensor(name).unwrap().data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

#[test]
fn three_adamw_steps_with_clipping_match_torch() {
    let device = Default::default();
    let (mut model, _) = hf::load_model::<A>(&fixture(), &device).unwrap();
    let bytes = std::fs::read(fixture().join("train_expected.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let batch: Vec<i64> =
        st.tensor("batch").unwrap().data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect();
    let tokens = Tensor::<A, 2, Int>::from_data(TensorData::new(batch, [2, 12]), &device);
    let mut optimizer = AdamW::new(AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 });
    let (want_losses, want_norms) = (floats(&st, "losses"), floats(&st, "grad_norms"));
    for step in 0..3 {
        let loss = causal_lm_loss(model.forward(tokens.clone(), None), tokens.clone());
        let value: f32 = loss.clone().into_scalar().elem();
        let mut grads = GradientBuffer::default();
        grads.accumulate(&model, &loss.backward());
        let norm = clip_grad_norm(&mut grads, Some(0.5));
        model = optimizer.step(model, &mut grads, 1e-2);
        assert!((value - want_losses[step]).abs() < 1e-5, "step {step}: loss {value} vs {}", want_losses[step]);
        assert!((norm as f32 - want_norms[step]).abs() < 1e-4, "step {step}: norm {norm} vs {}", want_norms[step]);
    }
    let ours: std::collections::HashMap<String, Vec<f32>> =
        hf::model_tensors(&model).into_iter().map(|(n, t)| (n, t.values)).collect();
    for name in [
        "model.embed_tokens.weight",
        "model.layers.0.input_layernorm.weight",
        "model.layers.1.mlp.down_proj.weight",
        "model.layers.0.self_attn.q_proj.weight",
    ] {
        let want = floats(&st, name);
        let diff = ours[name].iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        // Adam normalises each update to about lr in size, so gradient elements near zero turn float rounding
        // in the forward/backward into weight differences of a small fraction of lr (1e-2 here).
        assert!(diff < 5e-5, "{name}: max |Δ| {diff}");
    }
}

/// Gradients of one batch of 8 rows, and of 4 micro-batches of 2 rows each scaled by the total token count.
#[test]
fn four_micro_batches_of_two_equal_one_batch_of_eight() {
    let device = Default::default();
    let (model, _) = hf::load_model::<A>(&fixture(), &device).unwrap();
    let rows: Vec<i64> = (0..8 * 10).map(|i| ((i * 37 + i / 10 * 11) % 300) as i64).collect();
    // Some ignored labels so the micro-batches score different numbers of tokens.
    let mut labels = rows.clone();
    for i in [3usize, 14, 15, 47, 71] {
        labels[i] = -100;
    }
    let tensor = |v: &[i64], n: usize| Tensor::<A, 2, Int>::from_data(TensorData::new(v.to_vec(), [n, 10]), &device);

    let mut big = GradientBuffer::default();
    let loss = causal_lm_loss(model.forward(tensor(&rows, 8), None), tensor(&labels, 8));
    big.accumulate(&model, &loss.backward());

    let scored = labels.chunks(10).map(|r| r[1..].iter().filter(|&&l| l != -100).count()).sum::<usize>() as f64;
    let mut small = GradientBuffer::default();
    for k in 0..4 {
        let range = k * 20..(k + 1) * 20;
        let (sum, _) =
            causal_lm_loss_parts(model.forward(tensor(&rows[range.clone()], 2), None), tensor(&labels[range], 2));
        small.accumulate(&model, &sum.div_scalar(scored).backward());
    }
    let norm_big = big.global_norm();
    assert!((norm_big - small.global_norm()).abs() < 1e-6 * norm_big.max(1.0));
    let diff = big.max_abs_diff(&small);
    assert!(diff < 1e-5, "max |Δgrad| = {diff}");
}
