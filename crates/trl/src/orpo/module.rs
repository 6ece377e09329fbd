//! ORPO as an [`Objective`]: one forward of the policy over each batch's chosen and rejected sequences gives
//! the NLL, the averaged completion log-probs and the logits' means; no reference network.

use burn::tensor::ElementConversion;
use llmtrain_core::kernels::{AutodiffKernels, Kernels};
use llmtrain_core::model::LlamaModel;
use llmtrain_lightning::{Result, StepContext};

use super::data::OrpoPair;
use super::loss::{OrpoLogps, OrpoLoss, OrpoMetrics};
use crate::dpo::{PairBatch, TokenForward};
use crate::policy::{Objective, Scored};

/// The ORPO objective.
pub struct Orpo {
    loss: OrpoLoss,
    pad_id: u32,
}

/// The logits' means over the chosen and the rejected half (every position but the last, padding included, as
/// TRL averages them).
struct LogitMeans {
    chosen: f64,
    rejected: f64,
}

impl Orpo {
    pub fn new(loss: OrpoLoss, pad_id: u32) -> Self {
        Self { loss, pad_id }
    }

    fn batch(&self, pairs: &[OrpoPair]) -> PairBatch {
        let rows: Vec<(&[u32], &[u32])> = pairs
            .iter()
            .map(|p| (p.chosen.0.as_slice(), p.chosen.1.as_slice()))
            .chain(pairs.iter().map(|p| (p.rejected.0.as_slice(), p.rejected.1.as_slice())))
            .collect();
        PairBatch::from_rows(&rows, self.pad_id, None)
    }
}

/// The loss inputs of one batch under `model`, and the logits' means.
fn forward<B: Kernels>(model: &LlamaModel<B>, batch: &PairBatch, device: &B::Device) -> (OrpoLogps<B>, LogitMeans) {
    let n = batch.pairs;
    let rows = 2 * n;
    let forward = TokenForward::run(model, batch, true, device);
    let completion = batch.target_mask::<B>(&batch.completion, device);
    let real = batch.target_mask::<B>(&batch.real, device);
    let sums = (forward.picked.clone() * completion.clone()).sum_dim(1).reshape([rows]);
    let averaged = sums / completion.sum_dim(1).reshape([rows]).clamp_min(1.0);
    // The NLL: every real target of the chosen half, prompt included, one mean over all of them.
    let chosen_real = real.narrow(0, 0, n);
    let nll = (forward.picked.narrow(0, 0, n) * chosen_real.clone()).sum().neg() / chosen_real.sum().clamp_min(1.0);
    let [_, width, vocab] = forward.logits.dims();
    let count = (n * width * vocab).max(1) as f64;
    let half = |start: usize| forward.logits.clone().narrow(0, start, n).sum().into_scalar().elem::<f64>() / count;
    let logits = LogitMeans { chosen: half(0), rejected: half(n) };
    (OrpoLogps { chosen: averaged.clone().narrow(0, 0, n), rejected: averaged.narrow(0, n, n), nll }, logits)
}

impl<A: AutodiffKernels> Objective<A> for Orpo {
    type Item = OrpoPair;

    fn train(&self, net: &LlamaModel<A>, batch: &[OrpoPair], ctx: &StepContext<'_, A>) -> Result<Scored<A>> {
        let device = ctx.device;
        let (logps, logits) = forward(net, &self.batch(batch), device);
        Ok(Scored {
            loss: self.loss.loss(&logps),
            metrics: self.loss.metrics(&logps).named().to_vec(),
            // Each device's mean, averaged over devices and micro-batches, as TRL logs them.
            ratios: vec![("logits/chosen", logits.chosen, 1.0), ("logits/rejected", logits.rejected, 1.0)],
        })
    }

    fn validate(&self, net: &LlamaModel<A::InnerBackend>, batch: &[OrpoPair], device: &A::Device) -> Result<f64> {
        let (logps, _) = forward(net, &self.batch(batch), device);
        Ok(self.loss.loss(&logps).into_scalar().elem::<f64>())
    }

    fn metric_names(&self) -> Vec<&'static str> {
        OrpoMetrics::NAMES.iter().copied().chain(["logits/chosen", "logits/rejected"]).collect()
    }
}
