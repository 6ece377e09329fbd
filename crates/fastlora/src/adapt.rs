//! Attaching adapters to a model, freezing its base, and merging adapters back into the base weights.

use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use llmtrain_core::model::{Linear, LinearWeight, LlamaModel, LoraAdapter, ParamMut};

use crate::config::{InitLoraWeights, LoraConfig};
use crate::error::{LoraError, Result};

/// Calls `visit(name, layer)` for every decoder linear layer, named as PEFT names modules
/// (`model.layers.0.self_attn.q_proj`).
pub fn for_each_linear<B: Backend>(
    model: &mut LlamaModel<B>,
    mut visit: impl FnMut(&str, &mut Linear<B>) -> Result<()>,
) -> Result<()> {
    for (name, linear) in model.decoder_linears_mut() {
        visit(&name, linear)?;
    }
    Ok(())
}

/// The names of the modules `config` selects, in model order.
pub fn target_names<B: Backend>(model: &mut LlamaModel<B>, config: &LoraConfig) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for_each_linear(model, |name, _| {
        let excluded = match &config.exclude_modules {
            Some(ex) => ex.matches(name)?,
            None => false,
        };
        if !excluded && config.target_modules.matches(name)? {
            names.push(name.to_string());
        }
        Ok(())
    })?;
    Ok(names)
}

/// Attaches a fresh adapter (PEFT's initialisation) to every module `config` selects and freezes everything
/// else, as `get_peft_model` does; returns the adapted modules' names. Fails when nothing matches.
pub fn attach<B: Backend>(model: &mut LlamaModel<B>, config: &LoraConfig, device: &B::Device) -> Result<Vec<String>> {
    config.validate()?;
    let names = target_names(model, config)?;
    if names.is_empty() {
        return Err(LoraError::Config {
            key: "target_modules".into(),
            message: format!("{:?} matches no linear layer of the model", config.target_modules),
        });
    }
    freeze_base(model);
    for_each_linear(model, |name, linear| {
        if names.iter().any(|n| n == name) {
            linear.adapter = Some(new_adapter(linear, config, name, device));
        }
        Ok(())
    })?;
    Ok(names)
}

fn new_adapter<B: Backend>(linear: &Linear<B>, config: &LoraConfig, name: &str, device: &B::Device) -> LoraAdapter<B> {
    let [out_dim, in_dim] = linear.dims();
    let (r, scaling) = config.rank_and_scaling(name);
    // nn.Linear's default init, kaiming-uniform with a = √5: bound = 1/√fan_in.
    let kaiming = |rows: usize, cols: usize| {
        let bound = 1.0 / (cols as f64).sqrt();
        Tensor::<B, 2>::random([rows, cols], Distribution::Uniform(-bound, bound), device)
    };
    let (a, b) = match &config.init_lora_weights {
        InitLoraWeights::Default(true) => (kaiming(r, in_dim), Tensor::zeros([out_dim, r], device)),
        InitLoraWeights::Default(false) => (kaiming(r, in_dim), kaiming(out_dim, r)),
        // Validated: the only named scheme is "gaussian".
        InitLoraWeights::Named(_) => (
            Tensor::random([r, in_dim], Distribution::Normal(0.0, 1.0 / r as f64), device),
            Tensor::zeros([out_dim, r], device),
        ),
    };
    let mut adapter = LoraAdapter {
        lora_a: Param::from_tensor(a),
        lora_b: Param::from_tensor(b),
        magnitude: None,
        scaling,
        dropout: config.lora_dropout,
        dropout_stream: llmtrain_core::model::lora::dropout_stream(name),
    };
    if config.use_dora {
        // DoRA's magnitude starts as the adapted weight's row norms, so the layer starts unchanged.
        let weight = linear.weight_value() + adapter.delta_weight();
        adapter.magnitude = Some(Param::from_tensor(row_norms(weight)));
    }
    adapter
}

/// `‖w_i‖₂` of each row of `[out, in]`.
pub(crate) fn row_norms<B: Backend>(weight: Tensor<B, 2>) -> Tensor<B, 1> {
    let out = weight.dims()[0];
    weight.powi_scalar(2).sum_dim(1).sqrt().reshape([out])
}

/// Stops gradients for every base parameter: autodiff then computes none for them, and no gradient buffer or
/// optimizer state is ever made for them.
pub fn freeze_base<B: Backend>(model: &mut LlamaModel<B>) {
    for (name, param) in model.named_params_mut() {
        if llmtrain_core::hf::is_adapter_tensor(&name) {
            continue;
        }
        match param {
            ParamMut::Vector(p) => *p = p.clone().set_require_grad(false),
            ParamMut::Matrix(p) => *p = p.clone().set_require_grad(false),
        }
    }
}

/// Folds every adapter into its base weight (W ← W + s·B·A; DoRA: each row rescaled to its magnitude) and
/// removes the adapters, leaving a plain model with the same outputs. A 4-bit base weight is dequantized first
/// and the merged layer is dense (merging into a QLoRA base loses nothing to a second quantization).
pub fn merge<B: Backend>(model: &mut LlamaModel<B>) -> Result<usize> {
    let mut merged = 0;
    for_each_linear(model, |_, linear| {
        let Some(adapter) = linear.adapter.take() else { return Ok(()) };
        let mut weight = linear.weight_value() + adapter.delta_weight();
        if let Some(magnitude) = &adapter.magnitude {
            let norms = row_norms(weight.clone());
            weight = weight * (magnitude.val() / norms).unsqueeze_dim(1);
        }
        linear.weight = match &linear.weight {
            LinearWeight::Dense(w) => LinearWeight::Dense(Param::initialized(w.id, weight)),
            LinearWeight::Nf4(_) => LinearWeight::Dense(Param::from_tensor(weight)),
        };
        merged += 1;
        Ok(())
    })?;
    Ok(merged)
}

/// Parameters that train (the adapters') and all parameters, 4-bit base weights included (one each).
pub fn trainable_params<B: Backend>(model: &LlamaModel<B>) -> (usize, usize) {
    let mut trainable = 0;
    let mut total = quantized_weights(model);
    for (name, param) in model.named_params() {
        let n = match param {
            llmtrain_core::model::ParamRef::Vector(p) => p.val().shape().num_elements(),
            llmtrain_core::model::ParamRef::Matrix(p) => p.val().shape().num_elements(),
        };
        total += n;
        if llmtrain_core::hf::is_adapter_tensor(&name) {
            trainable += n;
        }
    }
    (trainable, total)
}

/// Values held by 4-bit base weights (constants, so not among the parameters).
fn quantized_weights<B: Backend>(model: &LlamaModel<B>) -> usize {
    let linears = model.decoder_linears().into_iter();
    linears.filter(|l| matches!(l.weight, LinearWeight::Nf4(_))).map(|l| l.dims().iter().product::<usize>()).sum()
}
