//! GRPO and RLOO as an [`Objective`]: before each step the policy samples a rollout into every slot of the step
//! ([`Objective::prepare_step`]), the rewards are gathered over all ranks so each group's advantages see the whole
//! group, and every micro-batch then trains on its rollouts with the clipped-ratio loss.

use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::module::AutodiffModule;
use burn::tensor::{ElementConversion, Tensor};
use llmtrain_core::chat::Message;
use llmtrain_core::data::Content;
use llmtrain_core::generate::{SamplingConfig, generate_batch};
use llmtrain_core::kernels::{AutodiffKernels, Kernels};
use llmtrain_core::model::{LlamaModel, SequenceClassifier};
use llmtrain_core::tokenizer::TextTokenizer;
use llmtrain_lightning::{LightningError, Result, StepContext};
use serde_json::{Map, Value, json};

use super::advantages::{Advantages, grpo_advantages, mean, rloo_advantages, std};
use super::loss::{OnlineLoss, RolloutLogps};
use super::rollout::{
    Rollout, Slot, add_stop_tokens, completion_logps, completion_mask, host_rows, padded_rows, reuses, slot_seeds,
    step_figure_ratios,
};
use super::section::{Algorithm, OnlineSettings};
use crate::policy::{Objective, Scored};
use crate::reference::{Reference, without_adapters};

/// How long the last sampling step spent sampling and scoring (rewards, and the log-probs the loss needs from
/// sampling time and from the reference), on this rank.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RolloutTimings {
    pub generation: Duration,
    pub scoring: Duration,
}

/// An online trainer: its settings, what scores completions, and the step's figures.
pub struct Online<B: Kernels> {
    settings: OnlineSettings,
    loss: OnlineLoss,
    /// Decodes completions for the reward functions; `None` when only a reward model scores (no stop token).
    tokenizer: Option<TextTokenizer>,
    stop_tokens: Vec<u32>,
    pad_id: u32,
    /// For the KL term (`beta > 0`).
    reference: Option<Reference<B>>,
    reward_model: Option<SequenceClassifier<B>>,
    /// What the last sampling step measured over all ranks (logged by rank 0's first micro-batch).
    step_figures: Vec<(&'static str, f64)>,
    /// The micro-batches of the last sampling step, reused for `num_iterations` steps.
    sampled: Vec<Vec<Slot>>,
    timings: RolloutTimings,
}

impl<B: Kernels> Online<B> {
    /// `tokenizer` decodes completions for the reward functions and gives the stop token (its EOS); without one,
    /// only a reward model can score and completions run to `max_completion_length`.
    pub fn new(
        settings: OnlineSettings,
        tokenizer: Option<TextTokenizer>,
        pad_id: u32,
        reference: Option<Reference<B>>,
        reward_model: Option<SequenceClassifier<B>>,
    ) -> Self {
        let loss = match settings.algorithm {
            Algorithm::Grpo { loss_type, .. } => OnlineLoss::Grpo {
                loss_type,
                epsilon_low: settings.epsilon_low,
                epsilon_high: settings.epsilon_high,
                beta: settings.beta,
                bias_correction_kl: settings.use_bias_correction_kl,
                max_completion_length: settings.max_completion_length,
            },
            Algorithm::Rloo { .. } => {
                OnlineLoss::Rloo { epsilon_low: settings.epsilon_low, epsilon_high: settings.epsilon_high }
            }
        };
        let stop_tokens = tokenizer.as_ref().and_then(TextTokenizer::eos_token_id).into_iter().collect();
        Self {
            settings,
            loss,
            tokenizer,
            stop_tokens,
            pad_id,
            reference,
            reward_model,
            step_figures: Vec::new(),
            sampled: Vec::new(),
            timings: RolloutTimings::default(),
        }
    }

    /// Also stops sampling at `ids` (a model's `eos_token_id` list, as transformers' generation config).
    pub fn with_stop_tokens(mut self, ids: impl IntoIterator<Item = u32>) -> Self {
        add_stop_tokens(&mut self.stop_tokens, ids);
        self
    }

    /// Where the last sampling step's time went on this rank.
    pub fn timings(&self) -> RolloutTimings {
        self.timings
    }

    /// Whether the loss needs the log-probs of sampling time: RLOO always, GRPO when a batch is reused.
    fn needs_old_logps(&self) -> bool {
        matches!(self.settings.algorithm, Algorithm::Rloo { .. }) || self.settings.num_iterations > 1
    }

