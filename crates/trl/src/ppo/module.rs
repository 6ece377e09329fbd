//! PPO as a [`LightningModule`]: the network is the policy with a value head (a one-output linear map of the
//! last hidden state, as TRL's earlier `AutoModelForCausalLMWithValueHead`; held as a
//! [`SequenceClassifier`] whose decoder keeps its language-model head). Each rollout batch is sampled in
//! [`LightningModule::prepare_step`] and trained on for `num_ppo_epochs` steps; the policy's files are the
//! causal-LM objective's, and checkpoints add the value head.

use std::path::Path;
use std::sync::Arc;

use burn::module::{AutodiffModule, Module, Param};
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
use burn::tensor::FloatDType;
use burn::tensor::{ElementConversion, Tensor, TensorData};
use llmtrain_core::generate::{SamplingConfig, generate_batch};
use llmtrain_core::kernels::{AutodiffKernels, Kernels};
use llmtrain_core::model::compute::to_dtype;
use llmtrain_core::model::{LlamaModel, SequenceClassifier};
use llmtrain_core::tokenizer::TextTokenizer;
use llmtrain_lightning::{
    CausalLm, InnerNet, LightningError, LightningModule, LossParts, Result, StepContext, StepOutput,
};
use serde_json::{Map, Value, json};

use super::loss::{PpoBatch, PpoLoss};
use super::section::PpoSection;
use super::targets::{INVALID_LOGPROB, RolloutBatch, TargetSettings};
use crate::online::rollout::{
    CompletionRows, Slot, add_stop_tokens, host_rows, logps_in, reuses, slot_seeds, step_figure_ratios,
};
use crate::reference::{Reference, without_adapters};

/// One sampled response with what PPO trains it toward, each `width` (the rollout batch's) positions long.
#[derive(Debug, Clone, PartialEq)]
pub struct PpoRollout {
    pub completion: Vec<u32>,
    /// The index of the last response token (before the first padding), -1 for none.
    pub last: i64,
    pub logprobs: Vec<f32>,
    pub values: Vec<f32>,
    pub advantages: Vec<f32>,
    pub returns: Vec<f32>,
}

/// The value head's file in a checkpoint.
pub const VALUE_HEAD_FILE: &str = "value_head.mpk";

/// Just the value head, for its checkpoint file.
#[derive(Module, Debug)]
struct ValueHead<B: Kernels> {
    score: Param<Tensor<B, 2>>,
}

/// The PPO objective.
pub struct Ppo<'a, A: AutodiffKernels> {
    section: PpoSection,
    loss: PpoLoss,
    files: CausalLm<'a, A>,
    tokenizer: TextTokenizer,
    eos: Option<u32>,
    /// Sampling stops after these: the tokenizer's EOS and the model's `eos_token_id`s.
    stop_tokens: Vec<u32>,
    pad_id: u32,
    reference: Reference<A::InnerBackend>,
    reward_model: SequenceClassifier<A::InnerBackend>,
    held_out: Vec<Slot<PpoRollout>>,
    /// What the last sampling step measured (logged by rank 0's first micro-batch).
    step_figures: Vec<(&'static str, f64)>,
    sampled: Vec<Vec<Slot<PpoRollout>>>,
}

impl<'a, A: AutodiffKernels> Ppo<'a, A> {
    pub fn new(
        section: PpoSection,
        files: CausalLm<'a, A>,
        tokenizer: TextTokenizer,
        pad_id: u32,
        reference: Reference<A::InnerBackend>,
        reward_model: SequenceClassifier<A::InnerBackend>,
    ) -> Self {
        let loss = PpoLoss {
            cliprange: section.cliprange,
            cliprange_value: section.cliprange_value,
            vf_coef: section.vf_coef,
        };
        let eos = tokenizer.eos_token_id();
        Self {
            stop_tokens: eos.into_iter().collect(),
            section,
            loss,
            files,
            tokenizer,
            eos,
            pad_id,
            reference,
            reward_model,
            held_out: Vec::new(),
            step_figures: Vec::new(),
            sampled: Vec::new(),
        }
    }

