//! The model's parameters listed under their Hugging Face names, for optimizers and checkpoint writers.

use burn::module::Param;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::{DecoderLayer, LinearWeight, LlamaModel};

/// A parameter by reference: vectors (norms, biases) or matrices (embeddings, projections).
pub enum ParamRef<'a, B: Backend> {
    Vector(&'a Param<Tensor<B, 1>>),
    Matrix(&'a Param<Tensor<B, 2>>),
}

/// A parameter by mutable reference, to replace its value after an update.
pub enum ParamMut<'a, B: Backend> {
    Vector(&'a mut Param<Tensor<B, 1>>),
    Matrix(&'a mut Param<Tensor<B, 2>>),
}

/// Pushes onto `$out` the (HF name, parameter) list of decoder layer `$i`, `$layer`.
macro_rules! list_layer_params {
    ($out:ident, $i:expr, $layer:expr, $kind:ident, $($m:tt)*) => {{
        let (out, i, layer) = (&mut $out, $i, $layer);
        macro_rules! linear {
            ($name:literal, $l:expr) => {{
                let l = & $($m)* $l;
                // A 4-bit weight is a constant, not a parameter.
                if let LinearWeight::Dense(w) = & $($m)* l.weight {
                    out.push((format!("model.layers.{i}.{}.weight", $name), $kind::Matrix(w)));
                }
                if let Some(b) = & $($m)* l.bias {
                    out.push((format!("model.layers.{i}.{}.bias", $name), $kind::Vector(b)));
                }
                if let Some(adapter) = & $($m)* l.adapter {
                    let prefix = format!("model.layers.{i}.{}", $name);
                    out.push((format!("{prefix}.lora_A.weight"), $kind::Matrix(& $($m)* adapter.lora_a)));
                    out.push((format!("{prefix}.lora_B.weight"), $kind::Matrix(& $($m)* adapter.lora_b)));
                    if let Some(m) = & $($m)* adapter.magnitude {
                        out.push((format!("{prefix}.lora_magnitude_vector"), $kind::Vector(m)));
                    }
                }
            }};
        }
        linear!("self_attn.q_proj", layer.self_attn.q_proj);
        linear!("self_attn.k_proj", layer.self_attn.k_proj);
        linear!("self_attn.v_proj", layer.self_attn.v_proj);
        linear!("self_attn.o_proj", layer.self_attn.o_proj);
        linear!("mlp.gate_proj", layer.mlp.gate_proj);
        linear!("mlp.up_proj", layer.mlp.up_proj);
        linear!("mlp.down_proj", layer.mlp.down_proj);
        out.push((format!("model.layers.{i}.input_layernorm.weight"), $kind::Vector(& $($m)* layer.input_layernorm.weight)));
        out.push((
            format!("model.layers.{i}.post_attention_layernorm.weight"),
            $kind::Vector(& $($m)* layer.post_attention_layernorm.weight),
        ));
    }};
}

/// Expands to the (HF name, parameter) list of `$model`, borrowing with `& $($m)*` and iterating layers with
/// `$iter`; one listing serves both the shared and the mutable view.
macro_rules! list_params {
    ($model:expr, $kind:ident, $iter:ident, $($m:tt)*) => {{
        let model = $model;
        let mut out = Vec::new();
        out.push(("model.embed_tokens.weight".to_string(), $kind::Matrix(& $($m)* model.embed_tokens)));
        for (i, layer) in model.layers.$iter().enumerate() {
            list_layer_params!(out, i, layer, $kind, $($m)*);
        }
        out.push(("model.norm.weight".to_string(), $kind::Vector(& $($m)* model.norm.weight)));
        if let Some(head) = & $($m)* model.lm_head {
            if let LinearWeight::Dense(w) = & $($m)* head.weight {
                out.push(("lm_head.weight".to_string(), $kind::Matrix(w)));
            }
        }
        out
    }};
}

impl<B: Backend> DecoderLayer<B> {
    /// This layer's parameters under their HF names, as layer `index` of a model (`model.layers.{index}.…`), in
    /// [`LlamaModel::named_params`]'s order.
    pub fn named_params(&self, index: usize) -> Vec<(String, ParamRef<'_, B>)> {
        let mut out = Vec::new();
        list_layer_params!(out, index, self, ParamRef,);
        out
    }
}

impl<B: Backend> LlamaModel<B> {
    /// Every parameter under its HF name (tied heads appear once, as `model.embed_tokens.weight`); adapters'
    /// tensors follow their layer's under PEFT's names (`model.layers.0.self_attn.q_proj.lora_A.weight`).
    pub fn named_params(&self) -> Vec<(String, ParamRef<'_, B>)> {
        list_params!(self, ParamRef, iter,)
    }

    /// Every parameter under its HF name, mutably, in the same order as [`LlamaModel::named_params`].
    pub fn named_params_mut(&mut self) -> Vec<(String, ParamMut<'_, B>)> {
        list_params!(self, ParamMut, iter_mut, mut)
    }
}
