//! Hugging Face checkpoint directories in and out: config.json, model.safetensors (or shards), generation_config.json.
//!
//! What [`save_model`] writes, transformers' `from_pretrained` loads; what transformers writes, [`load_model`] reads.

mod config;
mod tensors;

pub use config::{Head, HfConfig};
pub use tensors::{
    HostTensor, INDEX_FILE, SINGLE_FILE, StorageDtype, TensorFiles, write_safetensors_file, write_tensors,
};

use std::path::Path;

use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use serde_json::json;

use crate::error::{CoreError, Result};
use crate::fsutil::write_atomic;
use crate::model::sharded::whole_layer;
use crate::model::{
    Attention, DecoderLayer, LayerSource, Linear, LinearWeight, LlamaModel, Mlp, ModelConfig, Nf4Weight, ParamRef,
    RmsNorm, Rotary,
};

/// transformers' default shard limit for `save_pretrained` ("5GB").
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 5_000_000_000;

/// How to write a checkpoint.
#[derive(Debug, Clone)]
pub struct SaveOptions {
    /// Storage dtype; `None` keeps the dtype the config names (f32 when it names none).
    pub dtype: Option<StorageDtype>,
    pub max_shard_bytes: u64,
}

impl Default for SaveOptions {
    fn default() -> Self {
        Self { dtype: None, max_shard_bytes: DEFAULT_MAX_SHARD_BYTES }
    }
}

/// Every tensor name of a model with this config, with its shape, in the order transformers lists them.
pub fn tensor_specs(config: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    tensor_spec_iter(config).collect()
}

/// [`tensor_specs`] one at a time, so a reader can stop early (a config.json may name 2^40 layers).
fn tensor_spec_iter(config: &ModelConfig) -> impl Iterator<Item = (String, Vec<usize>)> + '_ {
    let (h, d) = (config.hidden_size, config.head_dim);
    let q = config.num_attention_heads * d;
    let kv = config.num_key_value_heads * d;
    let ffn = config.intermediate_size;
    let layers = (0..config.num_hidden_layers).flat_map(move |i| {
        let p = format!("model.layers.{i}");
        let mut specs = Vec::new();
        let mut linear = |name: &str, out_dim: usize, in_dim: usize, bias: bool| {
            specs.push((format!("{p}.{name}.weight"), vec![out_dim, in_dim]));
            if bias {
                specs.push((format!("{p}.{name}.bias"), vec![out_dim]));
            }
        };
        linear("self_attn.q_proj", q, h, config.qkv_bias);
        linear("self_attn.k_proj", kv, h, config.qkv_bias);
        linear("self_attn.v_proj", kv, h, config.qkv_bias);
        linear("self_attn.o_proj", h, q, config.o_bias);
        linear("mlp.gate_proj", ffn, h, config.mlp_bias);
        linear("mlp.up_proj", ffn, h, config.mlp_bias);
        linear("mlp.down_proj", h, ffn, config.mlp_bias);
        specs.push((format!("{p}.input_layernorm.weight"), vec![h]));
        specs.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
        specs
    });
    let head = (!config.tie_word_embeddings).then(|| ("lm_head.weight".to_string(), vec![config.vocab_size, h]));
    std::iter::once(("model.embed_tokens.weight".to_string(), vec![config.vocab_size, h]))
        .chain(layers)
        .chain(std::iter::once(("model.norm.weight".to_string(), vec![h])))
        .chain(head)
}

/// Tensors a checkpoint may hold that the model does not use: RoPE buffers some exporters save, and a head
/// saved alongside tied embeddings.
fn ignorable(name: &str, config: &ModelConfig) -> bool {
    name.ends_with("rotary_emb.inv_freq") || (config.tie_word_embeddings && name == "lm_head.weight")
}

/// Loads an HF checkpoint directory (config.json plus model.safetensors or its shards) onto `device`.
pub fn load_model<B: Backend>(dir: &Path, device: &B::Device) -> Result<(LlamaModel<B>, HfConfig)> {
    load_model_with(dir, device, None)
}