    /// Also stops sampling at `ids` (a model's `eos_token_id` list, as transformers' generation config).
    pub fn with_stop_tokens(mut self, ids: impl IntoIterator<Item = u32>) -> Self {
        add_stop_tokens(&mut self.stop_tokens, ids);
        self
    }

    /// Reports greedy responses to `items` before the first step and after the last: their mean score, and
    /// their exact-match accuracy when the rows have an `answer`.
    pub fn with_held_out(mut self, items: Vec<Slot<PpoRollout>>) -> Self {
        self.held_out = items;
        self
    }

    fn sampling(&self, temperature: f32) -> SamplingConfig {
        SamplingConfig {
            temperature,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
            max_new_tokens: self.section.response_length,
            stop_tokens: self.stop_tokens.clone(),
        }
    }

    /// Each response's score under the reward model, read at its last token.
    fn scores(&self, slots: &[&Slot<PpoRollout>], responses: &[Vec<u32>], device: &A::Device) -> Vec<f32> {
        let sequences: Vec<Vec<u32>> =
            slots.iter().zip(responses).map(|(s, r)| [s.prompt.ids.as_slice(), r].concat()).collect();
        let refs: Vec<&[u32]> = sequences.iter().map(Vec::as_slice).collect();
        let scores = self.reward_model.score_sequences(&refs, self.pad_id, device).into_data().convert::<f32>();
        scores.as_slice::<f32>().unwrap_or_default().to_vec()
    }

    /// The index of a response's last token: the one before its first padding, as TRL finds it.
    fn last_token(&self, response: &[u32]) -> i64 {
        response.iter().position(|&t| t == self.pad_id).unwrap_or(response.len()) as i64 - 1
    }
}

/// The policy's log-probs of each response token and its value head's estimates, `[rows, width]`.
fn policy_and_values<B: Kernels>(
    net: &SequenceClassifier<B>,
    rows: &CompletionRows<B>,
    temperature: f64,
) -> (Tensor<B, 2>, Tensor<B, 2>, Tensor<B, 2>) {
    let hidden = net.model.hidden_states(rows.tokens.clone(), None);
    let [n, len, width] = hidden.dims();
    let values = to_dtype(hidden.clone(), FloatDType::F32)
        .reshape([n * len, width])
        .matmul(net.score.val().transpose())
        .reshape([n, len]);
    let logps = rows.token_logps(to_dtype(net.model.logits(hidden), FloatDType::F32), temperature);
    (logps.logps, rows.at_predicting(values), logps.entropy)
}

