//! DPO's loss and metrics as TRL 1.16's DPOTrainer computes them from per-sequence completion log-probs
//! (`_compute_loss`): with s_c = log π(chosen) − log π_ref(chosen), s_r likewise and Δ = s_c − s_r, each loss type
//! gives a per-pair loss whose batch mean is weighted into the total (MPO's lists of loss types).

use burn::tensor::activation::{log_sigmoid, relu, sigmoid};
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor};

/// A DPO loss type, by TRL's `loss_type` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossType {
    /// −log σ(βΔ), the original DPO.
    Sigmoid,
    /// relu(1 − βΔ) (SLiC).
    Hinge,
    /// ((s_c/|y_c| − s_r/|y_r|) − 1/(2β))², IPO on length-averaged log-ratios.
    Ipo,
    /// The label-smoothing-robust DPO (cDPO with an unbiased estimate).
    Robust,
    /// −log σ(β(s_c/|y_c| − s_r/|y_r|)).
    SigmoidNorm,
    /// APO-zero: 1 − σ(βs_c) + σ(βs_r).
    ApoZero,
    /// APO-down: σ(βs_c) + 1 − σ(βΔ).
    ApoDown,
    /// The NLL of the chosen completions, per token (RPO / MPO's SFT term).
    Sft,
}

impl LossType {
    pub const ALL: &'static [Self] = &[
        Self::Sigmoid,
        Self::Hinge,
        Self::Ipo,
        Self::Robust,
        Self::SigmoidNorm,
        Self::ApoZero,
        Self::ApoDown,
        Self::Sft,
    ];

    /// TRL's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sigmoid => "sigmoid",
            Self::Hinge => "hinge",
            Self::Ipo => "ipo",
            Self::Robust => "robust",
            Self::SigmoidNorm => "sigmoid_norm",
            Self::ApoZero => "apo_zero",
            Self::ApoDown => "apo_down",
            Self::Sft => "sft",
        }
    }
}

/// An unknown `loss_type`, with the names there are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown DPO loss_type `{0}`; expected one of: {names}", names = LossType::ALL.iter().map(|t| t.name()).collect::<Vec<_>>().join(", "))]
pub struct UnknownLossType(pub String);

impl std::str::FromStr for LossType {
    type Err = UnknownLossType;
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL.iter().copied().find(|t| t.name() == name).ok_or_else(|| UnknownLossType(name.to_string()))
    }
}

/// Per-pair sums of completion log-probs (shape `[pairs]` each): the policy's (with gradients), the reference's
/// (without), and the completion lengths in tokens.
#[derive(Debug, Clone)]
pub struct SequenceLogps<B: Backend> {
    pub chosen: Tensor<B, 1>,
    pub rejected: Tensor<B, 1>,
    pub ref_chosen: Tensor<B, 1>,
    pub ref_rejected: Tensor<B, 1>,
    pub chosen_tokens: Tensor<B, 1>,
    pub rejected_tokens: Tensor<B, 1>,
}

/// What TRL logs for a batch, each a mean over its pairs: `rewards/chosen`, `rewards/rejected`,
/// `rewards/accuracies`, `rewards/margins`, `logps/chosen`, `logps/rejected`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct DpoMetrics {
    pub rewards_chosen: f64,
    pub rewards_rejected: f64,
    pub rewards_accuracies: f64,
    pub rewards_margins: f64,
    pub logps_chosen: f64,
    pub logps_rejected: f64,
}

impl DpoMetrics {
    /// TRL's names of the metrics, in [`named`](Self::named)'s order.
    pub const NAMES: [&'static str; 6] = [
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
    ];

