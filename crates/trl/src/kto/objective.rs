//! KTO as an [`Objective`]: one forward of the policy over each micro-batch's rows and their KL pairs, the
//! reference's log-probs of the same, the loss of [`KtoLoss`] and KTOTrainer's metrics.

use burn::module::AutodiffModule;
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor};
use llmtrain_core::kernels::{AutodiffKernels, Kernels};
use llmtrain_core::model::LlamaModel;
use llmtrain_lightning::{Result, StepContext};

use super::data::KtoItem;
use super::loss::{KtoLogps, KtoLoss};
use crate::dpo::{PairBatch, RowStats, sequence_logps, sequence_logps_with_stats};
use crate::policy::{Objective, Scored};
use crate::reference::{Reference, stored};

/// What KTOTrainer logs, all as ratios over the step's micro-batches and ranks.
const METRICS: [&str; 9] = [
    "kl",
    "rewards/chosen",
    "rewards/rejected",
    "logps/chosen",
    "logps/rejected",
    "rewards/margins",
    "logits/chosen",
    "logits/rejected",
    "entropy",
];

/// The KTO objective.
pub struct Kto<B: Kernels> {
    loss: KtoLoss,
    reference: Reference<B>,
    pad_id: u32,
    max_length: Option<usize>,
}

impl<B: Kernels> Kto<B> {
    pub fn new(loss: KtoLoss, reference: Reference<B>, pad_id: u32, max_length: Option<usize>) -> Self {
        Self { loss, reference, pad_id, max_length }
    }

    /// The rows, then their KL pairs, as one batch.
    pub fn collate(items: &[KtoItem], pad_id: u32, max_length: Option<usize>) -> PairBatch {
        let rows: Vec<(&[u32], &[u32])> = items
            .iter()
            .map(|i| (i.prompt.as_slice(), i.completion.as_slice()))
            .chain(items.iter().map(|i| (i.prompt.as_slice(), i.kl_completion.as_slice())))
            .collect();
        PairBatch::from_rows(&rows, pad_id, max_length)
    }

    /// The loss inputs of `items` given the policy's log-probs of `batch` on backend `C`.
    fn logps<C: Backend>(&self, policy: Tensor<C, 1>, reference: Tensor<C, 1>, items: &[KtoItem]) -> KtoLogps<C> {
        let n = items.len();
        KtoLogps {
            policy: policy.clone().narrow(0, 0, n),
            policy_kl: policy.narrow(0, n, n).detach(),
            reference: reference.clone().narrow(0, 0, n),
            reference_kl: reference.narrow(0, n, n),
            desirable: items.iter().map(|item| item.desirable).collect(),
        }
    }

    fn reference_logps(
        &self,
        policy: impl FnOnce() -> LlamaModel<B>,
        items: &[KtoItem],
        batch: &PairBatch,
        device: &B::Device,
    ) -> Result<Tensor<B, 1>> {
        let precomputed = || stored(items.iter().map(|item| item.reference_logps));
        self.reference.logps(policy, precomputed, batch, device)
    }
}

impl<A: AutodiffKernels> Objective<A> for Kto<A::InnerBackend> {
    type Item = KtoItem;

    fn train(&self, net: &LlamaModel<A>, items: &[KtoItem], ctx: &StepContext<'_, A>) -> Result<Scored<A>> {
        let device = ctx.device;
        let batch = Self::collate(items, self.pad_id, self.max_length);
        let (policy, stats) = sequence_logps_with_stats(net, &batch, device);
        let reference = self.reference_logps(|| net.valid(), items, &batch, device)?;
        let logps = self.logps(policy, Tensor::from_inner(reference), items);
        let rewards = self.rewards(&logps);
        // TRL gathers from every device, per micro-batch, the KL estimates (averaged, then clamped) and the
        // reward sums and counts its margin compares: one collective.
        let by_kind = |want: bool| rewards.iter().zip(&logps.desirable).filter(move |(_, y)| **y == want);
        let sums = |want: bool| [by_kind(want).map(|(r, _)| r).sum::<f64>(), by_kind(want).count() as f64];
        let local = [[self.loss.kl_mean(&logps)].as_slice(), &sums(true), &sums(false)].concat();
        let all = ctx.sum_over_ranks(&local)?;
        let kl = KtoLoss::kl(all[0] / ctx.world_size() as f64);
        let margin = if all[2] > 0.0 && all[4] > 0.0 { (all[1] / all[2] - all[3] / all[4], 1.0) } else { (0.0, 0.0) };
        let loss = self.loss.loss(&logps, kl);
        Ok(Scored { loss, metrics: Vec::new(), ratios: self.ratios(&logps, &rewards, kl, margin, &stats) })
    }

    fn validate(&self, net: &LlamaModel<A::InnerBackend>, items: &[KtoItem], device: &A::Device) -> Result<f64> {
        let batch = Self::collate(items, self.pad_id, self.max_length);
        let reference = self.reference_logps(|| net.clone(), items, &batch, device)?;
        let logps = self.logps(sequence_logps(net, &batch, device), reference, items);
        // One rank's held-out batches differ in number from another's, so no collective here: each rank's own.
        let kl = KtoLoss::kl(self.loss.kl_mean(&logps));
        Ok(self.loss.loss(&logps, kl).into_scalar().elem::<f64>())
    }

    fn metric_names(&self) -> Vec<&'static str> {
        METRICS.to_vec()
    }
}

impl<B: Kernels> Kto<B> {
    /// Each row's implicit reward β(log π − log π_ref).
    fn rewards<C: Backend>(&self, l: &KtoLogps<C>) -> Vec<f64> {
        host(l.policy.clone() - l.reference.clone()).iter().map(|d| d * self.loss.beta).collect()
    }

    /// KTOTrainer's metrics as (name, numerator, denominator): the KL estimate and the margin (both over all
    /// ranks already); rewards and log-probs summed over the desirable (`chosen`) and undesirable (`rejected`)
    /// rows and divided by their counts; logits' means and entropy per completion token of the rows (not of
    /// their KL pairs).
    fn ratios<C: Backend>(
        &self,
        l: &KtoLogps<C>,
        rewards: &[f64],
        kl: f64,
        margin: (f64, f64),
        stats: &RowStats,
    ) -> Vec<(&'static str, f64, f64)> {
        let policy = host(l.policy.clone());
        let n = l.desirable.len();
        let is = |want: bool| move |row: usize| row < n && l.desirable[row] == want;
        let count = |want: bool| l.desirable.iter().filter(|&&y| y == want).count() as f64;
        let (chosen, rejected) = (count(true), count(false));
        let tokens = |want: bool| RowStats::sum(&stats.tokens, is(want));
        // In METRICS' order.
        let parts = [
            (kl, 1.0),
            (RowStats::sum(rewards, is(true)), chosen),
            (RowStats::sum(rewards, is(false)), rejected),
            (RowStats::sum(&policy, is(true)), chosen),
            (RowStats::sum(&policy, is(false)), rejected),
            margin,
            (RowStats::sum(&stats.mean_logits, is(true)), tokens(true)),
            (RowStats::sum(&stats.mean_logits, is(false)), tokens(false)),
            (RowStats::sum(&stats.entropy, |row| row < n), tokens(true) + tokens(false)),
        ];
        METRICS.iter().zip(parts).map(|(&name, (numerator, denominator))| (name, numerator, denominator)).collect()
    }
}

/// A column's values on the host.
fn host<C: Backend>(t: Tensor<C, 1>) -> Vec<f64> {
    t.detach().into_data().convert::<f64>().to_vec::<f64>().unwrap_or_default()
}
