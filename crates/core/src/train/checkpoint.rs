//! Crash-safe training checkpoints: `checkpoint-<step>/` holds an HF model directory plus the optimizer moments
//! and the trainer state, written into a temporary directory and renamed into place, with a digest of every file
//! so a damaged checkpoint is detected on resume and the previous one used instead.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::optim::{AdamW, AdamWConfig, Moments};
use crate::error::{CoreError, Result};
use crate::fsutil::{write_atomic, write_dir_atomic};
use crate::hf::{self, HfConfig, HostTensor, SaveOptions, StorageDtype, TensorFiles};
use crate::model::{LayerSource, LlamaModel};

pub const STATE_FILE: &str = "trainer_state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const OPTIMIZER_META_FILE: &str = "optimizer.json";
/// Where the ranks write their parts of a checkpoint's optimizer state (`<prefix><step>` in the output directory)
/// before rank 0 moves them into the checkpoint.
pub const SHARD_STAGING_PREFIX: &str = ".optimizer-shards-";
/// The key of [`OPTIMIZER_META_FILE`] that says the optimizer state is in per-rank shards (llmtrain-zero's), with
/// their layout.
pub const SHARDED_KEY: &str = "zero";
const PREFIX: &str = "checkpoint-";

/// Size and CRC-32 of one file of a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    pub bytes: u64,
    pub crc32: u32,
}

/// Everything besides tensors that a resumed run needs to continue exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer updates done.
    pub step: u64,
    /// Where the training data continues, as the run's data source records it (llmtrain's loader: a
    /// [`DataPosition`](crate::data::DataPosition)).
    pub data_position: serde_json::Value,
    pub seed: u64,
    /// Data-parallel ranks of the run that wrote it: the data position counts batches of this many ranks.
    #[serde(default = "one")]
    pub world_size: usize,
    /// Rows of one micro-batch over all ranks (per-rank batch × ranks), when the run knew it: a run with another
    /// number of ranks resumes from this checkpoint when it reads as many rows per micro-batch in all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_batch: Option<u64>,
    /// Micro-batches per optimizer step on each rank: a run of another number of ranks also resumes from this
    /// checkpoint when it reads as many rows per optimizer step in all (an elastic restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gradient_accumulation_steps: Option<usize>,
    /// fp16 runs: the loss scaler, so a resumed run continues at the same scale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scaler: Option<crate::train::LossScaler>,
    /// Digests of the other files in the checkpoint, checked before resuming from it.
    pub files: BTreeMap<String, FileDigest>,
    /// The state of each callback, by name (early stopping's best value and count...).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub callbacks: serde_json::Map<String, serde_json::Value>,
    /// Why the run stopped before `max_steps` (early stopping): a resume has nothing left to do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_early: Option<String>,
    /// The trained module's own state besides its weights (Lightning's `on_save_checkpoint`).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub module: serde_json::Value,
    /// Tokens trained on so far, all ranks (the records' `num_tokens`, TRL's running count).
    #[serde(default)]
    pub num_tokens: u64,
}

fn one() -> usize {
    1
}

fn digest(path: &Path) -> Result<FileDigest> {
    let bytes = std::fs::read(path).map_err(|e| CoreError::io(path, e))?;
    Ok(FileDigest { bytes: bytes.len() as u64, crc32: crc32fast::hash(&bytes) })
}

/// A model's weights as a checkpoint holds them: an HF directory in f32, so a resumed run continues bit for bit.
pub fn save_model_state<B: Backend>(model: &LlamaModel<B>, hf_config: &HfConfig, dir: &Path) -> Result<()> {
    save_model_state_gathering(model, None, hf_config, dir)
}

/// [`save_model_state`] of a model whose decoder layers are released (ZeRO stage 3): gathered one at a time from
/// `layers` ([`hf::save_model_gathering`]).
pub fn save_model_state_gathering<B: Backend>(
    model: &LlamaModel<B>,
    layers: Option<&dyn LayerSource>,
    hf_config: &HfConfig,
    dir: &Path,
) -> Result<()> {
    let f32_weights = SaveOptions { dtype: Some(StorageDtype::F32), ..Default::default() };
    hf::save_model_gathering(model, layers, hf_config, dir, &f32_weights)
}

/// How a checkpoint is named and which checkpoints stay once it is written.
#[derive(Debug, Clone, PartialEq)]
pub struct SavePlan {
    /// Appended to `checkpoint-<step>`: the monitored value (`-eval_loss=2.3456`), or nothing.
    pub suffix: String,
    pub keep: Retention,
}

/// Which checkpoints of the output directory a save removes once it has written its own.
#[derive(Debug, Clone, PartialEq)]
pub enum Retention {
    /// All but the `n` newest (transformers' `save_total_limit`; at least one is kept).
    Newest(usize),
    /// These, by directory name (what a monitored top k no longer holds); nothing else is touched.
    Remove(Vec<String>),
}

