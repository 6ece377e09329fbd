//! AdamW with PyTorch's exact update, global grad-norm clipping and gradient accumulation, over a model's
//! parameters by path (any burn module). State is keyed by parameter path so checkpoints survive a rebuild of the model.

use std::collections::BTreeMap;

use burn::module::Module;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};
use serde::{Deserialize, Serialize};

use super::param_paths::{map_trainable, visit_gradients, visit_trainable};

/// AdamW hyper-parameters (torch.optim.AdamW's defaults, except the learning rate which the schedule gives).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// First and second moments of one parameter, flattened.
pub struct Moments<B: Backend> {
    pub exp_avg: Tensor<B, 1>,
    pub exp_avg_sq: Tensor<B, 1>,
}

/// Summed gradients of the current optimizer step, flattened, by parameter name.
pub struct GradientBuffer<B: Backend> {
    grads: BTreeMap<String, Tensor<B, 1>>,
}

impl<B: Backend> Default for GradientBuffer<B> {
    fn default() -> Self {
        Self { grads: BTreeMap::new() }
    }
}

impl<B: Backend> GradientBuffer<B> {
    /// Adds the gradients of one backward pass through `module`, by parameter path.
    pub fn accumulate<A: AutodiffBackend<InnerBackend = B>, M: Module<A>>(&mut self, module: &M, grads: &A::Gradients) {
        visit_gradients::<A, M>(module, grads, |path, grad| self.add(path, grad));
    }

    /// The global L2 norm over every gradient (one host read).
    pub fn global_norm(&self) -> f64 {
        let squares: Vec<Tensor<B, 1>> = self.grads.values().map(|g| g.clone().powi_scalar(2).sum()).collect();
        if squares.is_empty() {
            return 0.0;
        }
        let total: f32 = Tensor::cat(squares, 0).sum().into_scalar().elem();
        (total as f64).sqrt()
    }

    /// Scales every gradient by `factor` (clipping).
    pub fn scale(&mut self, factor: f64) {
        for grad in self.grads.values_mut() {
            *grad = grad.clone().mul_scalar(factor);
        }
    }

    /// Largest absolute difference between two buffers' gradients (for equivalence tests); a parameter present
    /// in only one counts as infinitely different.
    pub fn max_abs_diff(&self, other: &Self) -> f64 {
        if self.grads.len() != other.grads.len() {
            return f64::INFINITY;
        }
        let mut worst = 0.0f64;
        for (name, grad) in &self.grads {
            let Some(theirs) = other.grads.get(name) else { return f64::INFINITY };
            let diff: f32 = (grad.clone() - theirs.clone()).abs().max().into_scalar().elem();
            worst = worst.max(diff as f64);
        }
        worst
    }

    pub fn is_empty(&self) -> bool {
        self.grads.is_empty()
    }

    /// Drops every gradient (a skipped step).
    pub fn clear(&mut self) {
        self.grads.clear();
    }

    /// The gradients by parameter name, in name order (the same order on every rank, which is what lets
    /// data-parallel ranks flatten them into matching buckets).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor<B, 1>)> {
        self.grads.iter().map(|(name, grad)| (name.as_str(), grad))
    }

    /// Replaces the gradient of `name` (after an all-reduce, say); returns false if it holds none.
    pub fn replace(&mut self, name: &str, grad: Tensor<B, 1>) -> bool {
        match self.grads.get_mut(name) {
            Some(slot) => {
                *slot = grad;
                true
            }
            None => false,
        }
    }

    /// The gradient of `name`, if it holds one.
    pub fn get(&self, name: &str) -> Option<&Tensor<B, 1>> {
        self.grads.get(name)
    }

    /// Removes and returns the gradient of `name`.
    pub fn take(&mut self, name: &str) -> Option<Tensor<B, 1>> {
        self.grads.remove(name)
    }

    /// Adds a gradient for `name` (to what it already holds).
    pub fn add(&mut self, name: &str, grad: Tensor<B, 1>) {
        let summed = match self.grads.remove(name) {
            Some(previous) => previous + grad,
            None => grad,
        };
        self.grads.insert(name.to_string(), summed);
    }

    /// Bytes the gradients hold (f32).
    pub fn bytes(&self) -> u64 {
        self.grads.values().map(|g| 4 * g.shape().num_elements() as u64).sum()
    }
}

/// Clips like `torch.nn.utils.clip_grad_norm_`: scales by [`clip_coefficient`] when there is one. Returns the
/// norm before clipping.
pub fn clip_grad_norm<B: Backend>(grads: &mut GradientBuffer<B>, max_norm: Option<f64>) -> f64 {
    let norm = grads.global_norm();
    if let Some(coef) = clip_coefficient(norm, max_norm) {
        grads.scale(coef);
    }
    norm
}