impl<A: AutodiffKernels> LightningModule<A> for Ppo<'_, A> {
    type Net = SequenceClassifier<A>;
    type Batch = Vec<Slot<PpoRollout>>;

    /// Every micro-batch weighs the same: TRL averages the micro-batches' masked means.
    fn batch_weight(&self, _batch: &Self::Batch) -> f64 {
        1.0
    }

    fn prepare_step(
        &mut self,
        net: &SequenceClassifier<A>,
        micro: &mut [Self::Batch],
        ctx: &StepContext<'_, A>,
    ) -> Result<()> {
        if reuses(ctx.step, self.section.num_ppo_epochs, &self.sampled, micro) {
            micro.clone_from_slice(&self.sampled);
            return Ok(());
        }
        let device = ctx.device;
        let policy = net.valid();
        let slots: Vec<&Slot<PpoRollout>> = micro.iter().flatten().collect();
        let seeds = slot_seeds(micro, ctx.seed, ctx.rank, ctx.world_size());
        let prompts: Vec<&[u32]> = slots.iter().map(|s| s.prompt.ids.as_slice()).collect();
        let responses = generate_batch(
            &policy.model,
            &prompts,
            &self.sampling(self.section.temperature as f32),
            &seeds,
            self.pad_id,
            device,
        );
        let width = responses.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let rows: Vec<(&[u32], &[u32])> =
            slots.iter().zip(&responses).map(|(s, r)| (s.prompt.ids.as_slice(), r.as_slice())).collect();
        let adapters_off = match &self.reference {
            Reference::Model(_) => None,
            _ => Some(without_adapters(policy.model.clone())),
        };
        let reference = match &self.reference {
            Reference::Model(model) => model.as_ref(),
            _ => adapters_off.as_ref().unwrap_or(&policy.model),
        };
        // One micro-batch's worth of rows at a time, each laid out the rollout batch's width.
        let (mut logps, mut values, mut ref_logps, mut scores) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let chunk = micro.first().map_or(1, Vec::len).max(1);
        for (part, (part_slots, part_responses)) in
            rows.chunks(chunk).zip(slots.chunks(chunk).zip(responses.chunks(chunk)))
        {
            let layout = CompletionRows::new(part, width, self.pad_id, device);
            let full = vec![width; part.len()];
            let (part_logps, part_values, _) = policy_and_values(&policy, &layout, self.section.temperature);
            logps.extend(host_rows(part_logps, &full));
            values.extend(host_rows(part_values, &full));
            ref_logps.extend(host_rows(logps_in(reference, &layout, self.section.temperature).logps, &full));
            scores.extend(self.scores(part_slots, part_responses, device));
        }
        let last: Vec<i64> = responses.iter().map(|r| self.last_token(r)).collect();
        let eos_count = responses.iter().flatten().filter(|&&t| Some(t) == self.eos).count();
        if let Some(penalty) = self.section.missing_eos_penalty {
            for (score, response) in scores.iter_mut().zip(&responses) {
                if !response.iter().any(|&t| Some(t) == self.eos) {
                    *score -= penalty as f32;
                }
            }
        }
        // TRL's fill: log-probs past the last token are INVALID_LOGPROB, values past one more position 0.
        let fill = |rows: &[Vec<f32>], keep: &dyn Fn(usize, usize) -> bool, other: f32| -> Vec<f32> {
            rows.iter()
                .enumerate()
                .flat_map(|(i, row)| row.iter().enumerate().map(move |(t, &v)| if keep(i, t) { v } else { other }))
                .collect()
        };
        let token = |i: usize, t: usize| (t as i64) <= last[i];
        let valued = |i: usize, t: usize| (t as i64) <= last[i] + 1;
        let batch = RolloutBatch {
            rows: rows.len(),
            width,
            last: last.clone(),
            logprobs: fill(&logps, &token, INVALID_LOGPROB),
            ref_logprobs: fill(&ref_logps, &token, INVALID_LOGPROB),
            values: fill(&values, &valued, 0.0),
            scores: scores.clone(),
        };
        let settings = TargetSettings {
            kl_coef: self.section.kl_coef,
            k3: self.section.k3(),
            whiten_rewards: self.section.whiten_rewards,
            gamma: self.section.gamma,
            lam: self.section.lam,
        };
        let targets = batch.targets(&settings);
        // TRL's objective figures: per-rank means of per-row sums, averaged over the ranks.
        let n = rows.len() as f64;
        let row_sum_mean = |values: &[f64]| values.iter().sum::<f64>() / n;
        let kl = row_sum_mean(&targets.kl);
        let non_score = row_sum_mean(&targets.non_score_reward);
        let entropy = -batch.logprobs.iter().map(|&l| f64::from(l)).sum::<f64>() / n;
        let score = scores.iter().map(|&s| f64::from(s)).sum::<f64>() / n;
        let world = ctx.world_size() as f64;
        let figures = ctx.sum_over_ranks(&[kl, entropy, non_score, non_score + score, score])?;
        self.step_figures = vec![
            ("objective/kl", figures[0] / world),
            ("objective/entropy", figures[1] / world),
            ("objective/non_score_reward", figures[2] / world),
            ("objective/rlhf_reward", figures[3] / world),
            ("objective/scores", figures[4] / world),
            // TRL counts rank 0's (the rank that logs).
            ("val/num_eos_tokens", eos_count as f64),
        ];
        let row = |values: &[f64], i: usize| -> Vec<f32> {
            values[i * width..(i + 1) * width].iter().map(|&v| v as f32).collect()
        };
        let mut next = 0;
        for batch_slots in micro.iter_mut() {
            for slot in batch_slots.iter_mut() {
                let i = next;
                next += 1;
                slot.rollout = Some(Arc::new(PpoRollout {
                    completion: responses[i].clone(),
                    last: last[i],
                    logprobs: batch.logprobs[i * width..(i + 1) * width].to_vec(),
                    values: batch.values[i * width..(i + 1) * width].to_vec(),
                    advantages: row(&targets.advantages, i),
                    returns: row(&targets.returns, i),
                }));
            }
        }
        if self.section.num_ppo_epochs > 1 {
            self.sampled = micro.to_vec();
        }
        Ok(())
    }

    fn training_step<'n>(
        &self,
        net: &'n SequenceClassifier<A>,
        batch: &Self::Batch,
        ctx: &StepContext<'_, A>,
    ) -> Result<StepOutput<'n, A>> {
        let device = ctx.device;
        let rollouts: Vec<&PpoRollout> = batch
            .iter()
            .map(|slot| slot.rollout.as_deref())
            .collect::<Option<_>>()
            .ok_or_else(|| LightningError::Invalid("a PPO slot reached training without its rollout".into()))?;
        let width = rollouts.first().map_or(1, |r| r.logprobs.len());
        let rows: Vec<(&[u32], &[u32])> =
            batch.iter().zip(&rollouts).map(|(s, r)| (s.prompt.ids.as_slice(), r.completion.as_slice())).collect();
        let layout = CompletionRows::new(&rows, width, self.pad_id, device);
        let (logps, values, entropy) = policy_and_values(net, &layout, self.section.temperature);
        let n = rows.len();
        let mask = |keep: &dyn Fn(i64, usize) -> bool| -> Tensor<A, 2> {
            let values: Vec<f32> =
                rollouts.iter().flat_map(|r| (0..width).map(move |t| f32::from(u8::from(keep(r.last, t))))).collect();
            Tensor::from_data(TensorData::new(values, [n, width]), device)
        };
        let token_mask = mask(&|last, t| (t as i64) <= last);
        let value_mask = mask(&|last, t| (t as i64) <= last + 1);
        let host = |pick: fn(&PpoRollout) -> &Vec<f32>| -> Tensor<A, 2> {
            let values: Vec<f32> = rollouts.iter().flat_map(|r| pick(r).iter().copied()).collect();
            Tensor::from_data(TensorData::new(values, [n, width]), device)
        };
        // TRL's fill of the new log-probs and values outside their masks.
        let invalid = (token_mask.clone().neg() + 1.0) * INVALID_LOGPROB;
        let parts = self.loss.loss(PpoBatch {
            new_logprobs: logps * token_mask.clone() + invalid,
            old_logprobs: host(|r| &r.logprobs),
            advantages: host(|r| &r.advantages),
            returns: host(|r| &r.returns),
            old_values: host(|r| &r.values),
            values: values * value_mask.clone(),
            token_mask: token_mask.clone(),
            value_mask,
        });
        let tokens = token_mask.clone().sum().into_scalar().elem::<f64>();
        let entropy = (entropy * token_mask).sum().into_scalar().elem::<f64>();
        let mut ratios = vec![
            ("loss/policy_avg", parts.pg_loss, 1.0),
            ("loss/value_avg", parts.vf_loss, 1.0),
            ("policy/clipfrac_avg", parts.pg_clipfrac, 1.0),
            ("val/clipfrac_avg", parts.vf_clipfrac, 1.0),
            ("policy/approxkl_avg", parts.approxkl, 1.0),
            ("val/ratio", parts.ratio, 1.0),
            ("entropy", entropy, tokens),
        ];
        ratios.extend(step_figure_ratios(&self.step_figures, ctx.rank, ctx.micro_batch));
        Ok(StepOutput { loss: parts.loss, metrics: Vec::new(), ratios, deferred: None })
    }

    fn validation_step(
        &self,
        _net: &InnerNet<A, Self>,
        _batch: &Self::Batch,
        _device: &A::Device,
    ) -> Result<LossParts> {
        Err(LightningError::Invalid(
            "PPO has no validation loss: its held-out prompts are scored at the start and end of fit".into(),
        ))
    }

    fn metric_names(&self) -> Vec<&'static str> {
        vec![
            "loss/policy_avg",
            "loss/value_avg",
            "policy/clipfrac_avg",
            "val/clipfrac_avg",
            "policy/approxkl_avg",
            "val/ratio",
            "entropy",
            "objective/kl",
            "objective/entropy",
            "objective/non_score_reward",
            "objective/rlhf_reward",
            "objective/scores",
            "val/num_eos_tokens",
        ]
    }

    fn configure_net(&self, net: SequenceClassifier<A>) -> SequenceClassifier<A> {
        SequenceClassifier { model: self.files.configure_net(net.model), score: net.score }
    }

    fn lr_scale(&self, path: &str) -> f64 {
        LightningModule::<A>::lr_scale(&self.files, path)
    }

    /// The policy's files (as the causal-LM objective writes them) and the value head.
    fn save_checkpoint(&self, net: &SequenceClassifier<A>, dir: &Path) -> Result<()> {
        self.files.save_checkpoint(&net.model, dir)?;
        let path = dir.join(VALUE_HEAD_FILE);
        ValueHead { score: net.score.clone() }
            .save_file(&path, &NamedMpkFileRecorder::<FullPrecisionSettings>::new())
            .map_err(|e| LightningError::Invalid(format!("{}: cannot write the value head: {e}", path.display())))
    }

    fn load_checkpoint(&self, net: SequenceClassifier<A>, dir: &Path) -> Result<SequenceClassifier<A>> {
        let model = self.files.load_checkpoint(net.model, dir)?;
        let path = dir.join(VALUE_HEAD_FILE);
        let device = net.score.val().device();
        let head = ValueHead { score: net.score }
            .load_file(&path, &NamedMpkFileRecorder::<FullPrecisionSettings>::new(), &device)
            .map_err(|e| LightningError::Invalid(format!("{}: not this run's value head: {e}", path.display())))?;
        Ok(SequenceClassifier { model, score: head.score })
    }

    /// The policy, as TRL's PPOTrainer saves it (the value head stays in the checkpoints).
    fn save_final(&self, net: &SequenceClassifier<A>, dir: &Path) -> Result<()> {
        self.files.save_final(&net.model, dir)
    }

    fn on_fit_start(&self, net: &SequenceClassifier<A::InnerBackend>) -> Result<Map<String, Value>> {
        self.held_out_figures(&net.model)
    }

    fn on_fit_end(&self, net: &SequenceClassifier<A::InnerBackend>) -> Result<Map<String, Value>> {
        self.held_out_figures(&net.model)
    }
}

