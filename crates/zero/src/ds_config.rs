//! `ds_config.json` as DeepSpeed users write it (`[training] deepspeed = "ds_config.json"` or `llmtrain train
//! --deepspeed FILE`, transformers' `deepspeed` argument): every key is taken into the run's settings or refused by
//! name, and `"auto"` keeps the run config's own value, as transformers' Trainer fills it.
//!
//! Taken: the batch triple (`train_batch_size` = micro × accumulation × ranks, any two given), `gradient_clipping`,
//! `fp16` (with DeepSpeed's loss-scale keys) and `bf16`, `optimizer` (AdamW / Adam in AdamW mode), `scheduler`
//! (WarmupLR, WarmupDecayLR), `zero_optimization` (stage, bucket size, optimizer offload). Accepted without
//! effect, since they tune how DeepSpeed overlaps or prints and not what is computed: `overlap_comm`,
//! `contiguous_gradients`, `allgather_partitions`, `reduce_scatter`, `allgather_bucket_size` (the all-gathers use
//! `reduce_bucket_size`'s windows), `round_robin_gradients`, `pin_memory`, `steps_per_print`,
//! `wall_clock_breakdown`, `zero_allow_untested_optimizer`, and stage 3's `stage3_prefetch_bucket_size`,
//! `stage3_param_persistence_threshold`, `stage3_max_live_parameters`, `stage3_max_reuse_distance`,
//! `stage3_gather_16bit_weights_on_model_save` and `sub_group_size` (llmtrain gathers each layer when its turn
//! comes, keeps at most one live and always writes the whole model).

use std::path::{Path, PathBuf};

use llmtrain_core::config::{MixedPrecision, RunConfig};
use llmtrain_core::train::{ScheduleKind, WarmupType};
use llmtrain_memopt::MemoptSection;
use serde_json::{Map, Value};

use crate::section::{OffloadDevice, ZeroSection};

/// A key of a ds_config.json that cannot be taken.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{path}: key `{key}`: {message}")]
pub struct DsConfigError {
    pub path: PathBuf,
    /// The key's JSON path, dotted (`zero_optimization.stage`).
    pub key: String,
    pub message: String,
}

/// Keys accepted without effect (see the module's comment).
const NO_EFFECT: &[&str] = &[
    "steps_per_print",
    "wall_clock_breakdown",
    "zero_allow_untested_optimizer",
    "zero_optimization.overlap_comm",
    "zero_optimization.contiguous_gradients",
    "zero_optimization.allgather_partitions",
    "zero_optimization.reduce_scatter",
    "zero_optimization.allgather_bucket_size",
    "zero_optimization.round_robin_gradients",
    "zero_optimization.offload_optimizer.pin_memory",
    "zero_optimization.offload_param.pin_memory",
];

