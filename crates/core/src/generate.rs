//! Text generation with the KV cache: greedy, temperature, top-k and top-p sampling, seeded.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::model::{LlamaModel, tokens_tensor};

/// How to pick each next token.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingConfig {
    /// 0 means greedy (argmax); otherwise logits are divided by it before sampling.
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 = off).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1.0 = off).
    pub top_p: f32,
    pub seed: u64,
    pub max_new_tokens: usize,
    /// Generation stops after any of these tokens.
    pub stop_tokens: Vec<u32>,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0, max_new_tokens: 64, stop_tokens: Vec::new() }
    }
}

/// Picks tokens from logit rows according to a [`SamplingConfig`], with its own seeded RNG.
pub struct Sampler {
    config: SamplingConfig,
    rng: StdRng,
    /// Reused buffer of (token, probability) pairs.
    candidates: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn new(config: SamplingConfig) -> Self {
        let rng = StdRng::seed_from_u64(config.seed);
        Self { config, rng, candidates: Vec::new() }
    }

    /// The next token for one row of logits.
    pub fn pick(&mut self, logits: &[f32]) -> u32 {
        if self.config.temperature <= 0.0 {
            return argmax(logits);
        }
        let inv_t = 1.0 / self.config.temperature;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        self.candidates.clear();
        self.candidates.extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, ((l - max) * inv_t).exp())));
        // Most likely first; ties keep the lower id first so results do not depend on sort stability.
        self.candidates.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if self.config.top_k > 0 {
            self.candidates.truncate(self.config.top_k);
        }
        let total: f32 = self.candidates.iter().map(|c| c.1).sum();
        if self.config.top_p < 1.0 {
            let mut cumulative = 0.0;
            let mut keep = 0;
            for (_, p) in &self.candidates {
                cumulative += p / total;
                keep += 1;
                if cumulative >= self.config.top_p {
                    break;
                }
            }
            self.candidates.truncate(keep.max(1));
        }
        let total: f32 = self.candidates.iter().map(|c| c.1).sum();
        let mut target = self.rng.random::<f32>() * total;
        for &(token, p) in &self.candidates {
            if target < p {
                return token;
            }
            target -= p;
        }
        self.candidates.last().map(|c| c.0).unwrap_or(0)
    }
}

/// Index of the largest value (the first one on ties, as torch.argmax).
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best as u32
}

/// Generates up to `max_new_tokens` after `prompt`, using the KV cache. Returns the new tokens only.
pub fn generate<B: Backend>(
    model: &LlamaModel<B>,
    prompt: &[u32],
    config: &SamplingConfig,
    device: &B::Device,
) -> Vec<u32> {
    let mut sampler = Sampler::new(config.clone());
    let mut cache = model.new_cache();
    let mut out = Vec::with_capacity(config.max_new_tokens);
    if prompt.is_empty() || config.max_new_tokens == 0 {
        return out;
    }
    let mut logits = model.forward_cached(tokens_tensor::<B>(prompt, 1, device), &mut cache);
    for _ in 0..config.max_new_tokens {
        let token = sampler.pick(&last_row(logits));
        out.push(token);
        if config.stop_tokens.contains(&token) || out.len() == config.max_new_tokens {
            break;
        }
        logits = model.forward_cached(tokens_tensor::<B>(&[token], 1, device), &mut cache);
    }
    out
}

/// The same as [`generate`] but recomputing the whole sequence every step (no cache): the reference the cached
/// path is tested against.
pub fn generate_uncached<B: Backend>(
    model: &LlamaModel<B>,
    prompt: &[u32],
    config: &SamplingConfig,
    device: &B::Device,
) -> Vec<u32> {
    let mut sampler = Sampler::new(config.clone());
    let mut sequence = prompt.to_vec();
    for _ in 0..config.max_new_tokens {
        let logits = model.forward(tokens_tensor::<B>(&sequence, 1, device), None);
        let token = sampler.pick(&last_row(logits));
        sequence.push(token);
        if config.stop_tokens.contains(&token) {
            break;
        }
    }
    sequence.split_off(prompt.len())
}

/// The logits of the last position of the first row, on the host.
fn last_row<B: Backend>(logits: Tensor<B, 3>) -> Vec<f32> {
    let [_, seq, vocab] = logits.dims();
    let row: Tensor<B, 1> = logits.slice([0..1, seq - 1..seq, 0..vocab]).reshape([vocab]);
    let data: TensorData = row.into_data();
    data.convert::<f32>().into_vec::<f32>().expect("f32 after convert")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_one_is_greedy_and_seeds_repeat() {
        let logits = [0.1, 2.0, 1.9, -1.0];
        let mut s = Sampler::new(SamplingConfig { temperature: 1.0, top_k: 1, ..Default::default() });
        assert_eq!(s.pick(&logits), 1);
        let draw = |seed| {
            let mut s = Sampler::new(SamplingConfig { temperature: 1.0, seed, ..Default::default() });
            (0..20).map(|_| s.pick(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        let mut s = Sampler::new(SamplingConfig { temperature: 1.0, top_p: 0.4, ..Default::default() });
        assert!((0..50).all(|_| s.pick(&logits) == 1), "top-p 0.4 keeps only the top token here (p = 0.48)");
    }
}
