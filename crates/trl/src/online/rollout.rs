//! What the online trainers learn from: prompts (one per dataset row), the completion slots a step draws (each
//! prompt `num_generations` times, a group), the rollout a step samples into each slot, and the per-token
//! log-probs a policy gives the completions.

use std::sync::Arc;

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use llmtrain_core::data::{Content, Row};
use llmtrain_core::model::LlamaModel;
use llmtrain_core::tokenizer::TextTokenizer;
use serde_json::{Map, Value};

/// A prompt of the dataset, tokenized, with its row's other columns (which reward functions read).
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    pub ids: Vec<u32>,
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
    Ok(Some(Prompt { ids, columns: extra.clone() }))
}

/// A completion slot: a prompt, the group it samples for (every slot of a group shares the prompt), and, once
/// its step has sampled it, the rollout.
#[derive(Debug, Clone)]
pub struct Slot {
    pub prompt: Arc<Prompt>,
    pub group: u64,
    pub rollout: Option<Arc<Rollout>>,
}

impl Slot {
    /// Tokens the slot holds for throughput: its prompt's (the completion does not exist yet when it is drawn).
    pub fn tokens(&self) -> usize {
        self.prompt.ids.len()
    }
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
pub struct CompletionLogps<B: Backend> {
    pub logps: Tensor<B, 2>,
    pub entropy: Tensor<B, 2>,
    pub width: usize,
}

/// One forward of `model` over prompt + completion rows (right-padded with `pad_id`): rotary embeddings depend
/// only on distances, so this equals TRL's forward of left-padded prompts under an attention mask.
pub fn completion_logps<B: Backend>(
    model: &LlamaModel<B>,
    rows: &[(&[u32], &[u32])],
    temperature: f64,
    pad_id: u32,
    device: &B::Device,
) -> CompletionLogps<B> {
    let n = rows.len();
    let len = rows.iter().map(|(p, c)| p.len() + c.len()).max().unwrap_or(0).max(2);
    let width = rows.iter().map(|(_, c)| c.len()).max().unwrap_or(0).max(1);
    let mut tokens = Vec::with_capacity(n * len);
    let mut at = Vec::with_capacity(n * width);
    for (prompt, completion) in rows {
        tokens.extend(prompt.iter().chain(completion.iter()).map(|&t| i64::from(t)));
        tokens.extend(std::iter::repeat_n(i64::from(pad_id), len - prompt.len() - completion.len()));
        // Completion token k is predicted at position prompt + k - 1 of the shifted logits.
        at.extend((0..width).map(|k| if k < completion.len() { (prompt.len() + k - 1) as i64 } else { 0 }));
    }
    let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(tokens, [n, len]), device);
    let at = Tensor::<B, 2, Int>::from_data(TensorData::new(at, [n, width]), device);
    let hidden = model.hidden_states(tokens.clone(), None);
    let logits = model.logits(hidden).slice([0..n, 0..len - 1]).div_scalar(temperature);
    let log_probs = log_softmax(logits, 2);
    let next = tokens.slice([0..n, 1..len]).unsqueeze_dim::<3>(2);
    let picked = log_probs.clone().gather(2, next).reshape([n, len - 1]);
    let detached = log_probs.detach();
    let entropy = (detached.clone().exp() * detached).sum_dim(2).reshape([n, len - 1]).neg();
    let mask = completion_mask::<B>(rows.iter().map(|(_, c)| c.len()), width, device);
    CompletionLogps { logps: picked.gather(1, at.clone()) * mask.clone(), entropy: entropy.gather(1, at) * mask, width }
}

/// `[rows, width]`: 1 for the first `counted` positions of each row, else 0.
pub fn completion_mask<B: Backend>(
    counted: impl Iterator<Item = usize>,
    width: usize,
    device: &B::Device,
) -> Tensor<B, 2> {
    let values: Vec<f32> = counted.flat_map(|c| (0..width).map(move |k| f32::from(u8::from(k < c)))).collect();
    let rows = values.len() / width.max(1);
    Tensor::from_data(TensorData::new(values, [rows, width]), device)
}

/// Per-row values padded with 0 to `width`, as a `[rows, width]` tensor.
pub fn padded_rows<B: Backend>(rows: &[&[f32]], width: usize, device: &B::Device) -> Tensor<B, 2> {
    let values: Vec<f32> =
        rows.iter().flat_map(|row| row.iter().copied().chain(std::iter::repeat(0.0)).take(width)).collect();
    Tensor::from_data(TensorData::new(values, [rows.len(), width]), device)
}

/// Each row's first `lengths[i]` values of a `[rows, width]` tensor, on the host.
pub fn host_rows<B: Backend>(values: Tensor<B, 2>, lengths: &[usize]) -> Vec<Vec<f32>> {
    let width = values.dims()[1];
    let data = values.into_data().convert::<f32>();
    let flat = data.as_slice::<f32>().unwrap_or_default();
    lengths.iter().enumerate().map(|(i, &n)| flat.get(i * width..i * width + n).unwrap_or_default().to_vec()).collect()
}