    /// TRL's metric names with their values.
    pub fn named(&self) -> [(&'static str, f64); 6] {
        let values = [
            self.rewards_chosen,
            self.rewards_rejected,
            self.rewards_accuracies,
            self.rewards_margins,
            self.logps_chosen,
            self.logps_rejected,
        ];
        std::array::from_fn(|i| (Self::NAMES[i], values[i]))
    }
}

/// DPOConfig's loss settings: `beta`, the loss types with their weights (`loss_type`, `loss_weights`), and
/// `label_smoothing` (the robust loss's ε).
#[derive(Debug, Clone, PartialEq)]
pub struct DpoLoss {
    pub beta: f64,
    pub losses: Vec<(LossType, f64)>,
    pub label_smoothing: f64,
}

impl DpoLoss {
    pub fn new(beta: f64, losses: Vec<(LossType, f64)>, label_smoothing: f64) -> Self {
        Self { beta, losses, label_smoothing }
    }

    /// The batch's loss, a one-element tensor: Σ over loss types of weight × the mean over pairs of the per-pair
    /// loss (the SFT term is the mean over chosen completion tokens), as TRL computes it for one micro-batch.
    pub fn loss<B: Backend>(&self, l: &SequenceLogps<B>) -> Tensor<B, 1> {
        let beta = self.beta;
        let chosen_ratio = l.chosen.clone() - l.ref_chosen.clone();
        let rejected_ratio = l.rejected.clone() - l.ref_rejected.clone();
        let delta = chosen_ratio.clone() - rejected_ratio.clone();
        let length_normalised = || {
            chosen_ratio.clone() / l.chosen_tokens.clone().clamp_min(1.0)
                - rejected_ratio.clone() / l.rejected_tokens.clone().clamp_min(1.0)
        };
        let mut total: Option<Tensor<B, 1>> = None;
        for &(loss_type, weight) in &self.losses {
            let term = match loss_type {
                LossType::Sigmoid => -log_sigmoid(delta.clone() * beta),
                LossType::Hinge => relu(-(delta.clone() * beta) + 1.0),
                LossType::Ipo => (length_normalised() - 1.0 / (2.0 * beta)).powi_scalar(2),
                LossType::Robust => {
                    let eps = self.label_smoothing;
                    let clean = log_sigmoid(delta.clone() * beta) * -(1.0 - eps);
                    let flipped = log_sigmoid(delta.clone() * -beta) * -eps;
                    (clean - flipped) / (1.0 - 2.0 * eps)
                }
                LossType::SigmoidNorm => -log_sigmoid(length_normalised() * beta),
                LossType::ApoZero => {
                    -sigmoid(chosen_ratio.clone() * beta) + 1.0 + sigmoid(rejected_ratio.clone() * beta)
                }
                LossType::ApoDown => sigmoid(chosen_ratio.clone() * beta) + 1.0 - sigmoid(delta.clone() * beta),
                LossType::Sft => -(l.chosen.clone().sum() / l.chosen_tokens.clone().sum()),
            };
            let term = term.mean() * weight;
            total = Some(match total {
                Some(sum) => sum + term,
                None => term,
            });
        }
        total.unwrap_or_else(|| l.chosen.zeros_like().sum())
    }

    /// TRL's logged DPO metrics for the batch (rewards are β × the log-ratios).
    pub fn metrics<B: Backend>(&self, l: &SequenceLogps<B>) -> DpoMetrics {
        let mean = |t: Tensor<B, 1>| t.mean().into_scalar().elem::<f64>();
        let chosen_rewards = (l.chosen.clone() - l.ref_chosen.clone()) * self.beta;
        let rejected_rewards = (l.rejected.clone() - l.ref_rejected.clone()) * self.beta;
        DpoMetrics {
            rewards_chosen: mean(chosen_rewards.clone()),
            rewards_rejected: mean(rejected_rewards.clone()),
            rewards_accuracies: mean(chosen_rewards.clone().greater(rejected_rewards.clone()).float()),
            rewards_margins: mean(chosen_rewards - rejected_rewards),
            logps_chosen: mean(l.chosen.clone()),
            logps_rejected: mean(l.rejected.clone()),
        }
    }
}
