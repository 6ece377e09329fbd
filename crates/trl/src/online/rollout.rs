//! What the online trainers learn from: prompts (one per dataset row), the completion slots a step draws (each
//! prompt `num_generations` times, a group), the rollout a step samples into each slot, and the per-token
//! log-probs a policy gives the completions.

use std::sync::Arc;

use burn::tensor::FloatDType;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};
use llmtrain_core::data::{Content, Row};
use llmtrain_core::kernels::Kernels;
use llmtrain_core::model::LlamaModel;
use llmtrain_core::model::compute::to_dtype;
use llmtrain_core::tokenizer::TextTokenizer;
use serde_json::{Map, Value};

/// A prompt of the dataset, tokenized, with its row's other columns (which reward functions read).
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    pub ids: Vec<u32>,
    /// The prompt as the row gave it (a reward model reads it with the completion).
    pub content: Content,
    pub columns: Map<String, Value>,
}

/// One row as a prompt: a text prompt tokenized whole (special tokens as the tokenizer adds them), a
/// conversational one rendered with the chat template and its generation prompt, as TRL's trainers do.
pub fn prompt_from_row(tokenizer: &TextTokenizer, row: &Row) -> std::result::Result<Option<Prompt>, String> {
    let Row::PromptOnly { prompt, extra } = row else {
        return Err(format!(
            "a {} row, but the online trainers sample from prompt-only rows: `prompt`",
            row.format_name()
        ));
    };
    let ids = match prompt {
        Content::Text(text) => tokenizer.encode(text),
        Content::Chat(messages) => {
            tokenizer.apply_chat_template(messages, true).and_then(|rendered| tokenizer.encode_with(&rendered, false))
        }
    }
    .map_err(|e| e.to_string())?;
    if ids.is_empty() {
        return Err("field `prompt`: tokenizes to no token".into());
    }
    Ok(Some(Prompt { ids, content: prompt.clone(), columns: extra.clone() }))
}

/// A completion slot: a prompt, the group it samples for (every slot of a group shares the prompt), and, once
/// its step has sampled it, the rollout (`R`: GRPO's and RLOO's [`Rollout`], or PPO's).
#[derive(Debug, Clone)]
pub struct Slot<R = Rollout> {
    pub prompt: Arc<Prompt>,
    pub group: u64,
    pub rollout: Option<Arc<R>>,
}

impl<R> Slot<R> {
    /// Tokens the slot holds for throughput: its prompt's (the completion does not exist yet when it is drawn).
    pub fn tokens(&self) -> usize {
        self.prompt.ids.len()
    }
}

/// The sampling seed of every slot of a step's micro-batches on this rank, from the step's seed and the slot's
/// place in the step's global order (micro-batch, then rank, then row, as the data draws them): each completion
/// draws from its own seed, so N ranks sample what one rank with N times the batch does.
pub fn slot_seeds<R>(micro: &[Vec<Slot<R>>], step_seed: u64, rank: usize, world: usize) -> Vec<u64> {
    micro
        .iter()
        .enumerate()
        .flat_map(|(m, batch)| {
            let b = batch.len();
            (0..b)
                .map(move |k| llmtrain_core::model::lora::mix_seed(&[step_seed, (m * b * world + rank * b + k) as u64]))
        })
        .collect()
}

/// Whether a step that is not a sampling step (`step` not a multiple of `every`) draws the slots `sampled` were
/// sampled for: then it trains on those rollouts again (`num_iterations`, `num_ppo_epochs`).
pub fn reuses<R>(step: u64, every: usize, sampled: &[Vec<Slot<R>>], micro: &[Vec<Slot<R>>]) -> bool {
    let groups = |batches: &[Vec<Slot<R>>]| -> Vec<u64> { batches.iter().flatten().map(|s| s.group).collect() };
    !step.is_multiple_of(every as u64) && !sampled.is_empty() && groups(sampled) == groups(micro)
}