/// [`load_model`], with `nf4 = Some(double_quant)` storing every decoder linear weight in NF4 as it is read (one
/// tensor in f32 at a time, never the whole dense model), as transformers' `load_in_4bit` does.
pub fn load_model_with<B: Backend>(
    dir: &Path,
    device: &B::Device,
    nf4: Option<bool>,
) -> Result<(LlamaModel<B>, HfConfig)> {
    let config = HfConfig::load(dir)?;
    if let Head::SequenceClassification { .. } = config.head {
        return Err(CoreError::Invalid(format!(
            "{}: a {} (a reward model) has no language-model head: train it with [reward], or score with `llmtrain \
             score`",
            dir.join("config.json").display(),
            config.model.architecture.sequence_classification_class_name()
        )));
    }
    let files = TensorFiles::open(dir)?;
    check_names(&files, tensor_spec_iter(&config.model), &config.model)?;
    let model = build_model_with(&config.model, device, |name, shape| files.read(name, shape), nf4)?;
    Ok((model, config))
}

/// Refuses a tensor the model has no place for. A config naming more tensors than the file holds misses one,
/// named here without listing the rest (a config.json of 2^40 layers would take terabytes to list).
fn check_names(
    files: &TensorFiles,
    specs: impl Iterator<Item = (String, Vec<usize>)>,
    config: &ModelConfig,
) -> Result<()> {
    let held = files.names().count();
    let specs: Vec<(String, Vec<usize>)> = specs.take(held + 1).collect();
    if specs.len() > held
        && let Some((name, expected)) = specs.iter().find(|(name, _)| files.shape(name).is_none())
    {
        return Err(CoreError::MissingTensor {
            path: files.path_of(name).to_path_buf(),
            name: name.clone(),
            expected: expected.clone(),
        });
    }
    match files.names().find(|name| !ignorable(name, config) && !specs.iter().any(|(n, _)| n == name)) {
        Some(name) => Err(CoreError::ExtraTensor {
            path: files.path_of(name).to_path_buf(),
            name: name.to_string(),
            shape: files.shape(name).unwrap_or_default(),
        }),
        None => Ok(()),
    }
}

/// The name of a sequence classifier's head weight, `[num_labels, hidden]`.
pub const SCORE_WEIGHT: &str = "score.weight";

/// Loads a `*ForSequenceClassification` checkpoint with one label (a reward model): the decoder (without a
/// language-model head) and the `score` weight `[1, hidden]`.
pub fn load_sequence_classifier<B: Backend>(
    dir: &Path,
    device: &B::Device,
) -> Result<(LlamaModel<B>, Tensor<B, 2>, HfConfig)> {
    let config = HfConfig::load(dir)?;
    let path = dir.join("config.json");
    match config.head {
        Head::SequenceClassification { num_labels: 1 } => {}
        Head::SequenceClassification { num_labels } => {
            return Err(CoreError::key(
                &path,
                "id2label",
                format!("{num_labels} labels, but a reward model has one score (num_labels = 1)"),
            ));
        }
        Head::CausalLm => {
            return Err(CoreError::key(&path, "architectures", "a causal LM, not a sequence classifier"));
        }
    }
    let files = TensorFiles::open(dir)?;
    // The decoder is built without a head: the classifier has `score` where a causal LM has `lm_head`.
    let decoder = ModelConfig { tie_word_embeddings: true, ..config.model.clone() };
    let hidden = config.model.hidden_size;
    let specs = tensor_spec_iter(&decoder).chain(std::iter::once((SCORE_WEIGHT.to_string(), vec![1, hidden])));
    check_names(&files, specs, &decoder)?;
    let mut model = build_model(&decoder, device, |name, shape| files.read(name, shape))?;
    model.config.tie_word_embeddings = config.model.tie_word_embeddings;
    let score = files.read(SCORE_WEIGHT, &[1, hidden])?;
    let score = Tensor::from_data(TensorData::new(score.values, [1, hidden]), device);
    Ok((model, score, config))
}

