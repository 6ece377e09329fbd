//! One optimizer step of any [`LightningModule`]: forward and backward of each micro-batch, gradient sum,
//! all-reduce on the last, global-norm clipping, then the optimizer.

use burn::tensor::ElementConversion;
use burn::tensor::backend::AutodiffBackend;
use llmtrain_accel::{AccelError, Accelerator, Gather, ReduceOp};
use llmtrain_core::interrupt::{self, SIGINT, SIGTERM};
use llmtrain_core::model::lora::{mix_seed, set_dropout_seed};
use llmtrain_core::train::AdamW;

use crate::error::Result;
use crate::module::{LightningModule, Recompute, StepContext};

/// How one optimizer step runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct StepOptions {
    pub lr: f64,
    /// Global-norm clipping threshold.
    pub max_grad_norm: Option<f64>,
    /// Recompute each decoder layer in backward instead of keeping its activations.
    pub gradient_checkpointing: Option<Recompute>,
    /// Optimizer steps done before this one.
    pub step: u64,
    /// The run's seed: each micro-batch's randomness derives from it, the step, the rank and the micro-batch, so
    /// it does not depend on thread timing and a resumed run draws the same.
    pub seed: u64,
    /// Tokens in this rank's micro-batches (summed over ranks into [`StepStats::tokens`]).
    pub tokens: f64,
}