    /// Every reward of each completion (functions, then the model), in the spec's order; the reward model scores
    /// `chunk` sequences at a time.
    fn rewards(
        &self,
        slots: &[&Slot],
        completions: &[Vec<u32>],
        chunk: usize,
        device: &B::Device,
    ) -> Result<Vec<Vec<f64>>> {
        let spec = &self.settings.rewards;
        let invalid = |e: llmtrain_core::CoreError| LightningError::Invalid(e.to_string());
        let texts: Vec<String> = match &self.tokenizer {
            Some(tokenizer) => {
                completions.iter().map(|c| tokenizer.decode(c, true).map_err(invalid)).collect::<Result<_>>()?
            }
            None if spec.functions.is_empty() => vec![String::new(); completions.len()],
            None => {
                return Err(LightningError::Invalid("reward functions need a tokenizer to read completions".into()));
            }
        };
        let mut rewards: Vec<Vec<f64>> = slots
            .iter()
            .zip(completions.iter().zip(&texts))
            .map(|(slot, (completion, text))| {
                spec.functions.iter().map(|f| f.score(text, completion.len(), &slot.prompt.columns)).collect()
            })
            .collect();
        if let Some(model) = &self.reward_model {
            // As TRL: the prompt's text and the completion's (special tokens dropped), re-tokenized without special
            // tokens (a conversation rendered with the completion as the assistant's turn); without a tokenizer,
            // the ids themselves.
            let sequences: Vec<Vec<u32>> = match &self.tokenizer {
                Some(tokenizer) => slots
                    .iter()
                    .zip(&texts)
                    .map(|(slot, text)| reward_input(tokenizer, &slot.prompt.content, text).map_err(invalid))
                    .collect::<Result<_>>()?,
                None => slots.iter().zip(completions).map(|(s, c)| [s.prompt.ids.as_slice(), c].concat()).collect(),
            };
            let refs: Vec<&[u32]> = sequences.iter().map(Vec::as_slice).collect();
            let mut scores = Vec::with_capacity(refs.len());
            for part in refs.chunks(chunk.max(1)) {
                let data = model.score_sequences(part, self.pad_id, device).into_data().convert::<f64>();
                scores.extend_from_slice(data.as_slice::<f64>().unwrap_or_default());
            }
            for (row, score) in rewards.iter_mut().zip(scores) {
                row.push(score);
            }
        }
        Ok(rewards)
    }

    /// The per-token log-probs `model` gives each completion, one micro-batch's worth at a time.
    fn logps_of(
        &self,
        model: &LlamaModel<B>,
        slots: &[&Slot],
        completions: &[Vec<u32>],
        chunk: usize,
        device: &B::Device,
    ) -> Vec<Vec<f32>> {
        let mut out = Vec::with_capacity(slots.len());
        for (slots, completions) in slots.chunks(chunk.max(1)).zip(completions.chunks(chunk.max(1))) {
            let rows: Vec<(&[u32], &[u32])> =
                slots.iter().zip(completions).map(|(s, c)| (s.prompt.ids.as_slice(), c.as_slice())).collect();
            let lengths: Vec<usize> = completions.iter().map(Vec::len).collect();
            let forward = completion_logps(model, &rows, self.settings.temperature, self.pad_id, device);
            out.extend(host_rows(forward.logps, &lengths));
        }
        out
    }

    /// The reference network for the KL term, if the loss uses one.
    fn reference_model(&self, policy: &LlamaModel<B>) -> Option<LlamaModel<B>> {
        match self.reference.as_ref()? {
            Reference::Model(model) => Some((**model).clone()),
            Reference::PolicyWithoutAdapters => Some(without_adapters(policy.clone())),
            Reference::Precomputed => None,
        }
    }
}

/// One completion's entry in the step's table gathered over the ranks: its group, weighted reward, length,
/// whether it ran out of tokens, its KL to the reference summed over tokens (RLOO's penalty), then each reward.
const FIXED_COLUMNS: usize = 5;

impl<A: AutodiffKernels> Objective<A> for Online<A::InnerBackend> {
    type Item = Slot;

    fn batch_weight(&self, batch: &[Slot]) -> f64 {
        batch.iter().map(|slot| self.loss.row_weight(slot.rollout.as_ref().map_or(0, |r| r.counted))).sum()
    }

