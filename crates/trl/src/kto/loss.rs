//! KTO's loss as TRL 1.16's KTOTrainer computes it over one micro-batch: with d = log π(y|x) − log π_ref(y|x)
//! per row and z the KL estimate (the mean of the same difference over the mismatched pairs, at least 0, no
//! gradient), a desirable row loses 1 − σ(β(d − z)) and an undesirable one 1 − σ(β(z − d)), weighted, and the
//! loss is the mean over rows. `apo_zero_unpaired` drops z: 1 − σ(βd) and σ(βd).

use burn::tensor::activation::sigmoid;
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor};
use serde::{Deserialize, Serialize};

/// KTOConfig's `loss_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KtoLossType {
    #[default]
    Kto,
    ApoZeroUnpaired,
}

/// A micro-batch's per-row completion log-prob sums (`[rows]`): the policy's (with gradients) and the
/// reference's, on the rows and on their KL pairs, and which rows are desirable.
pub struct KtoLogps<B: Backend> {
    pub policy: Tensor<B, 1>,
    pub reference: Tensor<B, 1>,
    pub policy_kl: Tensor<B, 1>,
    pub reference_kl: Tensor<B, 1>,
    pub desirable: Vec<bool>,
}

/// KTOConfig's loss settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KtoLoss {
    pub beta: f64,
    pub loss_type: KtoLossType,
    pub desirable_weight: f64,
    pub undesirable_weight: f64,
}

impl KtoLoss {
    /// Whether the loss uses the KL estimate (not for `apo_zero_unpaired`).
    pub fn uses_kl(&self) -> bool {
        self.loss_type != KtoLossType::ApoZeroUnpaired
    }

    /// This micro-batch's share of the KL estimate: the mean over its KL pairs of policy − reference (0 when
    /// the loss does not use it). TRL averages it over the devices, then [`clamps`](Self::kl) it.
    pub fn kl_mean<B: Backend>(&self, l: &KtoLogps<B>) -> f64 {
        if !self.uses_kl() {
            return 0.0;
        }
        (l.policy_kl.clone() - l.reference_kl.clone()).detach().mean().into_scalar().elem::<f64>()
    }

    /// The KL estimate z from the devices' mean of [`kl_mean`](Self::kl_mean): at least 0.
    pub fn kl(mean_over_devices: f64) -> f64 {
        mean_over_devices.max(0.0)
    }

    /// The micro-batch's loss (one element) given the KL estimate `kl`.
    pub fn loss<B: Backend>(&self, l: &KtoLogps<B>, kl: f64) -> Tensor<B, 1> {
        let device = l.policy.device();
        let d = l.policy.clone() - l.reference.clone();
        let beta = self.beta;
        let (good, bad) = match self.loss_type {
            KtoLossType::Kto => {
                (sigmoid((d.clone() - kl) * beta).neg() + 1.0, sigmoid((d.neg() + kl) * beta).neg() + 1.0)
            }
            KtoLossType::ApoZeroUnpaired => (sigmoid(d.clone() * beta).neg() + 1.0, sigmoid(d * beta)),
        };
        let good_weights: Vec<f32> =
            l.desirable.iter().map(|&y| if y { self.desirable_weight as f32 } else { 0.0 }).collect();
        let bad_weights: Vec<f32> =
            l.desirable.iter().map(|&y| if y { 0.0 } else { self.undesirable_weight as f32 }).collect();
        let weights = |w: Vec<f32>| Tensor::<B, 1>::from_data(w.as_slice(), &device);
        (good * weights(good_weights) + bad * weights(bad_weights)).mean()
    }
}