/// Writes a reward model as transformers' `*ForSequenceClassification` with one label: config.json and the
/// decoder's weights with `score.weight` (no language-model head).
pub fn save_sequence_classifier<B: Backend>(
    model: &LlamaModel<B>,
    score: Tensor<B, 2>,
    config: &HfConfig,
    dir: &Path,
    options: &SaveOptions,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| CoreError::io(dir, e))?;
    let dtype =
        options.dtype.or_else(|| config.dtype.as_deref().and_then(StorageDtype::parse)).unwrap_or(StorageDtype::F32);
    let mut config = config.clone();
    config.model = model.config.clone();
    config.head = Head::SequenceClassification { num_labels: 1 };
    let mut tensors: Vec<(String, HostTensor)> =
        model_tensors(model).into_iter().filter(|(name, _)| name != "lm_head.weight").collect();
    let shape = score.dims().to_vec();
    let values = score.into_data().convert::<f32>().into_vec::<f32>().expect("f32 after convert");
    tensors.push((SCORE_WEIGHT.to_string(), HostTensor { shape, values }));
    write_tensors(dir, &tensors, dtype, options.max_shard_bytes)?;
    write_json(&dir.join("config.json"), &config.to_json(dtype.torch_name()))
}

/// Builds a model from a source of named host tensors (a checkpoint, or tensors in memory).
pub fn build_model<B: Backend, F>(config: &ModelConfig, device: &B::Device, source: F) -> Result<LlamaModel<B>>
where
    F: FnMut(&str, &[usize]) -> Result<HostTensor>,
{
    build_model_with(config, device, source, None)
}

/// [`build_model`], with `nf4 = Some(double_quant)` quantizing each decoder linear weight as it is read.
pub fn build_model_with<B: Backend, F>(
    config: &ModelConfig,
    device: &B::Device,
    mut source: F,
    nf4: Option<bool>,
) -> Result<LlamaModel<B>>
where
    F: FnMut(&str, &[usize]) -> Result<HostTensor>,
{
    config.validate().map_err(CoreError::Invalid)?;
    let (h, d) = (config.hidden_size, config.head_dim);
    let q = config.num_attention_heads * d;
    let kv = config.num_key_value_heads * d;
    let ffn = config.intermediate_size;
    let mut matrix = |name: &str, shape: [usize; 2]| -> Result<Tensor<B, 2>> {
        let t = source(name, &shape)?;
        Ok(Tensor::from_data(TensorData::new(t.values, shape), device))
    };
    let embed_tokens = matrix("model.embed_tokens.weight", [config.vocab_size, h])?;
    let lm_head = if config.tie_word_embeddings {
        None
    } else {
        Some(Linear::new(matrix("lm_head.weight", [config.vocab_size, h])?, None))
    };
    let mut layers = Vec::with_capacity(config.num_hidden_layers);
    for i in 0..config.num_hidden_layers {
        let p = format!("model.layers.{i}");
        let mut linear = |name: &str, out_dim: usize, in_dim: usize, bias: bool| -> Result<Linear<B>> {
            let w = source(&format!("{p}.{name}.weight"), &[out_dim, in_dim])?;
            let bias = if bias {
                let b = source(&format!("{p}.{name}.bias"), &[out_dim])?;
                Some(Param::from_tensor(Tensor::from_data(TensorData::new(b.values, [out_dim]), device)))
            } else {
                None
            };
            let weight = match nf4 {
                Some(double_quant) => {
                    let quantized = crate::nf4::Nf4Tensor::quantize(&w.values, double_quant);
                    LinearWeight::Nf4(Nf4Weight::new(quantized, [out_dim, in_dim], device))
                }
                None => {
                    let dense = Tensor::from_data(TensorData::new(w.values, [out_dim, in_dim]), device);
                    LinearWeight::Dense(Param::from_tensor(dense))
                }
            };
            Ok(Linear { weight, bias, adapter: None })
        };
        let self_attn = Attention {
            q_proj: linear("self_attn.q_proj", q, h, config.qkv_bias)?,
            k_proj: linear("self_attn.k_proj", kv, h, config.qkv_bias)?,
            v_proj: linear("self_attn.v_proj", kv, h, config.qkv_bias)?,
            o_proj: linear("self_attn.o_proj", h, q, config.o_bias)?,
            num_heads: config.num_attention_heads,
            num_kv_heads: config.num_key_value_heads,
            head_dim: d,
        };
        let mlp = Mlp {
            gate_proj: linear("mlp.gate_proj", ffn, h, config.mlp_bias)?,
            up_proj: linear("mlp.up_proj", ffn, h, config.mlp_bias)?,
            down_proj: linear("mlp.down_proj", h, ffn, config.mlp_bias)?,
        };
        let mut norm = |name: &str| -> Result<RmsNorm<B>> {
            let w = source(&format!("{p}.{name}.weight"), &[h])?;
            Ok(RmsNorm::new(Tensor::from_data(TensorData::new(w.values, [h]), device), config.rms_norm_eps))
        };
        layers.push(DecoderLayer {
            input_layernorm: norm("input_layernorm")?,
            self_attn,
            post_attention_layernorm: norm("post_attention_layernorm")?,
            mlp,
        });
    }
    let norm = source("model.norm.weight", &[h])?;
    let norm = RmsNorm::new(Tensor::from_data(TensorData::new(norm.values, [h]), device), config.rms_norm_eps);
    Ok(LlamaModel {
        embed_tokens: Param::from_tensor(embed_tokens),
        layers,
        norm,
        lm_head,
        config: config.clone(),
        rotary: Rotary::new(&config.rope, d),
        compute: Default::default(),
    })
}