/// One sampled completion, scored.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    /// The sampled tokens, the stop token included.
    pub completion: Vec<u32>,
    /// How many of them the loss counts: all, or none for a truncated completion under
    /// `mask_truncated_completions`.
    pub counted: usize,
    pub advantage: f32,
    /// Per completion token, the log-prob when it was sampled (when the loss needs it) and the reference's.
    pub old_logps: Option<Vec<f32>>,
    pub ref_logps: Option<Vec<f32>>,
}

/// Per-token log-probs of completions after their prompts, `[rows, T]` with `T` the longest completion (0 past
/// each row's end), from the logits divided by `temperature` as they were sampled; and each token's entropy.
pub struct CompletionLogps<B: Kernels> {
    pub logps: Tensor<B, 2>,
    pub entropy: Tensor<B, 2>,
    pub width: usize,
}

/// Prompt + completion rows right-padded into one `[rows, len]` batch, and for each completion position
/// `t < width` the position of the row that predicts it (`prompt + t - 1`, kept inside the row). Rotary
/// embeddings depend only on distances, so a forward of this batch equals TRL's of left-padded prompts under an
/// attention mask.
pub struct CompletionRows<B: Kernels> {
    pub tokens: Tensor<B, 2, Int>,
    pub predicted_at: Tensor<B, 2, Int>,
    pub rows: usize,
    pub len: usize,
    pub width: usize,
    /// Each row's completion length.
    pub lengths: Vec<usize>,
}

impl<B: Kernels> CompletionRows<B> {
    /// The batch of `rows`, `width` completion positions wide (at least the longest completion).
    pub fn new(rows: &[(&[u32], &[u32])], width: usize, pad_id: u32, device: &B::Device) -> Self {
        let n = rows.len();
        let len = rows.iter().map(|(p, c)| p.len() + c.len()).max().unwrap_or(0).max(2);
        let width = rows.iter().map(|(_, c)| c.len()).max().unwrap_or(0).max(width).max(1);
        let mut tokens = Vec::with_capacity(n * len);
        let mut at = Vec::with_capacity(n * width);
        for (prompt, completion) in rows {
            tokens.extend(prompt.iter().chain(completion.iter()).map(|&t| i64::from(t)));
            tokens.extend(std::iter::repeat_n(i64::from(pad_id), len - prompt.len() - completion.len()));
            at.extend((0..width).map(|k| (prompt.len() + k).saturating_sub(1).min(len - 1) as i64));
        }
        Self {
            tokens: Tensor::from_data(TensorData::new(tokens, [n, len]), device),
            predicted_at: Tensor::from_data(TensorData::new(at, [n, width]), device),
            rows: n,
            len,
            width,
            lengths: rows.iter().map(|(_, c)| c.len()).collect(),
        }
    }

    /// Each completion token's log-prob under `logits` `[rows, len, vocab]` divided by `temperature`, and the
    /// entropy of that distribution, `[rows, width]`, 0 past each completion's end.
    pub fn token_logps(&self, logits: Tensor<B, 3>, temperature: f64) -> CompletionLogps<B> {
        let (n, len) = (self.rows, self.len);
        let device = logits.device();
        let log_probs = log_softmax(logits.slice([0..n, 0..len - 1]).div_scalar(temperature), 2);
        let next = self.tokens.clone().slice([0..n, 1..len]).unsqueeze_dim::<3>(2);
        let picked = log_probs.clone().gather(2, next).reshape([n, len - 1]);
        let detached = log_probs.detach();
        let entropy = (detached.clone().exp() * detached).sum_dim(2).reshape([n, len - 1]).neg();
        // Positions past a completion read the row's last shifted position; the mask zeroes them.
        let at = self.predicted_at.clone().clamp_max((len - 2) as i64);
        let mask = completion_mask::<B>(self.lengths.iter().copied(), self.width, &device);
        CompletionLogps {
            logps: picked.gather(1, at.clone()) * mask.clone(),
            entropy: entropy.gather(1, at) * mask,
            width: self.width,
        }
    }

