//! PEFT's adapter directory: `adapter_config.json` and `adapter_model.safetensors`, whose tensors are named
//! `base_model.model.<module>.lora_A.weight` `[r, in]`, `...lora_B.weight` `[out, r]` and (DoRA)
//! `...lora_magnitude_vector` `[out]`.

use std::collections::BTreeSet;
use std::path::Path;

use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use llmtrain_core::CoreError;
use llmtrain_core::fsutil::{write_atomic, write_dir_atomic};
use llmtrain_core::hf::{HostTensor, StorageDtype, TensorFiles, is_adapter_tensor, write_safetensors_file};
use llmtrain_core::model::{LlamaModel, LoraAdapter, ParamRef};

use crate::adapt::{for_each_linear, freeze_base, target_names};
use crate::config::{ADAPTER_CONFIG_FILE, LoraConfig};
use crate::error::{LoraError, Result};

/// The file PEFT keeps an adapter's tensors in.
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// What PEFT puts in front of the model's own parameter names.
const PEFT_PREFIX: &str = "base_model.model.";

/// Writes the model's adapters and `config` as a PEFT adapter directory, replacing `dir` atomically.
pub fn save_adapter<B: Backend>(model: &LlamaModel<B>, config: &LoraConfig, dir: &Path) -> Result<()> {
    write_dir_atomic(dir, |tmp| {
        write_adapter_files(model, config, tmp).map_err(|e| match e {
            LoraError::Core(core) => core,
            other => CoreError::Invalid(other.to_string()),
        })
    })?;
    Ok(())
}

/// Writes PEFT's two adapter files into the existing directory `dir` (each file atomically), beside whatever
/// else it holds (a training checkpoint, say).
pub fn write_adapter_files<B: Backend>(model: &LlamaModel<B>, config: &LoraConfig, dir: &Path) -> Result<()> {
    let tensors: Vec<(String, HostTensor)> = model
        .named_params()
        .into_iter()
        .filter(|(name, _)| is_adapter_tensor(name))
        .map(|(name, param)| {
            let host = match param {
                ParamRef::Vector(p) => host(p.val()),
                ParamRef::Matrix(p) => host(p.val()),
            };
            (format!("{PEFT_PREFIX}{name}"), host)
        })
        .collect();
    if tensors.is_empty() {
        return Err(LoraError::Invalid("the model holds no adapter to save".into()));
    }
    let refs: Vec<&(String, HostTensor)> = tensors.iter().collect();
    let json = serde_json::to_string_pretty(&config.to_json()).map_err(|e| LoraError::Invalid(e.to_string()))?;
    write_safetensors_file(&dir.join(ADAPTER_WEIGHTS_FILE), &refs, StorageDtype::F32)?;
    write_atomic(&dir.join(ADAPTER_CONFIG_FILE), json.as_bytes())?;
    Ok(())
}

fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> HostTensor {
    let shape = t.dims().to_vec();
    let values = t.into_data().convert::<f32>().into_vec::<f32>().unwrap_or_default();
    HostTensor { shape, values }
}

/// Reads a PEFT adapter directory onto `model` (its base must be the adapter's base shape), freezes the base,
/// and returns the adapter's config. Every tensor of the file must find its module and shape.
pub fn load_adapter<B: Backend>(model: &mut LlamaModel<B>, dir: &Path, device: &B::Device) -> Result<LoraConfig> {
    let config = LoraConfig::load(dir)?;
    let config_path = dir.join(ADAPTER_CONFIG_FILE);
    let names = target_names(model, &config).map_err(|e| e.in_file(&config_path))?;
    let weights_path = dir.join(ADAPTER_WEIGHTS_FILE);
    if !weights_path.exists() {
        return Err(LoraError::Invalid(format!("{}: missing (an adapter directory needs it)", weights_path.display())));
    }
    let files = TensorFiles::open_files(vec![weights_path.clone()])?;
    let mut used = BTreeSet::new();
    freeze_base(model);
    for_each_linear(model, |name, linear| {
        if !names.iter().any(|n| n == name) {
            return Ok(());
        }
        let [out_dim, in_dim] = linear.dims();
        let (r, scaling) = config.rank_and_scaling(name);
        let mut read = |suffix: &str, shape: &[usize]| -> Result<TensorData> {
            let key = format!("{PEFT_PREFIX}{name}.{suffix}");
            let t = files.read(&key, shape)?;
            used.insert(key);
            Ok(TensorData::new(t.values, t.shape))
        };
        let a = read("lora_A.weight", &[r, in_dim])?;
        let b = read("lora_B.weight", &[out_dim, r])?;
        let magnitude = if config.use_dora { Some(read("lora_magnitude_vector", &[out_dim])?) } else { None };
        linear.adapter = Some(LoraAdapter {
            lora_a: Param::from_tensor(Tensor::from_data(a, device)),
            lora_b: Param::from_tensor(Tensor::from_data(b, device)),
            magnitude: magnitude.map(|m| Param::from_tensor(Tensor::from_data(m, device))),
            scaling,
            dropout: config.lora_dropout,
            dropout_stream: llmtrain_core::model::lora::dropout_stream(name),
        });
        Ok(())
    })?;
    if let Some(extra) = files.names().find(|n| !used.contains(*n)) {
        let shape = files.shape(extra).unwrap_or_default();
        return Err(CoreError::ExtraTensor { path: weights_path, name: extra.to_string(), shape }.into());
    }
    Ok(config)
}