/// The model's tensors under their HF names, copied to the host as f32.
pub fn model_tensors<B: Backend>(model: &LlamaModel<B>) -> Vec<(String, HostTensor)> {
    host_tensors(model.named_params())
}

/// [`model_tensors`] of a model whose decoder layers' parameters are released (ZeRO stage 3): each layer is
/// gathered from `layers`, copied to host memory and dropped before the next, so the device never holds more than
/// one whole layer (the parameters outside the layers are the model's own); the file is put together in host
/// memory, as DeepSpeed consolidates a ZeRO-3 model on rank 0's CPU.
pub fn model_tensors_gathering<B: Backend>(
    model: &LlamaModel<B>,
    layers: &dyn LayerSource,
) -> Result<Vec<(String, HostTensor)>> {
    let outside = |name: &String| !name.starts_with("model.layers.");
    let mut named = model.named_params();
    let tail = named.iter().position(|(name, _)| outside(name) && name != "model.embed_tokens.weight");
    let after: Vec<_> = named.split_off(tail.unwrap_or(named.len()));
    named.retain(|(name, _)| outside(name));
    let mut out = host_tensors(named);
    for (index, layer) in model.layers.iter().enumerate() {
        let whole = whole_layer(layer, index, Some(layers))?;
        out.extend(host_tensors(whole.named_params(index)));
    }
    out.extend(host_tensors(after));
    Ok(out)
}