    fn prepare_step(&mut self, net: &LlamaModel<A>, micro: &mut [Vec<Slot>], ctx: &StepContext<'_, A>) -> Result<()> {
        if reuses(ctx.step, self.settings.num_iterations, &self.sampled, micro) {
            // `num_iterations`: the data repeats this step's slots; train on the same rollouts again.
            micro.clone_from_slice(&self.sampled);
            return Ok(());
        }
        let device = ctx.device;
        let policy = net.valid();
        let slots: Vec<&Slot> = micro.iter().flatten().collect();
        let local = slots.len();
        let (rank, world) = (ctx.rank, ctx.world_size());
        let seeds = slot_seeds(micro, ctx.seed, rank, world);
        let prompts: Vec<&[u32]> = slots.iter().map(|s| s.prompt.ids.as_slice()).collect();
        let sampling: SamplingConfig = self.settings.sampling(self.stop_tokens.clone());
        let started = Instant::now();
        let completions = generate_batch(&policy, &prompts, &sampling, &seeds, self.pad_id, device);
        let generated = Instant::now();
        // As TRL: a completion that ends in neither a stop token nor padding was cut at max_completion_length.
        let truncated: Vec<bool> = completions
            .iter()
            .map(|c| !c.last().is_some_and(|t| self.stop_tokens.contains(t) || *t == self.pad_id))
            .collect();
        let chunk = micro.first().map_or(1, Vec::len);
        // A rank that cannot score fails with the others at the next collective instead of leaving them waiting.
        let rewards = self.rewards(&slots, &completions, chunk, device);
        let old = self.needs_old_logps().then(|| self.logps_of(&policy, &slots, &completions, chunk, device));
        let reference = (self.settings.beta != 0.0).then(|| self.reference_model(&policy)).flatten();
        let reference = reference.map(|model| self.logps_of(&model, &slots, &completions, chunk, device));
        let counted: Vec<usize> = completions
            .iter()
            .zip(&truncated)
            .map(|(c, &t)| if t && self.settings.mask_truncated_completions { 0 } else { c.len() })
            .collect();
        self.timings = RolloutTimings { generation: generated - started, scoring: generated.elapsed() };

        // The step's table over all ranks: every rank fills its own block and the sum assembles it.
        let names = self.settings.rewards.names();
        let width = FIXED_COLUMNS + names.len();
        let failed = f64::from(u8::from(rewards.is_err()));
        let sizes = ctx.sum_over_ranks(&[local as f64, (local * local) as f64, failed])?;
        let rewards = match rewards {
            Err(err) => return Err(err),
            Ok(_) if sizes[2] > 0.0 => {
                return Err(LightningError::Invalid("another rank could not score its completions".into()));
            }
            Ok(rewards) => rewards,
        };
        if sizes[0] * sizes[0] != sizes[1] * world as f64 {
            return Err(LightningError::Invalid(format!(
                "the ranks drew different numbers of completions this step (this rank {local}, all {})",
                sizes[0]
            )));
        }
        let mut table = vec![0.0; world * local * width];
        for i in 0..local {
            let row = &mut table[(rank * local + i) * width..(rank * local + i + 1) * width];
            let kl = match (&old, &reference) {
                (Some(old), Some(reference)) => {
                    old[i].iter().zip(&reference[i]).take(counted[i]).map(|(o, r)| f64::from(o - r)).sum()
                }
                _ => 0.0,
            };
            row[..FIXED_COLUMNS].copy_from_slice(&[
                slots[i].group as f64,
                self.settings.rewards.combine(&rewards[i]),
                completions[i].len() as f64,
                f64::from(u8::from(truncated[i])),
                kl,
            ]);
            row[FIXED_COLUMNS..].copy_from_slice(&rewards[i]);
        }
        let table = ctx.sum_over_ranks(&table)?;
        let rows: Vec<&[f64]> = table.chunks(width).collect();
        let group_of: Vec<usize> = rows.iter().map(|r| r[0] as usize).collect();
        let combined: Vec<f64> = rows.iter().map(|r| r[1]).collect();
        let advantages = match self.settings.algorithm {
            Algorithm::Grpo { scale_rewards, .. } => grpo_advantages(&combined, &group_of, scale_rewards),
            Algorithm::Rloo { normalize_advantages, reward_clip_range } => {
                let penalised: Vec<f64> = rows
                    .iter()
                    .map(|r| {
                        let reward = reward_clip_range.map_or(r[1], |[low, high]| r[1].clamp(low, high));
                        reward - self.settings.beta * r[4]
                    })
                    .collect();
                rloo_advantages(&penalised, &group_of, normalize_advantages)
            }
        };
        self.step_figures = step_figures(&rows, &names, &advantages);
        if matches!(self.settings.algorithm, Algorithm::Rloo { .. }) && reference.is_some() {
            // RLOO logs its reward penalty's KL per token: Σ (old − ref) over the counted tokens.
            let tokens = ctx.sum_over_ranks(&[counted.iter().sum::<usize>() as f64])?[0];
            let kl: f64 = rows.iter().map(|r| r[4]).sum();
            self.step_figures.push(("kl", kl / tokens.max(1.0)));
        }

        let mut next = 0;
        for batch in micro.iter_mut() {
            for slot in batch.iter_mut() {
                let i = next;
                next += 1;
                slot.rollout = Some(Arc::new(Rollout {
                    completion: completions[i].clone(),
                    counted: counted[i],
                    advantage: advantages.values[rank * local + i] as f32,
                    old_logps: old.as_ref().map(|o| o[i].clone()),
                    ref_logps: reference.as_ref().map(|r| r[i].clone()),
                }));
            }
        }
        if self.settings.num_iterations > 1 {
            self.sampled = micro.to_vec();
        }
        Ok(())
    }

