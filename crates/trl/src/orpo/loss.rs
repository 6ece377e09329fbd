//! ORPO's loss and metrics as TRL 1.16's ORPOTrainer computes them: with c and r the chosen and rejected
//! completions' length-averaged log-probs, the log odds ratio is lo = (c − r) − (log(1 − eᶜ) − log(1 − eʳ)), and
//! the loss is the chosen sequences' NLL (per token, prompt included) minus β · mean(log σ(lo)).

use burn::tensor::activation::log_sigmoid;
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor};

/// A batch's inputs to the loss: per-pair averaged completion log-probs (`[pairs]`, with gradients) and the
/// chosen half's NLL (one element).
pub struct OrpoLogps<B: Backend> {
    pub chosen: Tensor<B, 1>,
    pub rejected: Tensor<B, 1>,
    pub nll: Tensor<B, 1>,
}

/// ORPOConfig's `beta`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OrpoLoss {
    pub beta: f64,
}

/// The figures ORPOTrainer logs besides the loss and the logits, as means over the batch's pairs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OrpoMetrics {
    pub rewards_chosen: f64,
    pub rewards_rejected: f64,
    pub rewards_accuracies: f64,
    pub rewards_margins: f64,
    pub logps_chosen: f64,
    pub logps_rejected: f64,
    pub nll_loss: f64,
    pub log_odds_ratio: f64,
    pub log_odds_chosen: f64,
}

impl OrpoMetrics {
    /// TRL's names, in [`OrpoMetrics::named`]'s order.
    pub const NAMES: [&'static str; 9] = [
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
        "nll_loss",
        "log_odds_ratio",
        "log_odds_chosen",
    ];

    pub fn named(&self) -> [(&'static str, f64); 9] {
        let values = [
            self.rewards_chosen,
            self.rewards_rejected,
            self.rewards_accuracies,
            self.rewards_margins,
            self.logps_chosen,
            self.logps_rejected,
            self.nll_loss,
            self.log_odds_ratio,
            self.log_odds_chosen,
        ];
        std::array::from_fn(|i| (Self::NAMES[i], values[i]))
    }
}

impl OrpoLoss {
    /// The log odds ratio per pair, and its log-sigmoid.
    fn odds<B: Backend>(&self, l: &OrpoLogps<B>) -> (Tensor<B, 1>, Tensor<B, 1>) {
        let log_odds =
            (l.chosen.clone() - l.rejected.clone()) - (log1mexp(l.chosen.clone()) - log1mexp(l.rejected.clone()));
        let ratio = log_sigmoid(log_odds.clone());
        (log_odds, ratio)
    }

    /// The batch's loss (one element).
    pub fn loss<B: Backend>(&self, l: &OrpoLogps<B>) -> Tensor<B, 1> {
        let (_, ratio) = self.odds(l);
        l.nll.clone() - ratio.mean() * self.beta
    }

    /// The metrics of the batch, from the same inputs (no gradients needed).
    pub fn metrics<B: Backend>(&self, l: &OrpoLogps<B>) -> OrpoMetrics {
        let (log_odds, ratio) = self.odds(l);
        let mean = |t: Tensor<B, 1>| t.detach().mean().into_scalar().elem::<f64>();
        let (chosen, rejected) = (l.chosen.clone().detach(), l.rejected.clone().detach());
        let beta = self.beta;
        let rewards_chosen = chosen.clone() * beta;
        let rewards_rejected = rejected.clone() * beta;
        OrpoMetrics {
            rewards_chosen: mean(rewards_chosen.clone()),
            rewards_rejected: mean(rewards_rejected.clone()),
            rewards_accuracies: mean(rewards_chosen.clone().greater(rewards_rejected.clone()).float()),
            rewards_margins: mean(rewards_chosen - rewards_rejected),
            logps_chosen: mean(chosen),
            logps_rejected: mean(rejected),
            nll_loss: mean(l.nll.clone()),
            log_odds_ratio: mean(ratio),
            log_odds_chosen: mean(log_odds),
        }
    }
}

/// log(1 − eˣ) for x < 0, as TRL computes it: log1p(−eˣ) below −ln 2, log(1 − eˣ) above (burn has no expm1;
/// the two differ only for x within float precision of 0).
fn log1mexp<B: Backend>(x: Tensor<B, 1>) -> Tensor<B, 1> {
    let below = x.clone().lower_elem(-std::f64::consts::LN_2);
    let far = x.clone().exp().neg().log1p();
    let near = (x.exp().neg() + 1.0).log();
    near.mask_where(below, far)
}
