//! The policy losses of the online trainers on one micro-batch of rollouts, as TRL 1.16 computes them: GRPO's
//! per-token clipped ratio with the k3 KL term and its three aggregations, and RLOO's per-sequence clipped ratio.
//!
//! Each returns a summed loss for the Trainer to divide by the step's total weight
//! ([`OnlineLoss::row_weight`]), which is how TRL's normalisers come out over micro-batches and ranks: `grpo` is
//! a mean over sequences of their token means (weight: sequences), `dr_grpo` a sum over tokens divided by
//! sequences × `max_completion_length`, `dapo` a sum over tokens divided by the tokens of the whole batch
//! (TRL's `num_items_in_batch`), RLOO a mean over sequences.

use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor};

/// GRPO's aggregation (`loss_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpoLossType {
    Grpo,
    DrGrpo,
    Dapo,
}

impl std::str::FromStr for GrpoLossType {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        match name {
            "grpo" => Ok(Self::Grpo),
            "dr_grpo" => Ok(Self::DrGrpo),
            "dapo" => Ok(Self::Dapo),
            other => Err(format!("unknown GRPO loss_type `{other}`; expected one of: grpo, dr_grpo, dapo")),
        }
    }
}

/// Which loss, with its coefficients.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OnlineLoss {
    Grpo {
        loss_type: GrpoLossType,
        epsilon_low: f64,
        epsilon_high: f64,
        beta: f64,
        /// Multiply the KL term by the ratio (TRL's `use_bias_correction_kl`, on by default).
        bias_correction_kl: bool,
        max_completion_length: usize,
    },
    Rloo {
        epsilon_low: f64,
        epsilon_high: f64,
    },
}

/// One micro-batch as the loss sees it, `[rows, T]` with `T` its longest completion: the policy's log-prob of
/// each completion token (with gradients), which tokens count (1/0), the log-probs when the rollouts were
/// sampled (`None`: the policy's own, detached: ratio 1), the reference's (for GRPO's KL term), and one
/// advantage per row.
pub struct RolloutLogps<B: Backend> {
    pub logps: Tensor<B, 2>,
    pub mask: Tensor<B, 2>,
    pub old: Option<Tensor<B, 2>>,
    pub reference: Option<Tensor<B, 2>>,
    pub advantages: Tensor<B, 1>,
}

/// A micro-batch's summed loss and the sums behind TRL's figures: the clipped shares (over tokens for GRPO,
/// over sequences for RLOO, with their count) and the KL term's sum over tokens.
pub struct LossSums<B: Backend> {
    pub loss: Tensor<B, 1>,
    pub clipped_low: f64,
    pub clipped_high: f64,
    pub clipped_region: f64,
    /// What the clipped shares are counted over: tokens (GRPO) or sequences (RLOO).
    pub clip_count: f64,
    pub kl: Option<f64>,
}

impl OnlineLoss {
    /// A rollout's share of the step's normaliser, from its completion's counted tokens.
    pub fn row_weight(&self, counted_tokens: usize) -> f64 {
        match self {
            Self::Grpo { loss_type: GrpoLossType::Dapo, .. } => counted_tokens as f64,
            Self::Grpo { loss_type: GrpoLossType::DrGrpo, max_completion_length, .. } => *max_completion_length as f64,
            Self::Grpo { loss_type: GrpoLossType::Grpo, .. } | Self::Rloo { .. } => 1.0,
        }
    }

    /// The summed loss of one micro-batch.
    pub fn sums<B: Backend>(&self, batch: RolloutLogps<B>) -> LossSums<B> {
        match *self {
            Self::Grpo { loss_type, epsilon_low, epsilon_high, beta, bias_correction_kl, .. } => {
                grpo(batch, loss_type, (epsilon_low, epsilon_high), beta, bias_correction_kl)
            }
            Self::Rloo { epsilon_low, epsilon_high } => rloo(batch, epsilon_low, epsilon_high),
        }
    }
}