impl SavePlan {
    /// `checkpoint-<step>`, keeping the `n` newest.
    pub fn newest(n: usize) -> Self {
        Self { suffix: String::new(), keep: Retention::Newest(n) }
    }
}

/// Where a run continues from (`llmtrain train --resume [last|best|DIR]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResumeFrom {
    /// The newest intact checkpoint of the output directory.
    Last,
    /// The checkpoint whose monitored metric was best (`[model_checkpoint] monitor`).
    Best,
    /// This checkpoint directory.
    Dir(PathBuf),
}

impl std::str::FromStr for ResumeFrom {
    type Err = std::convert::Infallible;
    /// `last`, `best`, or a directory (write `./best` for a directory named `best`).
    fn from_str(text: &str) -> std::result::Result<Self, Self::Err> {
        Ok(match text {
            "last" => Self::Last,
            "best" => Self::Best,
            dir => Self::Dir(PathBuf::from(dir)),
        })
    }
}

/// The step of a checkpoint directory's name: `checkpoint-<step>`, or `checkpoint-<step>-<metric>=<number>` (a
/// monitored value). Any other name (a user's `checkpoint-100-keep`) is not a checkpoint llmtrain manages.
pub fn checkpoint_step(name: &str) -> Option<u64> {
    let rest = name.strip_prefix(PREFIX)?;
    let (digits, monitored) = rest.split_once('-').map_or((rest, None), |(step, tail)| (step, Some(tail)));
    if let Some(tail) = monitored {
        let (metric, value) = tail.rsplit_once('=')?;
        if metric.is_empty() || value.parse::<f64>().is_err() {
            return None;
        }
    }
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Writes `output_dir/checkpoint-<step><suffix>/` atomically: `write_files` writes what the trained module needs
/// (a model, an adapter, a tokenizer), then the optimizer, and last the trainer state with a digest of every
/// file, so a damaged checkpoint is detected on resume. Then removes the checkpoints `plan` does not keep.
pub fn save_checkpoint_with<I: Backend>(
    output_dir: &Path,
    optimizer: Option<&AdamW<I>>,
    mut state: TrainerState,
    plan: &SavePlan,
    write_files: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let target = output_dir.join(format!("{PREFIX}{}{}", state.step, plan.suffix));
    write_dir_atomic(&target, |dir| {
        write_files(dir)?;
        if let Some(optimizer) = optimizer {
            write_optimizer(optimizer, &dir.join(OPTIMIZER_FILE))?;
        }
        state.files.clear();
        let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| CoreError::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        names.sort();
        for path in names {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            state.files.insert(name, digest(&path)?);
        }
        let text = serde_json::to_string_pretty(&state).expect("state serialises");
        write_atomic(&dir.join(STATE_FILE), format!("{text}\n").as_bytes())
    })?;
    let stale: Vec<PathBuf> = match &plan.keep {
        Retention::Newest(n) => {
            let older = list_checkpoints(output_dir)?.into_iter().skip((*n).max(1));
            older.map(|(_, dir)| dir).filter(|dir| *dir != target).collect()
        }
        // The one just written too, when it is listed (a top k without `save_last` that it did not enter).
        Retention::Remove(names) => names
            .iter()
            .filter(|name| checkpoint_step(name).is_some())
            .map(|name| output_dir.join(name))
            .filter(|dir| dir.is_dir())
            .collect(),
    };
    for old in &stale {
        std::fs::remove_dir_all(old).map_err(|e| CoreError::io(old, e))?;
    }
    Ok(target)
}

/// `checkpoint-<step>[-<monitored value>]` directories under `output_dir`, newest first.
pub fn list_checkpoints(output_dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    if !output_dir.exists() {
        return Ok(Vec::new());
    }
    let mut found = Vec::new();
    for entry in std::fs::read_dir(output_dir).map_err(|e| CoreError::io(output_dir, e))? {
        let path = entry.map_err(|e| CoreError::io(output_dir, e))?.path();
        let step = path.file_name().and_then(|n| n.to_str()).and_then(checkpoint_step);
        if let Some(step) = step.filter(|_| path.is_dir()) {
            found.push((step, path));
        }
    }
    found.sort_by_key(|entry| std::cmp::Reverse(entry.0));
    Ok(found)
}

/// Reads and verifies a checkpoint's state: every recorded file present with the recorded size and CRC.
pub fn verify_checkpoint(dir: &Path) -> Result<TrainerState> {
    let state_path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&state_path).map_err(|e| CoreError::io(&state_path, e))?;
    let state: TrainerState = serde_json::from_str(&text).map_err(|e| CoreError::json(&state_path, &e))?;
    for (name, want) in &state.files {
        let got = digest(&dir.join(name))?;
        if got != *want {
            return Err(CoreError::Invalid(format!(
                "{}: {} bytes / crc {:08x}, expected {} bytes / crc {:08x}",
                dir.join(name).display(),
                got.bytes,
                got.crc32,
                want.bytes,
                want.crc32
            )));
        }
    }
    Ok(state)
}

