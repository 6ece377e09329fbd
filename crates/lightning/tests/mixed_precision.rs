//! Mixed precision through the Accelerator: bf16 and fp16 compute on f32 master weights train like f32 (the
//! same data, 30 steps, losses within a few percent), gradients arrive in f32, and fp16's loss scaling skips
//! overflowing steps without touching the weights, lowering the scale as DeepSpeed does.

use burn::tensor::{DType, FloatDType};
use llmtrain_accel::{Accelerator, AcceleratorConfig, FullFinetune, MixedPrecision};
use llmtrain_core::data::Batch;
use llmtrain_core::model::Compute;
use llmtrain_core::model::compute::precision_dtype;
use llmtrain_core::model::{LlamaModel, ModelConfig};
use llmtrain_core::train::{AdamW, AdamWConfig, LossScaleConfig, batch_loss};
use llmtrain_lightning::{CausalLm, LightningModule};

use crate::common;
use common::{A, options, train_step, weights};

const SEQ: usize = 32;
const VOCAB: usize = 96;

/// Rows counting up from a step-dependent start: easy to learn, so the loss falls quickly.
fn batch(step: usize) -> Batch {
    let rows = 4;
    let input_ids: Vec<u32> =
        (0..rows).flat_map(|r| (0..SEQ).map(move |t| ((step * 13 + r * 29 + t) % VOCAB) as u32)).collect();
    let labels = input_ids.iter().map(|&t| t as i64).collect();
    Batch { rows, seq: SEQ, input_ids, labels, position_ids: None }
}

/// The same initial weights on every call (drawn from a generator of the model's own).
fn model() -> LlamaModel<A> {
    let device = Default::default();
    LlamaModel::<A>::init(&ModelConfig::tiny_llama(VOCAB, 64, 2, 4, 2), &device, 11)
}

/// Per-step losses of `steps` steps at `precision`, and the accelerator for inspection.
fn train(precision: MixedPrecision, loss_scale: LossScaleConfig, steps: usize) -> (Vec<f64>, Accelerator<A>) {
    let config = AcceleratorConfig { mixed_precision: precision, loss_scale, ..Default::default() };
    let mut acc = Accelerator::<A>::single(config).unwrap();
    let mut model = acc.prepare_model(model()).unwrap();
    model.compute.dtype = precision_dtype(precision);
    let mut optimizer = AdamW::new(AdamWConfig::default());
    let losses = (0..steps)
        .map(|step| {
            train_step(&mut acc, &mut model, &mut optimizer, &[batch(step)], options(3e-3, false)).unwrap().loss
        })
        .collect();
    (losses, acc)
}

#[test]
fn bf16_and_fp16_follow_the_f32_loss_curve() {
    let steps = 30;
    let (f32_losses, _) = train(MixedPrecision::No, LossScaleConfig::default(), steps);
    for precision in [MixedPrecision::Bf16, MixedPrecision::Fp16] {
        let (losses, acc) = train(precision, LossScaleConfig::default(), steps);
        let worst = losses.iter().zip(&f32_losses).map(|(a, b)| ((a - b) / b).abs()).fold(0.0, f64::max);
        println!(
            "{precision}: final loss {:.4} vs f32 {:.4}; worst relative difference over {steps} steps {worst:.2e}; \
             skipped steps {}",
            losses[steps - 1],
            f32_losses[steps - 1],
            acc.skipped_steps()
        );
        assert!(losses[steps - 1] < losses[0] * 0.8, "{precision} did not learn: {losses:?}");
        assert!(worst < 0.03, "{precision} strays from f32 by {worst}");
    }
}

#[test]
fn sixteen_bit_compute_keeps_f32_master_weights_and_gradients() {
    let device = Default::default();
    for (precision, dtype) in [(MixedPrecision::Bf16, FloatDType::BF16), (MixedPrecision::Fp16, FloatDType::F16)] {
        let config = AcceleratorConfig { mixed_precision: precision, ..Default::default() };
        let mut acc = Accelerator::<A>::single(config).unwrap();
        // The causal-LM objective computes in the accelerator's precision.
        let compute = Compute { dtype: precision_dtype(acc.config().mixed_precision), ..Compute::default() };
        let module = CausalLm::new(&FullFinetune, compute, device);
        let model = module.configure_net(acc.prepare_model(model()).unwrap());
        assert_eq!(model.compute.dtype, dtype);
        let tokens = llmtrain_core::model::tokens_tensor::<A>(&batch(0).input_ids, 4, &device);
        assert_eq!(model.embed(tokens.clone()).dtype(), DType::from(dtype), "activations in {precision}");
        assert_eq!(model.forward(tokens, None).dtype(), DType::from(dtype), "logits in {precision}");
        let (loss, _) = batch_loss(&model, &batch(0), &device);
        assert_eq!(loss.dtype(), DType::F32, "the loss is taken in f32");
        let grads = loss.backward();
        let grad = model.layers[0].self_attn.q_proj.weight_value().grad(&grads).unwrap();
        assert_eq!(grad.dtype(), DType::F32, "master gradients in f32");
        assert_eq!(model.layers[0].self_attn.q_proj.weight_value().dtype(), DType::F32, "master weights in f32");
    }
}

#[test]
fn fp16_overflow_skips_the_step_and_lowers_the_scale() {
    // A scale of 2^40 makes the fp16 gradients overflow: hysteresis 2 absorbs the first overflow, then each
    // one halves the scale until the gradients fit.
    let scale = LossScaleConfig { initial_scale_power: 40, ..Default::default() };
    let config = AcceleratorConfig { mixed_precision: MixedPrecision::Fp16, loss_scale: scale, ..Default::default() };
    let mut acc = Accelerator::<A>::single(config).unwrap();
    let mut model = acc.prepare_model(model()).unwrap();
    model.compute.dtype = precision_dtype(MixedPrecision::Fp16);
    let mut optimizer = AdamW::new(AdamWConfig::default());
    let mut scales = vec![acc.loss_scale().unwrap()];
    let mut skipped = 0;
    for step in 0..40 {
        let before = weights(&model);
        train_step(&mut acc, &mut model, &mut optimizer, &[batch(step)], options(3e-3, false)).unwrap();
        let changed = weights(&model) != before;
        assert_eq!(changed, !acc.optimizer_step_was_skipped(), "step {step}: skipped steps leave the weights alone");
        skipped += usize::from(acc.optimizer_step_was_skipped());
        scales.push(acc.loss_scale().unwrap());
    }
    println!("fp16 from 2^40: {skipped} skipped steps, scales {scales:?}");
    assert!(skipped >= 2, "2^40 must overflow fp16 gradients");
    assert_eq!(acc.skipped_steps(), skipped as u64);
    assert_eq!(scales[1], scales[0], "hysteresis 2 keeps the scale on the first overflow");
    assert!(*scales.last().unwrap() < 2f64.powi(40) && *scales.last().unwrap() >= 1.0);
    assert_eq!(optimizer.step as usize, 40 - skipped, "AdamW saw only the steps that were taken");
}