/// Reads the DeepSpeed config at `path` into `config` and `memopt` (the run's own values stand where it says
/// `"auto"` or says nothing) and returns the ZeRO settings it names, for a run of `world` ranks that trains
/// `max_steps` steps.
pub fn apply_ds_config(
    path: &Path,
    config: &mut RunConfig,
    memopt: &mut MemoptSection,
    world: usize,
    max_steps: u64,
) -> Result<ZeroSection, DsConfigError> {
    let err = |key: &str, message: String| DsConfigError { path: path.to_path_buf(), key: key.into(), message };
    let text = std::fs::read_to_string(path).map_err(|e| err("", format!("cannot read it: {e}")))?;
    let root: Value = serde_json::from_str(&text).map_err(|e| err("", format!("not JSON: {e}")))?;
    let reader = Reader { path };
    let top = reader.object(&root, "")?;
    reader.known(
        top,
        "",
        &[
            "train_batch_size",
            "train_micro_batch_size_per_gpu",
            "gradient_accumulation_steps",
            "gradient_clipping",
            "fp16",
            "bf16",
            "optimizer",
            "scheduler",
            "zero_optimization",
        ],
    )?;

    // The batch triple: any two given, the third follows; all three must agree.
    let total = reader.count(top, "train_batch_size")?;
    let mut micro = reader.count(top, "train_micro_batch_size_per_gpu")?;
    let mut accumulation = reader.count(top, "gradient_accumulation_steps")?;
    if let Some(total) = total {
        let per_step = |n: u64| total.checked_rem(n * world as u64).map(|r| (r, total / (n * world as u64)));
        match (micro, accumulation) {
            (Some(m), None) => accumulation = Some(reader.quotient(per_step(m), "gradient_accumulation_steps")?),
            (None, Some(a)) => micro = Some(reader.quotient(per_step(a), "train_micro_batch_size_per_gpu")?),
            // DeepSpeed: no accumulation, each rank's micro-batch a share of the total.
            (None, None) => {
                accumulation = Some(1);
                micro = Some(reader.quotient(per_step(1), "train_micro_batch_size_per_gpu")?);
            }
            (Some(_), Some(_)) => {}
        }
        let m = micro.unwrap_or(config.data.batch_size as u64);
        let a = accumulation.unwrap_or(config.training.gradient_accumulation_steps as u64);
        if m * a * world as u64 != total {
            return Err(err(
                "train_batch_size",
                format!(
                    "{total} is not micro-batch {m} × accumulation {a} × {world} rank(s) = {}",
                    m * a * world as u64
                ),
            ));
        }
    }
    if let Some(m) = micro {
        config.data.batch_size = m as usize;
    }
    if let Some(a) = accumulation {
        config.training.gradient_accumulation_steps = a as usize;
    }
    if let Some(clip) = reader.within(top, "", "gradient_clipping", (0.0, f64::MAX), "≥ 0")? {
        config.training.max_grad_norm = clip;
    }

    reader.precision(top, memopt)?;
    if let Some(optimizer) = top.get("optimizer") {
        reader.optimizer(optimizer, config)?;
    }
    if let Some(scheduler) = top.get("scheduler") {
        reader.scheduler(scheduler, config, max_steps)?;
    }
    let zero = match top.get("zero_optimization") {
        Some(zero) => reader.zero(zero)?,
        None => ZeroSection::default(),
    };
    Ok(zero)
}

/// Reads values out of one ds_config.json, naming the file and key on every error.
struct Reader<'p> {
    path: &'p Path,
}