/// The newest checkpoint that verifies; damaged ones are reported with a warning and passed over.
pub fn latest_valid_checkpoint(output_dir: &Path) -> Result<Option<(PathBuf, TrainerState)>> {
    for (_, dir) in list_checkpoints(output_dir)? {
        match verify_checkpoint(&dir) {
            Ok(state) => return Ok(Some((dir, state))),
            Err(err) => tracing::warn!("skipping damaged checkpoint {}: {err}", dir.display()),
        }
    }
    Ok(None)
}

fn write_optimizer<B: Backend>(optimizer: &AdamW<B>, path: &Path) -> Result<()> {
    let mut tensors = Vec::with_capacity(optimizer.moments.len() * 2);
    for (name, m) in &optimizer.moments {
        for (kind, t) in [("exp_avg", &m.exp_avg), ("exp_avg_sq", &m.exp_avg_sq)] {
            let values = t.clone().into_data().convert::<f32>().into_vec::<f32>().expect("f32 after convert");
            tensors.push((format!("{kind}.{name}"), HostTensor { shape: vec![values.len()], values }));
        }
    }
    let refs: Vec<&(String, HostTensor)> = tensors.iter().collect();
    hf::write_safetensors_file(path, &refs, StorageDtype::F32)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let meta = serde_json::json!({"step": optimizer.step, "config": optimizer.config});
    write_atomic(&dir.join(OPTIMIZER_META_FILE), meta.to_string().as_bytes())
}

/// Loads the optimizer moments and step saved in checkpoint `dir`.
pub fn load_optimizer<B: Backend>(dir: &Path, config: AdamWConfig, device: &B::Device) -> Result<AdamW<B>> {
    let meta_path = dir.join(OPTIMIZER_META_FILE);
    let text = std::fs::read_to_string(&meta_path).map_err(|e| CoreError::io(&meta_path, e))?;
    let meta: serde_json::Value = serde_json::from_str(&text).map_err(|e| CoreError::json(&meta_path, &e))?;
    let step = meta["step"].as_u64().ok_or_else(|| CoreError::key(&meta_path, "step", "missing"))?;
    if meta.get(SHARDED_KEY).is_some() {
        return Err(CoreError::key(
            &meta_path,
            SHARDED_KEY,
            "the optimizer state is in per-rank ZeRO shards: resume with a [zero] stage (any number of ranks)",
        ));
    }
    let files = TensorFiles::open_files(vec![dir.join(OPTIMIZER_FILE)])?;
    let mut exp_avg = BTreeMap::new();
    let mut exp_avg_sq = BTreeMap::new();
    for name in files.names().map(String::from).collect::<Vec<_>>() {
        let shape = files.shape(&name).unwrap_or_default();
        let values = files.read(&name, &shape)?.values;
        let n = values.len();
        let tensor = Tensor::<B, 1>::from_data(TensorData::new(values, [n]), device);
        if let Some(param) = name.strip_prefix("exp_avg_sq.") {
            exp_avg_sq.insert(param.to_string(), tensor);
        } else if let Some(param) = name.strip_prefix("exp_avg.") {
            exp_avg.insert(param.to_string(), tensor);
        }
    }
    let mut optimizer = AdamW::new(config);
    optimizer.step = step;
    for (name, m) in exp_avg {
        let Some(v) = exp_avg_sq.remove(&name) else {
            return Err(CoreError::MissingTensor {
                path: dir.join(OPTIMIZER_FILE),
                name: format!("exp_avg_sq.{name}"),
                expected: vec![],
            });
        };
        optimizer.moments.insert(name, Moments { exp_avg: m, exp_avg_sq: v });
    }
    Ok(optimizer)
}

#[cfg(test)]
mod tests {
    use super::checkpoint_step;

    #[test]
    fn checkpoint_names_are_a_step_or_a_step_and_a_monitored_value_and_nothing_else() {
        assert_eq!(checkpoint_step("checkpoint-120"), Some(120));
        assert_eq!(checkpoint_step("checkpoint-120-eval_loss=2.3456"), Some(120));
        assert_eq!(checkpoint_step("checkpoint-7-lr-AdamW=NaN"), Some(7));
        // A user's copy or note is not a checkpoint llmtrain prunes, clears or moves.
        for other in ["checkpoint-120-keep", "checkpoint-120-best=yes", "checkpoint-+5", "checkpoint-", "final"] {
            assert_eq!(checkpoint_step(other), None, "{other}");
        }
    }
}