/// PyTorch's `clip_grad_norm_` factor for gradients of global norm `norm`: max_norm / (norm + 1e-6), when that is
/// below 1 (`None`: leave them).
pub fn clip_coefficient(norm: f64, max_norm: Option<f64>) -> Option<f64> {
    let coef = max_norm? / (norm + 1e-6);
    (coef < 1.0).then_some(coef)
}

/// AdamW (decoupled weight decay) with the exact arithmetic of `torch.optim.AdamW` (single-tensor path):
/// p ← p·(1 − lr·wd); m ← β1·m + (1−β1)·g; v ← β2·v + (1−β2)·g²;
/// p ← p − (lr / (1−β1ᵗ)) · m / (√v / √(1−β2ᵗ) + ε).
/// As transformers' Trainer does, vectors (biases, norm weights) get no weight decay.
pub struct AdamW<B: Backend> {
    pub config: AdamWConfig,
    /// Number of updates done.
    pub step: u64,
    pub moments: BTreeMap<String, Moments<B>>,
    /// Learning-rate multipliers by parameter name (LoRA+ raises the B matrices'); absent means 1.
    pub lr_scale: BTreeMap<String, f64>,
}

impl<B: Backend> AdamW<B> {
    pub fn new(config: AdamWConfig) -> Self {
        Self { config, step: 0, moments: BTreeMap::new(), lr_scale: BTreeMap::new() }
    }

    /// Applies one update with learning rate `lr` from `grads` (consumed) to the parameters of `module` they
    /// name, and returns the updated module.
    pub fn step<A: AutodiffBackend<InnerBackend = B>, M: Module<A>>(
        &mut self,
        module: M,
        grads: &mut GradientBuffer<B>,
        lr: f64,
    ) -> M {
        let mut params = BTreeMap::new();
        visit_trainable(&module, |path, value: Tensor<A, 1>, matrix| {
            params.insert(path.to_string(), (value.inner(), matrix));
        });
        let mut updated = self.step_params(params, grads, lr);
        map_trainable(module, |path, _, _| updated.remove(path).map(Tensor::from_inner))
    }

    /// One update of `params` (each flattened, by path, with whether it is a matrix) from `grads` (consumed):
    /// the new values of those that had a gradient.
    pub fn step_params(
        &mut self,
        params: BTreeMap<String, (Tensor<B, 1>, bool)>,
        grads: &mut GradientBuffer<B>,
        lr: f64,
    ) -> BTreeMap<String, Tensor<B, 1>> {
        let bias = self.begin_step();
        let mut updated = BTreeMap::new();
        for (path, (value, matrix)) in params {
            if let Some(grad) = grads.take(&path) {
                let value = self.update(&path, value, grad, lr, matrix, bias);
                updated.insert(path, value);
            }
        }
        updated
    }

    /// Starts an update of every parameter (the step count advances): the bias corrections that each
    /// [`update`](Self::update) of this step takes.
    pub fn begin_step(&mut self) -> BiasCorrection {
        self.step += 1;
        let t = self.step as i32;
        BiasCorrection { bias1: 1.0 - self.config.beta1.powi(t), bias2_sqrt: (1.0 - self.config.beta2.powi(t)).sqrt() }
    }

    /// The updated `value` of the parameter at `path` (or of the part of it this rank owns: `value`, `grad` and
    /// the moments kept under `path` cover the same elements) from its gradient, at learning rate `lr` (times
    /// the path's multiplier), with weight decay when it is a matrix.
    pub fn update(
        &mut self,
        path: &str,
        value: Tensor<B, 1>,
        grad: Tensor<B, 1>,
        lr: f64,
        matrix: bool,
        bias: BiasCorrection,
    ) -> Tensor<B, 1> {
        let c = self.config;
        let lr = lr * self.lr_scale.get(path).copied().unwrap_or(1.0);
        let decay = if matrix { lr * c.weight_decay } else { 0.0 };
        let n = grad.shape().num_elements();
        let state = self.moments.remove(path).unwrap_or_else(|| Moments {
            exp_avg: Tensor::zeros([n], &grad.device()),
            exp_avg_sq: Tensor::zeros([n], &grad.device()),
        });
        let exp_avg = state.exp_avg.mul_scalar(c.beta1) + grad.clone().mul_scalar(1.0 - c.beta1);
        let exp_avg_sq = state.exp_avg_sq.mul_scalar(c.beta2) + grad.powi_scalar(2).mul_scalar(1.0 - c.beta2);
        let denom = exp_avg_sq.clone().sqrt().div_scalar(bias.bias2_sqrt).add_scalar(c.eps);
        let update = exp_avg.clone().div(denom).mul_scalar(lr / bias.bias1);
        self.moments.insert(path.to_string(), Moments { exp_avg, exp_avg_sq });
        // p ← p·(1 − lr·wd) − update
        let value = if decay != 0.0 { value.mul_scalar(1.0 - decay) } else { value };
        value - update
    }

