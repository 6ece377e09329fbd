//! RewardTrainer's loss and metrics over a batch of rewards: −log σ(r_c − r_r − margin), averaged over pairs,
//! plus `center_rewards_coefficient` · mean((r_c + r_r)²) when set.

use burn::tensor::activation::log_sigmoid;
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor};

/// RewardConfig's loss settings.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RewardLoss {
    pub center_rewards_coefficient: Option<f64>,
}

/// What RewardTrainer logs besides the loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RewardMetrics {
    pub accuracy: f64,
    pub margin: f64,
    pub min_reward: f64,
    pub mean_reward: f64,
    pub max_reward: f64,
}

impl RewardMetrics {
    pub const NAMES: [&'static str; 5] = ["accuracy", "margin", "min_reward", "mean_reward", "max_reward"];

    pub fn named(&self) -> [(&'static str, f64); 5] {
        let values = [self.accuracy, self.margin, self.min_reward, self.mean_reward, self.max_reward];
        std::array::from_fn(|i| (Self::NAMES[i], values[i]))
    }
}

impl RewardLoss {
    /// The batch's loss (one element) from the chosen and rejected rewards `[pairs]` and the margins.
    pub fn loss<B: Backend>(
        &self,
        chosen: Tensor<B, 1>,
        rejected: Tensor<B, 1>,
        margins: Tensor<B, 1>,
    ) -> Tensor<B, 1> {
        let bradley_terry = log_sigmoid(chosen.clone() - rejected.clone() - margins).neg().mean();
        match self.center_rewards_coefficient {
            Some(coefficient) => bradley_terry + (chosen + rejected).powi_scalar(2).mean() * coefficient,
            None => bradley_terry,
        }
    }

    /// The metrics, from the same rewards (no gradients needed): the share of pairs with the chosen reward
    /// strictly above, the mean difference (the margin column aside), and the rewards' min, mean and max.
    pub fn metrics<B: Backend>(&self, chosen: Tensor<B, 1>, rejected: Tensor<B, 1>) -> RewardMetrics {
        let (chosen, rejected) = (chosen.detach(), rejected.detach());
        let scalar = |t: Tensor<B, 1>| t.into_scalar().elem::<f64>();
        let all = Tensor::cat(vec![chosen.clone(), rejected.clone()], 0);
        RewardMetrics {
            accuracy: scalar(chosen.clone().greater(rejected.clone()).float().mean()),
            margin: scalar((chosen - rejected).mean()),
            min_reward: scalar(all.clone().min()),
            mean_reward: scalar(all.clone().mean()),
            max_reward: scalar(all.max()),
        }
    }
}
