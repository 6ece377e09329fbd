//! What a PPO rollout batch trains toward, computed once per batch on the host as the last TRL `PPOTrainer`
//! (0.29) computes it: the per-token KL penalty, the reward model's score added one position after the
//! response's last token (where the value mask still holds), GAE (`gamma`, `lam`) over the whole width, returns
//! = advantages + values, and advantages whitened over the response tokens.

/// TRL's log-prob at padding positions (`INVALID_LOGPROB`): equal for the policy and the reference, so the KL there
/// is 0.
pub const INVALID_LOGPROB: f32 = 1.0;

/// One rank's rollout batch, row-major `[rows, width]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutBatch {
    pub rows: usize,
    pub width: usize,
    /// Per row, the index of its last response token (the one before the first padding), -1 for none.
    pub last: Vec<i64>,
    /// Sampling-time log-probs of the response tokens ([`INVALID_LOGPROB`] after `last`).
    pub logprobs: Vec<f32>,
    pub ref_logprobs: Vec<f32>,
    /// The value head's predictions (0 after `last + 1`).
    pub values: Vec<f32>,
    /// The reward model's score of each row (after the missing-EOS penalty).
    pub scores: Vec<f32>,
}

/// The settings the targets depend on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TargetSettings {
    pub kl_coef: f64,
    pub k3: bool,
    pub whiten_rewards: bool,
    pub gamma: f64,
    pub lam: f64,
}

/// Per token `[rows, width]`: the KL estimate, the reward (the KL penalty plus the score), the whitened advantage
/// (0 after `last`) and the return.
#[derive(Debug, Clone, PartialEq)]
pub struct Targets {
    pub kl: Vec<f64>,
    pub non_score_reward: Vec<f64>,
    pub rewards: Vec<f64>,
    pub advantages: Vec<f64>,
    pub returns: Vec<f64>,
}

impl RolloutBatch {
    /// Whether position `t` of row `i` is a response token (TRL's `~padding_mask`).
    pub fn is_token(&self, i: usize, t: usize) -> bool {
        (t as i64) <= self.last[i]
    }

    /// Whether position `t` of row `i` has a value (TRL's `~padding_mask_p1`: one past the last token too).
    pub fn has_value(&self, i: usize, t: usize) -> bool {
        (t as i64) <= self.last[i] + 1
    }

    /// The batch's targets.
    pub fn targets(&self, settings: &TargetSettings) -> Targets {
        let (rows, width) = (self.rows, self.width);
        let kl: Vec<f64> = self
            .logprobs
            .iter()
            .zip(&self.ref_logprobs)
            .map(|(&logp, &reference)| {
                let logr = f64::from(reference) - f64::from(logp);
                if settings.k3 { logr.exp() - 1.0 - logr } else { -logr }
            })
            .collect();
        let non_score_reward: Vec<f64> = kl.iter().map(|k| -settings.kl_coef * k).collect();
        let mut rewards = non_score_reward.clone();
        for i in 0..rows {
            let after = self.last[i] + 1;
            let end = if after < width as i64 { after } else { self.last[i] };
            if let Ok(end) = usize::try_from(end) {
                rewards[i * width + end] += f64::from(self.scores[i]);
            }
        }
        let value_mask: Vec<bool> = (0..rows * width).map(|k| self.has_value(k / width, k % width)).collect();
        if settings.whiten_rewards {
            rewards = masked_whiten(&rewards, &value_mask, false);
            rewards.iter_mut().zip(&value_mask).for_each(|(r, &m)| *r = if m { *r } else { 0.0 });
        }
        let mut advantages = vec![0.0; rows * width];
        for i in 0..rows {
            let mut last_gae = 0.0;
            for t in (0..width).rev() {
                let next = if t + 1 < width { f64::from(self.values[i * width + t + 1]) } else { 0.0 };
                let delta = rewards[i * width + t] + settings.gamma * next - f64::from(self.values[i * width + t]);
                last_gae = delta + settings.gamma * settings.lam * last_gae;
                advantages[i * width + t] = last_gae;
            }
        }
        let returns: Vec<f64> = advantages.iter().zip(&self.values).map(|(a, &v)| a + f64::from(v)).collect();
        let token_mask: Vec<bool> = (0..rows * width).map(|k| self.is_token(k / width, k % width)).collect();
        let advantages = masked_whiten(&advantages, &token_mask, true)
            .into_iter()
            .zip(&token_mask)
            .map(|(a, &m)| if m { a } else { 0.0 })
            .collect();
        Targets { kl, non_score_reward, rewards, advantages, returns }
    }
}

