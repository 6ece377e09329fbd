//! Advantages from the rewards of groups of completions of one prompt: GRPO's group-normalised rewards and RLOO's
//! leave-one-out baselines, as TRL 1.16 computes them (standard deviations with Bessel's correction, `+ 1e-4`
//! before dividing).

use std::collections::BTreeMap;

/// What GRPO divides the centred rewards by (`scale_rewards`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleRewards {
    /// The standard deviation of the completion's group.
    Group,
    /// The standard deviation over the whole batch.
    Batch,
    /// Nothing (Dr. GRPO's advice).
    None,
}

impl std::str::FromStr for ScaleRewards {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        match name {
            "group" => Ok(Self::Group),
            "batch" => Ok(Self::Batch),
            "none" => Ok(Self::None),
            other => Err(format!("unknown scale_rewards `{other}`; expected one of: group, batch, none")),
        }
    }
}

/// Per completion, its advantage; and per group (in order of first appearance), whether its rewards' standard
/// deviation is zero (TRL's `frac_reward_zero_std` counts those).
#[derive(Debug, Clone, PartialEq)]
pub struct Advantages {
    pub values: Vec<f64>,
    pub zero_std_groups: Vec<bool>,
}

impl Advantages {
    /// The share of groups whose rewards were all equal.
    pub fn frac_zero_std(&self) -> f64 {
        let n = self.zero_std_groups.len().max(1) as f64;
        self.zero_std_groups.iter().filter(|&&z| z).count() as f64 / n
    }
}

/// GRPO: each reward minus its group's mean, divided by `std + 1e-4` as `scale` says. `group_of[i]` names the
/// group of completion `i`.
pub fn grpo_advantages(rewards: &[f64], group_of: &[usize], scale: ScaleRewards) -> Advantages {
    let groups = groups(rewards, group_of);
    let batch_std = std(rewards);
    let values = rewards
        .iter()
        .zip(group_of)
        .map(|(&r, g)| {
            let stats = &groups[g];
            let centred = r - stats.mean;
            match scale {
                ScaleRewards::Group => centred / (stats.std + 1e-4),
                ScaleRewards::Batch => centred / (batch_std + 1e-4),
                ScaleRewards::None => centred,
            }
        })
        .collect();
    // Under `batch` TRL tests the batch's deviation, repeated per completion; counted here per group alike.
    let zero = |s: f64| is_zero(if scale == ScaleRewards::Batch { batch_std } else { s });
    Advantages { values, zero_std_groups: in_order(group_of).iter().map(|g| zero(groups[g].std)).collect() }
}

/// RLOO: each reward minus the mean of the other rewards of its group; then, with `normalize`, standardised over
/// the batch.
pub fn rloo_advantages(rewards: &[f64], group_of: &[usize], normalize: bool) -> Advantages {
    let groups = groups(rewards, group_of);
    let mut values: Vec<f64> = rewards
        .iter()
        .zip(group_of)
        .map(|(&r, g)| {
            let stats = &groups[g];
            if stats.count < 2 { 0.0 } else { r - (stats.sum - r) / (stats.count - 1) as f64 }
        })
        .collect();
    if normalize {
        let (mean, sd) = (mean(&values), std(&values));
        values.iter_mut().for_each(|a| *a = (*a - mean) / (sd + 1e-4));
    }
    Advantages { values, zero_std_groups: in_order(group_of).iter().map(|g| is_zero(groups[g].std)).collect() }
}

struct GroupStats {
    sum: f64,
    count: usize,
    mean: f64,
    std: f64,
}

fn groups(rewards: &[f64], group_of: &[usize]) -> BTreeMap<usize, GroupStats> {
    let mut members: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    for (&r, &g) in rewards.iter().zip(group_of) {
        members.entry(g).or_default().push(r);
    }
    members
        .into_iter()
        .map(|(g, values)| {
            let stats =
                GroupStats { sum: values.iter().sum(), count: values.len(), mean: mean(&values), std: std(&values) };
            (g, stats)
        })
        .collect()
}

/// The group ids in order of first appearance.
fn in_order(group_of: &[usize]) -> Vec<usize> {
    let mut seen = Vec::new();
    for &g in group_of {
        if !seen.contains(&g) {
            seen.push(g);
        }
    }
    seen
}

pub(crate) fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

/// The sample standard deviation (Bessel's correction, as `torch.std`); 0 for fewer than two values.
pub(crate) fn std(values: &[f64]) -> f64 {
    if values.len() < 2 {
        return 0.0;
    }
    let m = mean(values);
    (values.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (values.len() - 1) as f64).sqrt()
}

/// `torch.isclose(x, 0)`: within its default absolute tolerance.
fn is_zero(x: f64) -> bool {
    x.abs() <= 1e-8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f64], b: &[f64]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-9, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn grpo_centres_on_the_group_mean_and_scales_by_group_or_batch_std() {
        // Group 0: 1, 0, 0, 1 (mean 0.5, std sqrt(1/3)); group 1: 2, 2, 2, 2 (std 0).
        let rewards = [1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0];
        let group_of = [0, 0, 0, 0, 1, 1, 1, 1];
        let s = (1.0f64 / 3.0).sqrt();
        let a = grpo_advantages(&rewards, &group_of, ScaleRewards::Group);
        let h = 0.5 / (s + 1e-4);
        close(&a.values, &[h, -h, -h, h, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(a.zero_std_groups, vec![false, true]);
        assert_eq!(a.frac_zero_std(), 0.5);
        // Batch: mean 1.25, sum of squared deviations 2·0.0625 + 2·1.5625 + 4·0.5625 = 5.5, std sqrt(5.5 / 7).
        let b = (5.5f64 / 7.0).sqrt();
        let a = grpo_advantages(&rewards, &group_of, ScaleRewards::Batch);
        let h = 0.5 / (b + 1e-4);
        close(&a.values, &[h, -h, -h, h, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(a.zero_std_groups, vec![false, false]);
        let a = grpo_advantages(&rewards, &group_of, ScaleRewards::None);
        close(&a.values, &[0.5, -0.5, -0.5, 0.5, 0.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn rloo_subtracts_the_mean_of_the_others_and_may_standardise() {
        // Group of 3: 3, 0, 0 → baselines 0, 1.5, 1.5; group of 2: 1, 2 → baselines 2, 1.
        let rewards = [3.0, 0.0, 0.0, 1.0, 2.0];
        let group_of = [7, 7, 7, 9, 9];
        let a = rloo_advantages(&rewards, &group_of, false);
        close(&a.values, &[3.0, -1.5, -1.5, -1.0, 1.0]);
        let a = rloo_advantages(&rewards, &group_of, true);
        // Mean 0; squares 9 + 2.25 + 2.25 + 1 + 1 = 15.5 over 4.
        let sd = (15.5f64 / 4.0).sqrt();
        close(
            &a.values,
            &[3.0 / (sd + 1e-4), -1.5 / (sd + 1e-4), -1.5 / (sd + 1e-4), -1.0 / (sd + 1e-4), 1.0 / (sd + 1e-4)],
        );
    }
}