/// Each parameter's values on the host; adapters are not part of the base checkpoint (llmtrain-fastlora writes
/// them in PEFT's format).
fn host_tensors<B: Backend>(named: Vec<(String, ParamRef<'_, B>)>) -> Vec<(String, HostTensor)> {
    fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> HostTensor {
        let shape = t.dims().to_vec();
        let values = t.into_data().convert::<f32>().into_vec::<f32>().expect("f32 after convert");
        HostTensor { shape, values }
    }
    named
        .into_iter()
        .filter(|(name, _)| !is_adapter_tensor(name))
        .map(|(name, param)| match param {
            ParamRef::Vector(p) => (name, host(p.val())),
            ParamRef::Matrix(p) => (name, host(p.val())),
        })
        .collect()
}

/// Whether a parameter name belongs to a LoRA/DoRA adapter rather than to the base model.
pub fn is_adapter_tensor(name: &str) -> bool {
    name.contains(".lora_")
}

/// Writes config.json, generation_config.json and the weights into `dir` (created if needed). Each file is
/// written atomically; callers wanting the whole directory swapped at once use [`crate::fsutil::write_dir_atomic`].
pub fn save_model<B: Backend>(
    model: &LlamaModel<B>,
    config: &HfConfig,
    dir: &Path,
    options: &SaveOptions,
) -> Result<()> {
    save_model_gathering(model, None, config, dir, options)
}

/// [`save_model`], with the decoder layers gathered one at a time from `layers` when the model holds them released
/// ([`model_tensors_gathering`]).
pub fn save_model_gathering<B: Backend>(
    model: &LlamaModel<B>,
    layers: Option<&dyn LayerSource>,
    config: &HfConfig,
    dir: &Path,
    options: &SaveOptions,
) -> Result<()> {
    if model.is_quantized() {
        return Err(CoreError::Invalid(format!(
            "{}: a model with 4-bit weights is not written as a checkpoint (save its adapter, or merge the adapter \
             into the dense base with `llmtrain merge`)",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| CoreError::io(dir, e))?;
    let dtype =
        options.dtype.or_else(|| config.dtype.as_deref().and_then(StorageDtype::parse)).unwrap_or(StorageDtype::F32);
    let mut config = config.clone();
    config.model = model.config.clone();
    let tensors = match layers {
        Some(layers) => model_tensors_gathering(model, layers)?,
        None => model_tensors(model),
    };
    // A released parameter (ZeRO stage 3) saved without its layer source would write a model of empty tensors.
    if let Some((name, _)) = tensors.iter().find(|(_, t)| t.values.is_empty()) {
        return Err(CoreError::Invalid(format!(
            "{}: tensor `{name}` has no values (its parameters are released: write the model gathering its layers)",
            dir.display()
        )));
    }
    write_tensors(dir, &tensors, dtype, options.max_shard_bytes)?;
    write_json(&dir.join("generation_config.json"), &generation_config(&config.model))?;
    write_json(&dir.join("config.json"), &config.to_json(dtype.torch_name()))
}

fn generation_config(model: &ModelConfig) -> serde_json::Value {
    let eos = match model.eos_token_ids.as_slice() {
        [] => serde_json::Value::Null,
        [one] => json!(one),
        many => json!(many),
    };
    json!({"_from_model_config": true, "bos_token_id": model.bos_token_id, "eos_token_id": eos,
           "pad_token_id": model.pad_token_id})
}

pub(crate) fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("JSON values serialise");
    write_atomic(path, format!("{text}\n").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::CpuBackend;

    #[test]
    fn a_config_of_more_layers_than_the_checkpoint_names_the_first_missing_tensor() {
        // Found by `cargo xtask fuzz --target config-json`: a huge num_hidden_layers made `load_model` list every
        // layer's tensors (gigabytes) before comparing them with the file's; 2^40 layers pass `validate`.
        let dir = tempfile::tempdir().unwrap();
        let model = ModelConfig::tiny_llama(16, 8, 1, 2, 1);
        let tensors: Vec<(String, HostTensor)> = tensor_specs(&model)
            .into_iter()
            .map(|(name, shape)| {
                let values = vec![0.0; shape.iter().product()];
                (name, HostTensor { shape, values })
            })
            .collect();
        write_tensors(dir.path(), &tensors, StorageDtype::F32, DEFAULT_MAX_SHARD_BYTES).unwrap();
        let mut json = HfConfig::from_model(&model).to_json("float32");
        json["num_hidden_layers"] = json!(1u64 << 40);
        write_json(&dir.path().join("config.json"), &json).unwrap();
        let err = load_model::<CpuBackend>(dir.path(), &Default::default()).expect_err("refused").to_string();
        assert!(err.contains("tensor `model.layers.1.self_attn.q_proj.weight` is missing"), "{err}");
    }
}