/// TRL's `masked_whiten`: `(x - mean) / sqrt(var + 1e-8)` over the masked values (variance with Bessel's
/// correction), the mean added back unless `shift_mean`.
pub fn masked_whiten(values: &[f64], mask: &[bool], shift_mean: bool) -> Vec<f64> {
    let picked: Vec<f64> = values.iter().zip(mask).filter(|(_, m)| **m).map(|(v, _)| *v).collect();
    let n = picked.len() as f64;
    let mean = picked.iter().sum::<f64>() / n.max(1.0);
    let var = picked.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n.max(1.0);
    let var = if n > 1.0 { var * n / (n - 1.0) } else { var };
    let scale = 1.0 / (var + 1e-8).sqrt();
    values.iter().map(|v| (v - mean) * scale + if shift_mean { 0.0 } else { mean }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gae_and_returns_by_hand() {
        // One row of width 3 whose last token is at 1: the score lands at position 2 (one past it), values at
        // 0..=2, no KL (policy = reference), gamma 1, lam 0.5.
        let batch = RolloutBatch {
            rows: 1,
            width: 3,
            last: vec![1],
            logprobs: vec![-1.0, -2.0, INVALID_LOGPROB],
            ref_logprobs: vec![-1.0, -2.0, INVALID_LOGPROB],
            values: vec![0.5, 0.25, 0.125],
            scores: vec![2.0],
        };
        let settings = TargetSettings { kl_coef: 0.05, k3: false, whiten_rewards: false, gamma: 1.0, lam: 0.5 };
        let targets = batch.targets(&settings);
        assert_eq!(targets.rewards, vec![0.0, 0.0, 2.0]);
        // δ2 = 2 − 0.125 = 1.875; δ1 = 0 + 0.125 − 0.25 = −0.125; δ0 = 0.25 − 0.5 = −0.25.
        // A2 = 1.875, A1 = −0.125 + 0.5·1.875 = 0.8125, A0 = −0.25 + 0.5·0.8125 = 0.15625.
        assert_eq!(targets.returns, vec![0.15625 + 0.5, 0.8125 + 0.25, 1.875 + 0.125]);
        // Whitened over the two tokens: mean 0.484375, std (Bessel) |0.8125 − 0.15625| / sqrt 2.
        let sd = (0.8125f64 - 0.15625) / 2f64.sqrt();
        let expected = [(0.15625 - 0.484375) / (sd * sd + 1e-8).sqrt(), (0.8125 - 0.484375) / (sd * sd + 1e-8).sqrt()];
        assert!(
            (targets.advantages[0] - expected[0]).abs() < 1e-12 && (targets.advantages[1] - expected[1]).abs() < 1e-12
        );
        assert_eq!(targets.advantages[2], 0.0, "no advantage past the last token");
        // k1 and k3 of a log-ratio r = ref − logπ = 0.5: −0.5 and e^0.5 − 1.5.
        let mut moved = batch.clone();
        moved.logprobs[0] = -1.5;
        let k1 = moved.targets(&settings).kl[0];
        let k3 = moved.targets(&TargetSettings { k3: true, ..settings }).kl[0];
        assert_eq!((k1, k3), (-0.5, 0.5f64.exp() - 1.5));
    }
}
