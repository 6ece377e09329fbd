//! Text generation with the KV cache: greedy, temperature, top-k and top-p sampling, seeded.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::kernels::Kernels;
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
pub fn generate<B: Kernels>(
    model: &LlamaModel<B>,
    prompt: &[u32],
    config: &SamplingConfig,
    device: &B::Device,
) -> Vec<u32> {
    generate_batch(model, &[prompt], config, &[config.seed], 0, device).pop().unwrap_or_default()
}

/// Samples up to `max_new_tokens` after each of `prompts`, all in one batch: the prompts are left-padded (with
/// `pad_id`, never attended to) and decoded together through the KV cache. Row `i` draws from its own sampler
/// seeded with `seeds[i]`, so what a row gets does not depend on which rows share its batch. A row stops after
/// a stop token (which it keeps); the batch stops when every row has. Returns each row's new tokens.
pub fn generate_batch<B: Kernels>(
    model: &LlamaModel<B>,
    prompts: &[&[u32]],
    config: &SamplingConfig,
    seeds: &[u64],
    pad_id: u32,
    device: &B::Device,
) -> Vec<Vec<u32>> {
    let batch = prompts.len();
    let mut out: Vec<Vec<u32>> = vec![Vec::with_capacity(config.max_new_tokens); batch];
    if batch == 0 || config.max_new_tokens == 0 || prompts.iter().any(|p| p.is_empty()) {
        return out;
    }
    let mut samplers: Vec<Sampler> = (0..batch)
        .map(|i| Sampler::new(SamplingConfig { seed: seeds.get(i).copied().unwrap_or(config.seed), ..config.clone() }))
        .collect();
    let longest = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
    let left_pad: Vec<usize> = prompts.iter().map(|p| longest - p.len()).collect();
    let mut padded = Vec::with_capacity(batch * longest);
    for (prompt, &pad) in prompts.iter().zip(&left_pad) {
        padded.extend(std::iter::repeat_n(pad_id, pad).chain(prompt.iter().copied()));
    }
    let mut cache = model.new_cache();
    let mut logits = model.forward_cached_padded(tokens_tensor::<B>(&padded, batch, device), &mut cache, &left_pad);
    let mut done = vec![false; batch];
    let mut next = vec![pad_id; batch];
    for round in 0..config.max_new_tokens {
        let rows = host_rows(logits);
        let vocab = rows.len() / batch;
        for (i, sampler) in samplers.iter_mut().enumerate() {
            if done[i] {
                next[i] = pad_id;
                continue;
            }
            let token = sampler.pick(&rows[i * vocab..(i + 1) * vocab]);
            out[i].push(token);
            next[i] = token;
            done[i] = config.stop_tokens.contains(&token);
        }
        if done.iter().all(|&d| d) || round + 1 == config.max_new_tokens {
            break;
        }
        logits = model.forward_cached_padded(tokens_tensor::<B>(&next, batch, device), &mut cache, &left_pad);
    }
    out
}

/// The same as [`generate`] but recomputing the whole sequence every step (no cache): the reference the cached
/// path is tested against.
pub fn generate_uncached<B: Kernels>(
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
    host_rows(logits.slice([0..1, seq - 1..seq, 0..vocab]).reshape([1, vocab]))
}

/// `[rows, vocab]` logits on the host, row-major, in f32.
fn host_rows<B: Backend>(logits: Tensor<B, 2>) -> Vec<f32> {
    let data: TensorData = logits.into_data();
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