impl Reader<'_> {
    fn err(&self, key: &str, message: impl Into<String>) -> DsConfigError {
        DsConfigError { path: self.path.to_path_buf(), key: key.into(), message: message.into() }
    }

    fn object<'v>(&self, value: &'v Value, key: &str) -> Result<&'v Map<String, Value>, DsConfigError> {
        value.as_object().ok_or_else(|| self.err(key, "must be a JSON object"))
    }

    /// Refuses a key of `object` (at `prefix`) outside `taken` and [`NO_EFFECT`].
    fn known(&self, object: &Map<String, Value>, prefix: &str, taken: &[&str]) -> Result<(), DsConfigError> {
        for key in object.keys() {
            // Escaped: a key may hold a line break, and the error is one line.
            let key = llmtrain_core::error::one_line(key);
            let full = Self::full(prefix, &key);
            if !taken.contains(&&*key) && !NO_EFFECT.contains(&full.as_str()) {
                let mut names: Vec<String> = taken.iter().map(|k| format!("`{k}`")).collect();
                names.sort();
                return Err(self.err(&full, format!("not supported by llmtrain (taken here: {})", names.join(", "))));
            }
        }
        Ok(())
    }

    fn full(prefix: &str, key: &str) -> String {
        if prefix.is_empty() { key.to_string() } else { format!("{prefix}.{key}") }
    }

    /// A number, `None` when absent or `"auto"`.
    fn number_at(&self, object: &Map<String, Value>, prefix: &str, key: &str) -> Result<Option<f64>, DsConfigError> {
        match object.get(key) {
            None => Ok(None),
            Some(Value::String(s)) if s == "auto" => Ok(None),
            Some(value) => value.as_f64().map(Some).ok_or_else(|| {
                self.err(&Self::full(prefix, key), format!("must be a number or \"auto\", got {value}"))
            }),
        }
    }

    /// A whole number of at least `min`, `None` when absent or `"auto"`.
    fn whole_at(
        &self,
        object: &Map<String, Value>,
        prefix: &str,
        key: &str,
        min: u64,
    ) -> Result<Option<u64>, DsConfigError> {
        match self.number_at(object, prefix, key)? {
            Some(n) if n >= min as f64 && n.fract() == 0.0 && n < u32::MAX as f64 => Ok(Some(n as u64)),
            Some(n) => Err(self.err(&Self::full(prefix, key), format!("must be a whole number ≥ {min}, got {n}"))),
            None => Ok(None),
        }
    }

    /// A positive whole number, `None` when absent or `"auto"`.
    fn count(&self, object: &Map<String, Value>, key: &str) -> Result<Option<u64>, DsConfigError> {
        self.whole_at(object, "", key, 1)
    }

    /// A number in `range`, `None` when absent or `"auto"`.
    fn within(
        &self,
        object: &Map<String, Value>,
        prefix: &str,
        key: &str,
        range: (f64, f64),
        what: &str,
    ) -> Result<Option<f64>, DsConfigError> {
        match self.number_at(object, prefix, key)? {
            Some(v) if v >= range.0 && v <= range.1 => Ok(Some(v)),
            Some(v) => Err(self.err(&Self::full(prefix, key), format!("must be {what}, got {v}"))),
            None => Ok(None),
        }
    }

    fn quotient(&self, division: Option<(u64, u64)>, key: &str) -> Result<u64, DsConfigError> {
        match division {
            Some((0, q)) if q >= 1 => Ok(q),
            _ => Err(self.err(
                "train_batch_size",
                format!("does not divide into whole micro-batches × accumulation × ranks (deriving `{key}`)"),
            )),
        }
    }

    /// `"enabled"` of a section: `None` for `"auto"` or absent.
    fn enabled(&self, object: &Map<String, Value>, prefix: &str) -> Result<Option<bool>, DsConfigError> {
        match object.get("enabled") {
            None => Ok(None),
            Some(Value::String(s)) if s == "auto" => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.err(&format!("{prefix}.enabled"), format!("must be true, false or \"auto\", got {v}"))),
        }
    }

    fn precision(&self, top: &Map<String, Value>, memopt: &mut MemoptSection) -> Result<(), DsConfigError> {
        let on = |name: &str| top.get(name).and_then(|s| s.get("enabled")) == Some(&Value::Bool(true));
        if on("fp16") && on("bf16") {
            return Err(self.err("bf16.enabled", "true, and so is fp16.enabled: enable one of them"));
        }
        for (name, kind) in [("fp16", MixedPrecision::Fp16), ("bf16", MixedPrecision::Bf16)] {
            let Some(section) = top.get(name) else { continue };
            let section = self.object(section, name)?;
            let taken: &[&str] = if name == "fp16" {
                &["enabled", "loss_scale", "initial_scale_power", "loss_scale_window", "hysteresis", "min_loss_scale"]
            } else {
                &["enabled"]
            };
            self.known(section, name, taken)?;
            match self.enabled(section, name)? {
                Some(true) => memopt.mixed_precision = kind,
                Some(false) if memopt.mixed_precision == kind => {
                    return Err(self.err(
                        &format!("{name}.enabled"),
                        format!("false, but the run config's [memopt] mixed_precision is {name}: say one of them"),
                    ));
                }
                _ => {}
            }
            if name == "fp16" {
                if let Some(v) = self.within(section, name, "loss_scale", (0.0, f64::MAX), "≥ 0 (0: dynamic)")? {
                    memopt.loss_scale = v;
                }
                if let Some(v) = self.whole_at(section, name, "initial_scale_power", 0)? {
                    memopt.initial_scale_power = v as u32;
                }
                if let Some(v) = self.whole_at(section, name, "loss_scale_window", 1)? {
                    memopt.loss_scale_window = v;
                }
                if let Some(v) = self.whole_at(section, name, "hysteresis", 1)? {
                    memopt.hysteresis = v as u32;
                }
                if let Some(v) = self.within(section, name, "min_loss_scale", (f64::MIN_POSITIVE, f64::MAX), "> 0")? {
                    memopt.min_loss_scale = v;
                }
            }
        }
        Ok(())
    }

    fn optimizer(&self, optimizer: &Value, config: &mut RunConfig) -> Result<(), DsConfigError> {
        let optimizer = self.object(optimizer, "optimizer")?;
        self.known(optimizer, "optimizer", &["type", "params"])?;
        let kind = optimizer.get("type").and_then(Value::as_str).unwrap_or("");
        if !matches!(kind.to_ascii_lowercase().as_str(), "adamw" | "adam") {
            return Err(
                self.err("optimizer.type", format!("{kind:?}: llmtrain trains with AdamW (\"AdamW\" or \"Adam\")"))
            );
        }
        let Some(params) = optimizer.get("params") else { return Ok(()) };
        let params = self.object(params, "optimizer.params")?;
        self.known(params, "optimizer.params", &["lr", "betas", "eps", "weight_decay", "adam_w_mode", "torch_adam"])?;
        // DeepSpeed's Adam decouples weight decay (AdamW) unless told not to.
        if params.get("adam_w_mode") == Some(&Value::Bool(false)) {
            return Err(
                self.err("optimizer.params.adam_w_mode", "false (L2-regularised Adam) is not supported: AdamW only")
            );
        }
        let t = &mut config.training;
        let p = "optimizer.params";
        let positive = (f64::MIN_POSITIVE, f64::MAX);
        if let Some(lr) = self.within(params, p, "lr", positive, "a positive number")? {
            t.learning_rate = lr;
        }
        if let Some(eps) = self.within(params, p, "eps", positive, "a positive number")? {
            t.adam_epsilon = eps;
        }
        if let Some(wd) = self.within(params, p, "weight_decay", (0.0, f64::MAX), "≥ 0")? {
            t.weight_decay = wd;
        }
        let beta = |v: &Value| v.as_f64().filter(|b| (0.0..1.0).contains(b));
        match params.get("betas") {
            None => {}
            Some(Value::String(s)) if s == "auto" => {}
            Some(Value::Array(b)) if b.len() == 2 && b.iter().all(|v| beta(v).is_some()) => {
                (t.adam_beta1, t.adam_beta2) = (beta(&b[0]).unwrap_or(0.9), beta(&b[1]).unwrap_or(0.999));
            }
            Some(v) => {
                let message = format!("must be [beta1, beta2] in [0, 1) or \"auto\", got {v}");
                return Err(self.err("optimizer.params.betas", message));
            }
        }
        Ok(())
    }

    fn scheduler(&self, scheduler: &Value, config: &mut RunConfig, max_steps: u64) -> Result<(), DsConfigError> {
        let scheduler = self.object(scheduler, "scheduler")?;
        self.known(scheduler, "scheduler", &["type", "params"])?;
        let kind = scheduler.get("type").and_then(Value::as_str).unwrap_or("");
        let decay = match kind {
            "WarmupLR" => false,
            "WarmupDecayLR" => true,
            other => {
                return Err(
                    self.err("scheduler.type", format!("{other:?}: \"WarmupLR\" or \"WarmupDecayLR\" are supported"))
                );
            }
        };
        let p = "scheduler.params";
        let empty = Map::new();
        let params = match scheduler.get("params") {
            Some(params) => self.object(params, p)?,
            None => &empty,
        };
        let mut taken = vec!["warmup_min_lr", "warmup_max_lr", "warmup_num_steps", "warmup_type"];
        if decay {
            taken.push("total_num_steps");
        }
        self.known(params, p, &taken)?;
        if let Some(min) = self.within(params, p, "warmup_min_lr", (0.0, f64::MAX), "≥ 0")?
            && min != 0.0
        {
            return Err(self.err("scheduler.params.warmup_min_lr", format!("{min}: warmup starts from 0 in llmtrain")));
        }
        let t = &mut config.training;
        if let Some(max) =
            self.within(params, p, "warmup_max_lr", (f64::MIN_POSITIVE, f64::MAX), "a positive number")?
        {
            t.learning_rate = max;
        }
        if let Some(steps) = self.whole_at(params, p, "warmup_num_steps", 0)? {
            t.warmup_steps = steps;
        }
        // DeepSpeed's WarmupLR rises logarithmically unless told "linear".
        t.warmup_type = match params.get("warmup_type").and_then(Value::as_str) {
            None | Some("log") => WarmupType::Log,
            Some("linear") => WarmupType::Linear,
            Some(other) => {
                return Err(self.err("scheduler.params.warmup_type", format!("{other:?}: \"log\" or \"linear\"")));
            }
        };
        t.lr_schedule = if decay { ScheduleKind::Linear } else { ScheduleKind::Constant };
        if let Some(total) = self.whole_at(params, p, "total_num_steps", 1)?
            && total != max_steps
        {
            return Err(self.err(
                "scheduler.params.total_num_steps",
                format!("{total} differs from the run's max_steps ({max_steps}): make them equal or say \"auto\""),
            ));
        }
        Ok(())
    }

    fn zero(&self, zero: &Value) -> Result<ZeroSection, DsConfigError> {
        let p = "zero_optimization";
        let object = self.object(zero, p)?;
        // Stage 3's tuning (DeepSpeed ignores it below stage 3). Accepted without effect at stage 3 too: every
        // layer is gathered when its turn comes and released after it (no prefetch, no persistent small parameters,
        // at most one layer live), the step updates whole shares, and checkpoints always hold the whole model.
        let stage3 = [
            "stage3_prefetch_bucket_size",
            "stage3_param_persistence_threshold",
            "stage3_max_live_parameters",
            "stage3_max_reuse_distance",
            "stage3_gather_16bit_weights_on_model_save",
            "sub_group_size",
        ];
        let mut taken = vec!["stage", "reduce_bucket_size", "offload_optimizer", "offload_param"];
        taken.extend(stage3);
        self.known(object, p, &taken)?;
        let mut section = ZeroSection::default();
        if let Some(stage) = self.whole_at(object, p, "stage", 0)? {
            section.stage = u8::try_from(stage).unwrap_or(u8::MAX);
        }
        if let Some(size) = self.number_at(object, p, "reduce_bucket_size")? {
            section.reduce_bucket_size = size;
        }
        for (key, slot) in
            [("offload_optimizer", &mut section.offload_optimizer), ("offload_param", &mut section.offload_param)]
        {
            let Some(offload) = object.get(key) else { continue };
            let full = format!("{p}.{key}");
            let offload = self.object(offload, &full)?;
            self.known(offload, &full, &["device"])?;
            *slot = match offload.get("device").and_then(Value::as_str) {
                None | Some("none") => OffloadDevice::None,
                Some("cpu") => OffloadDevice::Cpu,
                Some("nvme") => OffloadDevice::Nvme,
                Some(other) => return Err(self.err(&format!("{full}.device"), format!("{other:?}: none, cpu or nvme"))),
            };
        }
        // The same checks as a [zero] section's, named by their JSON keys.
        llmtrain_core::config::ConfigSection::validate(&section)
            .map_err(|invalid| self.err(&format!("{p}.{}", invalid.key), invalid.message))?;
        Ok(section)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(json: &str) -> Result<ZeroSection, DsConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ds_config.json");
        std::fs::write(&path, json).unwrap();
        let run = "[model]\npath = \"m\"\n[data]\nfiles = [\"d.jsonl\"]\nseq_len = 8\nbatch_size = 2\n";
        let mut config = RunConfig::parse(run, &dir.path().join("run.toml"), dir.path(), &[]).unwrap();
        apply_ds_config(&path, &mut config, &mut MemoptSection::default(), 1, 10)
    }

    #[test]
    fn an_unknown_key_with_a_line_break_stays_on_the_error_line() {
        // Found by `cargo xtask fuzz --target ds-config`: the key was printed raw, splitting the message.
        let err = apply(r#"{"zero_optimization": {"a\nb": 1}}"#).unwrap_err();
        assert_eq!(err.key, "zero_optimization.a\\nb");
        assert!(!err.to_string().contains('\n'), "{err}");
    }
}
