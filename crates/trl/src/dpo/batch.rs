//! A batch of preference pairs as DPOTrainer feeds the model: one `[2·pairs, len]` token tensor holding every
//! prompt + chosen, then every prompt + rejected, right-padded and cut to `max_length` (TRL's `keep_start`), with
//! a mask of the completion tokens; and the per-sequence sums of completion log-probs a model gives it.

use burn::tensor::FloatDType;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};
use llmtrain_core::kernels::Kernels;
use llmtrain_core::model::LlamaModel;
use llmtrain_core::model::compute::to_dtype;

use super::data::TokenizedPair;

/// Token ids, completion mask and padding mask, row-major `[rows, len]`: rows `0..pairs` chosen,
/// `pairs..2·pairs` rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairBatch {
    pub pairs: usize,
    pub len: usize,
    pub tokens: Vec<u32>,
    pub completion: Vec<bool>,
    /// Whether a position holds a token of the row (not padding): the attention mask.
    pub real: Vec<bool>,
}

impl PairBatch {
    /// Concatenates each pair's prompt with its chosen and its rejected completion, pads with `pad_id` to the
    /// longest row and cuts every row to `max_length` tokens.
    pub fn collate(pairs: &[TokenizedPair], pad_id: u32, max_length: Option<usize>) -> Self {
        let rows: Vec<(&[u32], &[u32])> = pairs
            .iter()
            .map(|p| (p.prompt.as_slice(), p.chosen.as_slice()))
            .chain(pairs.iter().map(|p| (p.prompt.as_slice(), p.rejected.as_slice())))
            .collect();
        Self::from_rows(&rows, pad_id, max_length)
    }

    /// A batch of (prompt, completion) rows, the chosen half then the rejected half, padded with `pad_id` to the
    /// longest row and cut to `max_length` tokens.
    pub fn from_rows(rows: &[(&[u32], &[u32])], pad_id: u32, max_length: Option<usize>) -> Self {
        let longest = rows.iter().map(|(prompt, completion)| prompt.len() + completion.len()).max().unwrap_or(0);
        let len = max_length.map_or(longest, |max| longest.min(max));
        let mut tokens = Vec::with_capacity(rows.len() * len);
        let mut completion = Vec::with_capacity(rows.len() * len);
        let mut real = Vec::with_capacity(rows.len() * len);
        for (prompt, answer) in rows {
            let row = prompt.iter().map(|&t| (t, false, true)).chain(answer.iter().map(|&t| (t, true, true)));
            let padded = row.chain(std::iter::repeat((pad_id, false, false))).take(len);
            for (token, scored, present) in padded {
                tokens.push(token);
                completion.push(scored);
                real.push(present);
            }
        }
        Self { pairs: rows.len() / 2, len, tokens, completion, real }
    }

    /// `[rows, len - 1]`: 1 where the token predicted at a position (the next one) is selected by `select`
    /// (the completion mask, or the padding mask), else 0.
    pub fn target_mask<B: Kernels>(&self, select: &[bool], device: &B::Device) -> Tensor<B, 2> {
        let len = self.len;
        let values: Vec<f32> =
            select.chunks(len).flat_map(|row| row[1..].iter().map(|&c| f32::from(u8::from(c)))).collect();
        Tensor::from_data(TensorData::new(values, [2 * self.pairs, len - 1]), device)
    }

    /// Completion tokens of each row (chosen rows, then rejected), as TRL counts them for the length-normalised
    /// losses: the scored positions after the first.
    pub fn completion_lengths(&self) -> Vec<f32> {
        self.completion.chunks(self.len.max(1)).map(|row| row.iter().skip(1).filter(|&&c| c).count() as f32).collect()
    }
}

/// Each row's sum of the log-probs `model` gives its completion tokens (`[2·pairs]`: chosen, then rejected).
pub fn sequence_logps<B: Kernels>(model: &LlamaModel<B>, batch: &PairBatch, device: &B::Device) -> Tensor<B, 1> {
    forward_completions(model, batch, device, false).0
}

/// [`sequence_logps`] with per-row token statistics of the same forward (computed without gradients).
pub fn sequence_logps_with_stats<B: Kernels>(
    model: &LlamaModel<B>,
    batch: &PairBatch,
    device: &B::Device,
) -> (Tensor<B, 1>, RowStats) {
    let (logps, stats) = forward_completions(model, batch, device, true);
    (logps, stats.unwrap_or_default())
}

/// Per row, sums over its completion tokens of what TRL's trainers log per token: the predicted distribution's
/// entropy, the logits' mean over the vocabulary, whether the top logit is the next token; and the tokens.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RowStats {
    pub entropy: Vec<f64>,
    pub mean_logits: Vec<f64>,
    pub correct: Vec<f64>,
    pub tokens: Vec<f64>,
}

impl RowStats {
    /// The sum of `values` over the rows `keep` selects.
    pub fn sum(values: &[f64], keep: impl Fn(usize) -> bool) -> f64 {
        values.iter().enumerate().filter(|(row, _)| keep(*row)).map(|(_, v)| v).sum()
    }
}