fn grpo<B: Backend>(
    batch: RolloutLogps<B>,
    loss_type: GrpoLossType,
    (epsilon_low, epsilon_high): (f64, f64),
    beta: f64,
    bias_correction_kl: bool,
) -> LossSums<B> {
    let RolloutLogps { logps, mask, old, reference, advantages } = batch;
    let [rows, _] = logps.dims();
    let old = old.unwrap_or_else(|| logps.clone().detach());
    let ratio = (logps.clone() - old).exp();
    let advantages = advantages.reshape([rows, 1]);
    let (per_token, clipped) = clipped_objective(ratio.clone(), advantages, epsilon_low, epsilon_high, &mask);
    let (per_token, kl) = match reference {
        Some(reference) if beta != 0.0 => {
            let diff = reference - logps;
            let kl = diff.clone().exp() - diff - 1.0;
            // The ratio (with its gradient) makes the KL gradient the unbiased reverse-KL one.
            let kl = if bias_correction_kl { kl * ratio } else { kl };
            let kl_sum = scalar((kl.clone().detach() * mask.clone()).sum());
            (per_token + kl * beta, Some(kl_sum))
        }
        _ => (per_token, None),
    };
    let masked = per_token * mask.clone();
    let loss = match loss_type {
        // Each sequence's token mean (a sequence with no counted token contributes 0).
        GrpoLossType::Grpo => (masked.sum_dim(1) / mask.clone().sum_dim(1).clamp_min(1.0)).sum(),
        GrpoLossType::DrGrpo | GrpoLossType::Dapo => masked.sum(),
    };
    LossSums { loss, kl, ..clipped }
}

fn rloo<B: Backend>(batch: RolloutLogps<B>, epsilon_low: f64, epsilon_high: f64) -> LossSums<B> {
    let RolloutLogps { logps, mask, old, advantages, .. } = batch;
    let [rows, _] = logps.dims();
    let sequence = (logps * mask.clone()).sum_dim(1);
    let old = old.map_or_else(|| sequence.clone().detach(), |old| (old * mask).sum_dim(1));
    let ratio = (sequence - old).exp();
    let ones = Tensor::<B, 2>::ones([rows, 1], &ratio.device());
    let (per_sequence, clipped) =
        clipped_objective(ratio, advantages.reshape([rows, 1]), epsilon_low, epsilon_high, &ones);
    LossSums { loss: per_sequence.sum(), kl: None, ..clipped }
}

/// `-min(ρA, clip(ρ, 1 - ε_low, 1 + ε_high)A)` per element, and the shares TRL logs: ratios below the floor
/// with a negative advantage, above the ceiling with a positive one, and either; counted where `mask` is 1.
fn clipped_objective<B: Backend>(
    ratio: Tensor<B, 2>,
    advantages: Tensor<B, 2>,
    epsilon_low: f64,
    epsilon_high: f64,
    mask: &Tensor<B, 2>,
) -> (Tensor<B, 2>, LossSums<B>) {
    let advantages = advantages.expand(ratio.dims());
    let clipped = ratio.clone().clamp(1.0 - epsilon_low, 1.0 + epsilon_high);
    let unclipped_term = ratio.clone() * advantages.clone();
    let clipped_term = clipped * advantages.clone();
    let per_element = unclipped_term.min_pair(clipped_term).neg();
    let ratio = ratio.detach();
    let advantages = advantages.detach();
    let low = ratio.clone().lower_elem(1.0 - epsilon_low).bool_and(advantages.clone().lower_elem(0.0));
    let high = ratio.greater_elem(1.0 + epsilon_high).bool_and(advantages.greater_elem(0.0));
    let region = low.clone().bool_or(high.clone());
    let count = |b: burn::tensor::Tensor<B, 2, burn::tensor::Bool>| scalar((b.float() * mask.clone()).sum());
    let sums = LossSums {
        loss: Tensor::zeros([1], &mask.device()),
        clipped_low: count(low),
        clipped_high: count(high),
        clipped_region: count(region),
        clip_count: scalar(mask.clone().sum()),
        kl: None,
    };
    (per_element, sums)
}

fn scalar<B: Backend>(t: Tensor<B, 1>) -> f64 {
    t.into_scalar().elem::<f64>()
}
