//! PPO's loss on one micro-batch, as the last TRL `PPOTrainer` (0.29) computes it: the clipped policy loss
//! `masked_mean(max(−A·ρ, −A·clip(ρ, 1 ± cliprange)))` over the response tokens, the clipped value loss
//! `0.5·masked_mean(max((V − R)², (clip(V, V_old ± cliprange_value) − R)²))` over the value positions (one more),
//! and `pg + vf_coef·vf`; with the figures TRL logs per micro-batch.

use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor};

/// One micro-batch `[rows, width]`. Log-probs hold [`super::targets::INVALID_LOGPROB`] and values 0 outside
/// their masks, as TRL fills them, so the unmasked figures (`approxkl`, `ratio`) average the same positions.
pub struct PpoBatch<B: Backend> {
    pub new_logprobs: Tensor<B, 2>,
    pub old_logprobs: Tensor<B, 2>,
    pub advantages: Tensor<B, 2>,
    pub returns: Tensor<B, 2>,
    pub old_values: Tensor<B, 2>,
    pub values: Tensor<B, 2>,
    /// 1 on response tokens, 1 on value positions.
    pub token_mask: Tensor<B, 2>,
    pub value_mask: Tensor<B, 2>,
}

/// The clip ranges and the value loss's weight.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PpoLoss {
    pub cliprange: f64,
    pub cliprange_value: f64,
    pub vf_coef: f64,
}

/// A micro-batch's loss and TRL's per-micro-batch figures.
pub struct PpoLossParts<B: Backend> {
    pub loss: Tensor<B, 1>,
    pub pg_loss: f64,
    pub vf_loss: f64,
    pub pg_clipfrac: f64,
    pub vf_clipfrac: f64,
    pub approxkl: f64,
    pub ratio: f64,
}

impl PpoLoss {
    pub fn loss<B: Backend>(&self, batch: PpoBatch<B>) -> PpoLossParts<B> {
        let PpoBatch { new_logprobs, old_logprobs, advantages, returns, old_values, values, token_mask, value_mask } =
            batch;
        // TRL divides by the mask's sum as is; a micro-batch without a response token would make 0/0 and poison the
        // step, so it contributes 0 here instead.
        let masked_mean =
            |x: Tensor<B, 2>, mask: &Tensor<B, 2>| (x * mask.clone()).sum() / mask.clone().sum().clamp_min(1.0);
        let scalar = |t: Tensor<B, 1>| t.into_scalar().elem::<f64>();

        let clipped_values = values
            .clone()
            .max_pair(old_values.clone() - self.cliprange_value)
            .min_pair(old_values + self.cliprange_value);
        let vf_losses1 = (values - returns.clone()).powi_scalar(2);
        let vf_losses2 = (clipped_values - returns).powi_scalar(2);
        let vf_clipfrac = scalar(masked_mean(vf_losses2.clone().greater(vf_losses1.clone()).float(), &value_mask));
        let vf_loss = masked_mean(vf_losses1.max_pair(vf_losses2), &value_mask) * 0.5;

        let diff = new_logprobs - old_logprobs;
        let ratio = diff.clone().exp();
        let pg_losses = advantages.clone().neg() * ratio.clone();
        let pg_losses2 = advantages.neg() * ratio.clone().clamp(1.0 - self.cliprange, 1.0 + self.cliprange);
        let pg_clipfrac = scalar(masked_mean(pg_losses2.clone().greater(pg_losses.clone()).float(), &token_mask));
        let pg_loss = masked_mean(pg_losses.max_pair(pg_losses2), &token_mask);

        let approxkl = scalar(diff.detach().powi_scalar(2).mean()) * 0.5;
        let ratio = scalar(ratio.detach().mean());
        let (pg, vf) = (scalar(pg_loss.clone().detach()), scalar(vf_loss.clone().detach()));
        PpoLossParts {
            loss: pg_loss + vf_loss * self.vf_coef,
            pg_loss: pg,
            vf_loss: vf,
            pg_clipfrac,
            vf_clipfrac,
            approxkl,
            ratio,
        }
    }
}