    /// A per-position value `[rows, len]` read at the position predicting each completion position, `[rows,
    /// width]` (a value head's estimate before each token; past a row's end, its last position's).
    pub fn at_predicting(&self, per_position: Tensor<B, 2>) -> Tensor<B, 2> {
        per_position.gather(1, self.predicted_at.clone())
    }
}

/// One forward of `model` over prompt + completion rows (right-padded with `pad_id`): see [`CompletionRows`].
pub fn completion_logps<B: Kernels>(
    model: &LlamaModel<B>,
    rows: &[(&[u32], &[u32])],
    temperature: f64,
    pad_id: u32,
    device: &B::Device,
) -> CompletionLogps<B> {
    logps_in(model, &CompletionRows::new(rows, 0, pad_id, device), temperature)
}

/// [`completion_logps`] over a batch already laid out (say, wider than its longest completion).
pub fn logps_in<B: Kernels>(model: &LlamaModel<B>, rows: &CompletionRows<B>, temperature: f64) -> CompletionLogps<B> {
    let hidden = model.hidden_states(rows.tokens.clone(), None);
    rows.token_logps(to_dtype(model.logits(hidden), FloatDType::F32), temperature)
}

/// `[rows, width]`: 1 for the first `counted` positions of each row, else 0.
pub fn completion_mask<B: Kernels>(
    counted: impl Iterator<Item = usize>,
    width: usize,
    device: &B::Device,
) -> Tensor<B, 2> {
    let values: Vec<f32> = counted.flat_map(|c| (0..width).map(move |k| f32::from(u8::from(k < c)))).collect();
    let rows = values.len() / width.max(1);
    Tensor::from_data(TensorData::new(values, [rows, width]), device)
}

/// Per-row values padded with 0 to `width`, as a `[rows, width]` tensor.
pub fn padded_rows<B: Kernels>(rows: &[&[f32]], width: usize, device: &B::Device) -> Tensor<B, 2> {
    let values: Vec<f32> =
        rows.iter().flat_map(|row| row.iter().copied().chain(std::iter::repeat(0.0)).take(width)).collect();
    Tensor::from_data(TensorData::new(values, [rows.len(), width]), device)
}

/// Each row's first `lengths[i]` values of a `[rows, width]` tensor, on the host.
pub fn host_rows<B: Kernels>(values: Tensor<B, 2>, lengths: &[usize]) -> Vec<Vec<f32>> {
    let width = values.dims()[1];
    let data = values.into_data().convert::<f32>();
    let flat = data.as_slice::<f32>().unwrap_or_default();
    lengths.iter().enumerate().map(|(i, &n)| flat.get(i * width..i * width + n).unwrap_or_default().to_vec()).collect()
}

/// Adds `ids` to `stop_tokens` (a model's `eos_token_id` list beside the tokenizer's EOS), each once.
pub fn add_stop_tokens(stop_tokens: &mut Vec<u32>, ids: impl IntoIterator<Item = u32>) {
    for id in ids {
        if !stop_tokens.contains(&id) {
            stop_tokens.push(id);
        }
    }
}

/// A sampling step's figures as the ratios a micro-batch reports: they are the same on every rank, so rank 0's
/// first micro-batch counts them and the other ranks name them empty (the Trainer reduces the same list of
/// ratios from every rank); later micro-batches report none.
pub fn step_figure_ratios<'f>(
    figures: &'f [(&'static str, f64)],
    rank: usize,
    micro_batch: usize,
) -> impl Iterator<Item = (&'static str, f64, f64)> + 'f {
    let share = f64::from(u8::from(rank == 0));
    figures.iter().filter(move |_| micro_batch == 0).map(move |&(name, value)| (name, value * share, share))
}