    fn train(&self, net: &LlamaModel<A>, batch: &[Slot], ctx: &StepContext<'_, A>) -> Result<Scored<A>> {
        let device = ctx.device;
        let rollouts: Vec<&Rollout> =
            batch.iter().map(|slot| slot.rollout.as_deref()).collect::<Option<_>>().ok_or_else(|| {
                LightningError::Invalid("a completion slot reached training without its rollout".into())
            })?;
        let rows: Vec<(&[u32], &[u32])> =
            batch.iter().zip(&rollouts).map(|(s, r)| (s.prompt.ids.as_slice(), r.completion.as_slice())).collect();
        let forward = completion_logps(net, &rows, self.settings.temperature, self.pad_id, device);
        let width = forward.width;
        let mask = completion_mask::<A>(rollouts.iter().map(|r| r.counted), width, device);
        let column = |pick: fn(&Rollout) -> Option<&Vec<f32>>| -> Option<Tensor<A, 2>> {
            let rows: Option<Vec<&[f32]>> = rollouts.iter().map(|r| pick(r).map(Vec::as_slice)).collect();
            rows.map(|rows| padded_rows::<A>(&rows, width, device))
        };
        let advantages: Vec<f32> = rollouts.iter().map(|r| r.advantage).collect();
        let sums = self.loss.sums(RolloutLogps {
            logps: forward.logps,
            mask: mask.clone(),
            old: column(|r| r.old_logps.as_ref()),
            reference: column(|r| r.ref_logps.as_ref()),
            advantages: Tensor::from_data(advantages.as_slice(), device),
        });
        let tokens = mask.clone().sum().into_scalar().elem::<f64>();
        let entropy = (forward.entropy * mask).sum().into_scalar().elem::<f64>();
        let mut ratios = vec![
            ("entropy", entropy, tokens),
            ("clip_ratio/low_mean", sums.clipped_low, sums.clip_count),
            ("clip_ratio/high_mean", sums.clipped_high, sums.clip_count),
            ("clip_ratio/region_mean", sums.clipped_region, sums.clip_count),
        ];
        if let Some(kl) = sums.kl {
            ratios.push(("kl", kl, tokens));
        }
        ratios.extend(step_figure_ratios(&self.step_figures, ctx.rank, ctx.micro_batch));
        // TRL's clamp(min=1): a micro-batch with no counted token contributes 0, not 0/0.
        let weight = Objective::<A>::batch_weight(self, batch).max(1.0);
        Ok(Scored { loss: sums.loss.div_scalar(weight), metrics: Vec::new(), ratios })
    }

    fn validate(&self, _net: &LlamaModel<A::InnerBackend>, _batch: &[Slot], _device: &A::Device) -> Result<f64> {
        Err(LightningError::Invalid(
            "the online trainers have no validation loss: their held-out prompts are scored at the start and end of fit".into(),
        ))
    }

    fn metric_names(&self) -> Vec<&'static str> {
        let mut names = vec![
            "entropy",
            "clip_ratio/low_mean",
            "clip_ratio/high_mean",
            "clip_ratio/region_mean",
            "kl",
            "reward",
            "reward_std",
            "frac_reward_zero_std",
            "completions/mean_length",
            "completions/min_length",
            "completions/max_length",
            "completions/clipped_ratio",
            "completions/mean_terminated_length",
        ];
        for name in self.settings.rewards.names() {
            names.extend([reward_metric(name, false), reward_metric(name, true)]);
        }
        names
    }