/// What one optimizer step measured (identical on every rank).
#[derive(Debug, Clone, Default)]
pub struct StepStats {
    /// Weighted mean loss over the step's micro-batches on all ranks.
    pub loss: f64,
    /// The module's named metrics, weighted like the loss.
    pub metrics: Vec<(&'static str, f64)>,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Tokens the step trained on, all ranks.
    pub tokens: f64,
    /// SIGINT or SIGTERM, if any rank had been asked to stop by the end of the step (SIGINT when any rank got
    /// one): every rank sees the same answer, so all stop after the same step.
    pub stop_signal: Option<i32>,
}

/// One optimizer step over this rank's `micro` batches; returns the updated network.
///
/// Each micro-batch's summed loss is divided by the step's total weight (all ranks, all micro-batches), so the
/// step's gradient equals that of one large batch: N ranks with micro-batch b train exactly like one rank with
/// batch N·b. As transformers' Trainer does with `num_items_in_batch`, the loss is scaled up by ranks ×
/// accumulation steps to undo the averaging over ranks and the division in [`Accelerator::backward`].
pub fn optimizer_step<A: AutodiffBackend, M: LightningModule<A>>(
    accelerator: &mut Accelerator<A>,
    module: &mut M,
    net: M::Net,
    optimizer: &mut AdamW<A::InnerBackend>,
    micro: &mut [M::Batch],
    options: &StepOptions,
    device: &A::Device,
) -> Result<(M::Net, StepStats)> {
    // Under ZeRO stage 3 the parameters outside the decoder layers are gathered for the step (its update releases
    // them); the layers are gathered one at a time by the forward.
    let net = accelerator.gather_model(net, Gather::Step)?;
    let step_seed = mix_seed(&[options.seed, options.step]);
    let prepare = StepContext {
        device,
        step: options.step,
        micro_batch: 0,
        rank: accelerator.rank(),
        seed: step_seed,
        gradient_checkpointing: options.gradient_checkpointing,
        accelerator: &*accelerator,
    };
    module.prepare_step(&net, micro, &prepare)?;
    let micro = &*micro;
    let local_weight: f64 = micro.iter().map(|b| module.batch_weight(b)).sum();
    let weight = accelerator.reduce(local_weight, ReduceOp::Sum)?.max(1.0);
    let undo_averaging = (accelerator.world_size() * accelerator.config().gradient_accumulation_steps) as f64;
    // Applied to each micro-batch's summed loss; backward divides by the accumulation steps on top.
    let scale = undo_averaging / weight;
    let mut local = vec![0.0f64];
    let mut names: Vec<&'static str> = Vec::new();
    // Ratios: each micro-batch's numerator and denominator sums side by side, reduced with the rest.
    let mut ratio_names: Vec<&'static str> = Vec::new();
    let mut ratio_parts: Vec<Vec<f64>> = Vec::with_capacity(micro.len());
    for (index, batch) in micro.iter().enumerate() {
        let seed = mix_seed(&[step_seed, accelerator.rank() as u64, index as u64]);
        set_dropout_seed(seed);
        accelerator.accumulate();
        let ctx = StepContext {
            device,
            step: options.step,
            micro_batch: index,
            rank: accelerator.rank(),
            seed,
            gradient_checkpointing: options.gradient_checkpointing,
            accelerator: &*accelerator,
        };
        let output = module.training_step(&net, batch, &ctx)?;
        for (name, value) in &output.metrics {
            match names.iter().position(|n| n == name) {
                Some(i) => local[i + 1] += value / weight,
                None => {
                    names.push(name);
                    local.push(value / weight);
                }
            }
        }
        let mut parts = vec![0.0; 2 * ratio_names.len()];
        for &(name, numerator, denominator) in &output.ratios {
            let i = ratio_names.iter().position(|n| *n == name).unwrap_or_else(|| {
                ratio_names.push(name);
                parts.extend([0.0, 0.0]);
                ratio_names.len() - 1
            });
            parts[2 * i] += numerator;
            parts[2 * i + 1] += denominator;
        }
        ratio_parts.push(parts);
        let loss = output.loss;
        let deferred = output.deferred;
        let value = accelerator.backward_with(|grads, divisor| {
            let value = loss.clone().into_scalar().elem::<f64>();
            let step_grads = loss.mul_scalar(scale / divisor).backward();
            grads.accumulate(&net, &step_grads);
            if let Some(deferred) = deferred {
                deferred.backward(&step_grads, &mut |more| grads.accumulate(&net, more))?;
            }
            Ok::<_, llmtrain_core::CoreError>(value)
        })??;
        local[0] += value / weight;
    }
    if !accelerator.sync_gradients() {
        return Err(AccelError::Config(format!(
            "a step got {} micro-batch(es) but gradient_accumulation_steps is {}",
            micro.len(),
            accelerator.config().gradient_accumulation_steps
        ))
        .into());
    }
    // The stop flags ride on the loss's collective: a signal costs the step no extra all-reduce.
    let signal = interrupt::stop_requested();
    let ratios_at = local.len();
    let ratio_width = 2 * ratio_names.len();
    for mut parts in ratio_parts {
        parts.resize(ratio_width, 0.0);
        local.extend(parts);
    }
    let ratios_end = local.len();
    local.push(options.tokens);
    local.push(f64::from(u8::from(signal == Some(SIGINT))));
    local.push(f64::from(u8::from(signal.is_some_and(|s| s != SIGINT))));
    let reduced = accelerator.reduce_many(&local, ReduceOp::Sum)?;
    let flags = &reduced[reduced.len() - 2..];
    let stop_signal = match (flags[0] > 0.0, flags[1] > 0.0) {
        (true, _) => Some(SIGINT),
        (false, true) => Some(SIGTERM),
        (false, false) => None,
    };
    let mut metrics: Vec<(&'static str, f64)> = names.iter().zip(&reduced[1..]).map(|(n, v)| (*n, *v)).collect();
    let tokens = reduced[ratios_end];
    metrics.extend(
        ratio_names
            .iter()
            .enumerate()
            .map(|(i, name)| (*name, mean_of_ratios(&reduced[ratios_at..ratios_end], ratio_width, i))),
    );
    let grad_norm = accelerator.clip_grad_norm(options.max_grad_norm)?;
    module.on_before_optimizer_step(options.step, grad_norm)?;
    let net = accelerator.step(net, optimizer, options.lr)?;
    Ok((net, StepStats { loss: reduced[0], metrics, grad_norm, tokens, stop_signal }))
}

/// Ratio `i` of a step, as TRL and transformers log it: per micro-batch index, the ranks' numerators over their
/// denominators; then the mean over the micro-batches whose denominator is not empty (0 when none is).
/// `parts` holds `width` values per micro-batch: each ratio's numerator and denominator side by side.
fn mean_of_ratios(parts: &[f64], width: usize, i: usize) -> f64 {
    let per_micro: Vec<f64> =
        parts.chunks(width.max(1)).filter(|p| p[2 * i + 1] > 0.0).map(|p| p[2 * i] / p[2 * i + 1]).collect();
    if per_micro.is_empty() { 0.0 } else { per_micro.iter().sum::<f64>() / per_micro.len() as f64 }
}