/// DPOTrainer's token metrics of a batch of pairs, as (name, numerator, denominator) for the Trainer to reduce
/// over micro-batches and ranks: `entropy` over all completion tokens, `logits/chosen` and `logits/rejected`
/// (the logits' mean over the vocabulary, per token), and `mean_token_accuracy` over the chosen tokens.
pub fn pair_token_ratios(stats: &RowStats, pairs: usize) -> [(&'static str, f64, f64); 4] {
    let chosen = |row: usize| row < pairs;
    let rejected = |row: usize| row >= pairs;
    let chosen_tokens = RowStats::sum(&stats.tokens, chosen);
    let rejected_tokens = RowStats::sum(&stats.tokens, rejected);
    [
        ("entropy", RowStats::sum(&stats.entropy, |_| true), chosen_tokens + rejected_tokens),
        ("logits/chosen", RowStats::sum(&stats.mean_logits, chosen), chosen_tokens),
        ("logits/rejected", RowStats::sum(&stats.mean_logits, rejected), rejected_tokens),
        ("mean_token_accuracy", RowStats::sum(&stats.correct, chosen), chosen_tokens),
    ]
}

/// The names [`pair_token_ratios`] logs.
pub const PAIR_TOKEN_METRICS: [&str; 4] = ["entropy", "logits/chosen", "logits/rejected", "mean_token_accuracy"];

/// One forward over a batch: per position, the log-prob of the next token `[rows, len - 1]` (with gradients),
/// and the detached log-softmax and logits `[rows, len - 1, vocab]` with the next tokens, for statistics.
pub struct TokenForward<B: Kernels> {
    pub picked: Tensor<B, 2>,
    pub log_probs: Tensor<B, 3>,
    pub logits: Tensor<B, 3>,
    pub next: Tensor<B, 3, Int>,
}

impl<B: Kernels> TokenForward<B> {
    /// The forward of `batch`. Rows are right-padded, so no real token sees padding under the causal mask;
    /// `mask_padding` also keeps padding positions from attending to padding, as transformers' attention mask
    /// does, for figures that average over them (ORPO's `logits/*`): it costs a `[rows, len, len]` mask.
    pub fn run(model: &LlamaModel<B>, batch: &PairBatch, mask_padding: bool, device: &B::Device) -> Self {
        let (rows, len) = (2 * batch.pairs, batch.len);
        let ids: Vec<i64> = batch.tokens.iter().map(|&t| i64::from(t)).collect();
        let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [rows, len]), device);
        let hidden = if mask_padding {
            model.hidden_states_padded(tokens.clone(), &batch.real)
        } else {
            model.hidden_states(tokens.clone(), None)
        };
        // In f32 whatever the compute type (TRL upcasts the logits too): the log-softmax and the masks are f32.
        let logits = to_dtype(model.logits(hidden), FloatDType::F32).slice([0..rows, 0..len - 1]);
        let next = tokens.slice([0..rows, 1..len]).unsqueeze_dim::<3>(2);
        let log_probs = log_softmax(logits.clone(), 2);
        let picked = log_probs.clone().gather(2, next.clone()).reshape([rows, len - 1]);
        Self { picked, log_probs: log_probs.detach(), logits: logits.detach(), next }
    }
}

fn forward_completions<B: Kernels>(
    model: &LlamaModel<B>,
    batch: &PairBatch,
    device: &B::Device,
    with_stats: bool,
) -> (Tensor<B, 1>, Option<RowStats>) {
    let (rows, len) = (2 * batch.pairs, batch.len);
    let TokenForward { picked, log_probs, logits, next } = TokenForward::run(model, batch, false, device);
    let mask = batch.target_mask::<B>(&batch.completion, device);
    let logps = (picked * mask.clone()).sum_dim(1).reshape([rows]);
    if !with_stats {
        return (logps, None);
    }
    let entropy = (log_probs.clone().exp() * log_probs.clone()).sum_dim(2).reshape([rows, len - 1]).neg();
    let mean_logits = logits.mean_dim(2).reshape([rows, len - 1]);
    let top1 = log_probs.argmax(2).equal(next).float().reshape([rows, len - 1]);
    let per_row = |t: Tensor<B, 2>| (t * mask.clone()).sum_dim(1);
    // One host copy: [rows, 4].
    let sums = Tensor::cat(vec![per_row(entropy), per_row(mean_logits), per_row(top1), mask.clone().sum_dim(1)], 1);
    let sums = sums.into_data().convert::<f64>();
    let v = sums.as_slice::<f64>().unwrap_or_default();
    let column = |k: usize| (0..rows).filter_map(|row| v.get(row * 4 + k).copied()).collect::<Vec<f64>>();
    let stats = RowStats { entropy: column(0), mean_logits: column(1), correct: column(2), tokens: column(3) };
    (logps, Some(stats))
}