    /// Greedy completions of the held-out prompts, scored: the mean weighted reward and each reward's mean
    /// (`held_out/exact_match` is the accuracy on a task with answers).
    fn held_out(
        &self,
        net: &LlamaModel<A::InnerBackend>,
        items: &[Slot],
        device: &A::Device,
    ) -> Result<Map<String, Value>> {
        let greedy = SamplingConfig { temperature: 0.0, ..self.settings.sampling(self.stop_tokens.clone()) };
        let (mut total, mut per_reward) = (0.0, vec![0.0; self.settings.rewards.names().len()]);
        for chunk in items.chunks(16) {
            let slots: Vec<&Slot> = chunk.iter().collect();
            let prompts: Vec<&[u32]> = slots.iter().map(|s| s.prompt.ids.as_slice()).collect();
            let completions = generate_batch(net, &prompts, &greedy, &vec![0; prompts.len()], self.pad_id, device);
            for rewards in self.rewards(&slots, &completions, slots.len(), device)? {
                total += self.settings.rewards.combine(&rewards);
                per_reward.iter_mut().zip(&rewards).for_each(|(sum, r)| *sum += r);
            }
        }
        let n = items.len().max(1) as f64;
        let mut figures = Map::new();
        figures.insert("held_out/reward".into(), json!(total / n));
        for (name, sum) in self.settings.rewards.names().iter().zip(per_reward) {
            figures.insert(format!("held_out/{name}"), json!(sum / n));
        }
        figures.insert("held_out_prompts".into(), json!(items.len()));
        Ok(figures)
    }
}

/// TRL's figures of a sampling step, from the table of every rank's completions.
fn step_figures(rows: &[&[f64]], names: &[&'static str], advantages: &Advantages) -> Vec<(&'static str, f64)> {
    let column = |k: usize| -> Vec<f64> { rows.iter().map(|r| r[k]).collect() };
    let lengths = column(2);
    let terminated: Vec<f64> = rows.iter().filter(|r| r[3] == 0.0).map(|r| r[2]).collect();
    let mut figures = vec![
        ("reward", mean(&column(1))),
        ("reward_std", std(&column(1))),
        ("frac_reward_zero_std", advantages.frac_zero_std()),
        ("completions/mean_length", mean(&lengths)),
        ("completions/min_length", lengths.iter().copied().fold(f64::INFINITY, f64::min)),
        ("completions/max_length", lengths.iter().copied().fold(0.0, f64::max)),
        ("completions/clipped_ratio", mean(&column(3))),
        ("completions/mean_terminated_length", if terminated.is_empty() { 0.0 } else { mean(&terminated) }),
    ];
    for (k, &name) in names.iter().enumerate() {
        let values = column(FIXED_COLUMNS + k);
        figures.push((reward_metric(name, false), mean(&values)));
        figures.push((reward_metric(name, true), std(&values)));
    }
    figures
}

/// `rewards/NAME/mean` or `rewards/NAME/std`, for the names a reward can have.
fn reward_metric(name: &str, std: bool) -> &'static str {
    match (name, std) {
        ("exact_match", false) => "rewards/exact_match/mean",
        ("exact_match", true) => "rewards/exact_match/std",
        ("format", false) => "rewards/format/mean",
        ("format", true) => "rewards/format/std",
        ("soft_overlong_punishment", false) => "rewards/soft_overlong_punishment/mean",
        ("soft_overlong_punishment", true) => "rewards/soft_overlong_punishment/std",
        (_, false) => "rewards/reward_model/mean",
        (_, true) => "rewards/reward_model/std",
    }
}

/// The reward model's input for one completion, as TRL builds it: the prompt's text followed by the completion's,
/// or the conversation rendered with the completion as the assistant's turn, tokenized without special tokens.
fn reward_input(tokenizer: &TextTokenizer, prompt: &Content, completion: &str) -> llmtrain_core::Result<Vec<u32>> {
    let text = match prompt {
        Content::Text(prompt) => format!("{prompt}{completion}"),
        Content::Chat(messages) => {
            let mut messages = messages.clone();
            messages.push(Message { role: "assistant".into(), content: completion.to_string() });
            tokenizer.apply_chat_template(&messages, false)?
        }
    };
    tokenizer.encode_with(&text, false)
}