impl<A: AutodiffKernels> Ppo<'_, A> {
    fn held_out_figures(&self, policy: &LlamaModel<A::InnerBackend>) -> Result<Map<String, Value>> {
        let mut figures = Map::new();
        if self.held_out.is_empty() {
            return Ok(figures);
        }
        let device = policy.embed_tokens.val().device();
        let (mut score, mut correct, mut answered) = (0.0, 0usize, 0usize);
        for chunk in self.held_out.chunks(16) {
            let slots: Vec<&Slot<PpoRollout>> = chunk.iter().collect();
            let prompts: Vec<&[u32]> = slots.iter().map(|s| s.prompt.ids.as_slice()).collect();
            let responses =
                generate_batch(policy, &prompts, &self.sampling(0.0), &vec![0; prompts.len()], self.pad_id, &device);
            score += self.scores(&slots, &responses, &device).iter().map(|&s| f64::from(s)).sum::<f64>();
            for (slot, response) in slots.iter().zip(&responses) {
                if let Some(Value::String(answer)) = slot.prompt.columns.get("answer") {
                    let text =
                        self.tokenizer.decode(response, true).map_err(|e| LightningError::Invalid(e.to_string()))?;
                    answered += 1;
                    correct += usize::from(text.trim() == answer.trim());
                }
            }
        }
        figures.insert("held_out/score".into(), json!(score / self.held_out.len() as f64));
        if answered > 0 {
            figures.insert("held_out/exact_match".into(), json!(correct as f64 / answered as f64));
        }
        figures.insert("held_out_prompts".into(), json!(self.held_out.len()));
        Ok(figures)
    }
}