    /// Bytes the moments hold (two f32 values per element this rank keeps state for).
    pub fn state_bytes(&self) -> u64 {
        self.moments.values().map(|m| 8 * m.exp_avg.shape().num_elements() as u64).sum()
    }
}

/// One step's Adam bias corrections: 1 − β1ᵗ and √(1 − β2ᵗ).
#[derive(Debug, Clone, Copy)]
pub struct BiasCorrection {
    bias1: f64,
    bias2_sqrt: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::CpuBackend;
    use crate::model::{LlamaModel, ModelConfig};
    use burn::backend::Autodiff;
    use burn::tensor::TensorData;

    type A = Autodiff<CpuBackend>;

    /// Two AdamW steps on fixed gradients against the formula evaluated in f64.
    #[test]
    fn update_follows_torch_formula() {
        let device = Default::default();
        let mut model = LlamaModel::<A>::init(&ModelConfig::tiny_llama(8, 4, 1, 1, 1), &device, 0);
        let config = AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 };
        let mut opt = AdamW::<CpuBackend>::new(config);
        let name = "embed_tokens";
        let start: Vec<f32> = model.embed_tokens.val().into_data().convert::<f32>().into_vec().unwrap();
        let grads_per_step = [vec![0.5f32; 32], (0..32).map(|i| i as f32 * 0.01 - 0.1).collect::<Vec<_>>()];
        let (mut p, mut m, mut v) = (start.iter().map(|&x| x as f64).collect::<Vec<_>>(), vec![0.0; 32], vec![0.0; 32]);
        for (t, g) in grads_per_step.iter().enumerate() {
            let mut buffer = GradientBuffer::<CpuBackend>::default();
            buffer.grads.insert(name.to_string(), Tensor::from_data(TensorData::new(g.clone(), [32]), &device));
            model = opt.step(model, &mut buffer, 0.01);
            let t = t as i32 + 1;
            for i in 0..32 {
                let g = g[i] as f64;
                p[i] *= 1.0 - 0.01 * 0.1;
                m[i] = 0.9 * m[i] + 0.1 * g;
                v[i] = 0.95 * v[i] + 0.05 * g * g;
                let denom = v[i].sqrt() / (1.0 - 0.95f64.powi(t)).sqrt() + 1e-8;
                p[i] -= 0.01 / (1.0 - 0.9f64.powi(t)) * m[i] / denom;
            }
        }
        let got: Vec<f32> = model.embed_tokens.val().into_data().convert::<f32>().into_vec().unwrap();
        let diff = got.iter().zip(&p).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
        assert!(diff < 1e-7, "max |Δ| {diff}");
    }

    /// A parameter with an lr multiplier (LoRA+) moves that many times as far on Adam's first step, where the
    /// update is lr · sign(g) without weight decay.
    #[test]
    fn lr_scale_multiplies_one_parameters_learning_rate() {
        let device = Default::default();
        let mut model = LlamaModel::<A>::init(&ModelConfig::tiny_llama(8, 4, 1, 1, 1), &device, 0);
        let mut opt = AdamW::<CpuBackend>::new(AdamWConfig { weight_decay: 0.0, ..AdamWConfig::default() });
        let (scaled, plain) = ("embed_tokens", "norm.weight");
        opt.lr_scale.insert(scaled.to_string(), 16.0);
        let before = (model.embed_tokens.val(), model.norm.weight.val());
        let mut buffer = GradientBuffer::<CpuBackend>::default();
        buffer.grads.insert(scaled.to_string(), Tensor::ones([32], &device));
        buffer.grads.insert(plain.to_string(), Tensor::ones([4], &device));
        model = opt.step(model, &mut buffer, 1e-3);
        let moved = |a: Tensor<A, 1>, b: Tensor<A, 1>| (a - b).abs().max().into_scalar().elem::<f64>();
        let embed = moved(before.0.reshape([32]), model.embed_tokens.val().reshape([32]));
        let norm = moved(before.1, model.norm.weight.val());
        assert!((embed / norm - 16.0).abs() < 1e-3, "{embed} vs {norm}");
    }
}
