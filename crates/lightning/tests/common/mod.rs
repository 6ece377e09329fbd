//! What the engine's tests share: one optimizer step of the causal-LM objective on a model held in place.

#![allow(dead_code)]

use burn::backend::Autodiff;
use burn::module::Module;
use burn::tensor::backend::Backend;
use llmtrain_accel::{Accelerator, FullFinetune};
use llmtrain_core::data::Batch;
use llmtrain_core::device::CpuBackend;
use llmtrain_core::model::LlamaModel;
use llmtrain_core::train::AdamW;
use llmtrain_core::train::param_paths::visit_floats;
use llmtrain_lightning::{CausalLm, LightningError, Recompute, StepOptions, StepStats, optimizer_step};

pub type A = Autodiff<CpuBackend>;

/// One optimizer step of `llmtrain train`'s objective, computing as `model.compute` says.
pub fn train_step(
    accelerator: &mut Accelerator<A>,
    model: &mut LlamaModel<A>,
    optimizer: &mut AdamW<CpuBackend>,
    micro: &[Batch],
    options: StepOptions,
) -> Result<StepStats, LightningError> {
    let device = Default::default();
    let mut module = CausalLm::new(&FullFinetune, model.compute, device);
    // burn modules are values: the step takes the model and hands back the updated one.
    let (updated, stats) =
        optimizer_step(accelerator, &mut module, model.clone(), optimizer, &mut micro.to_vec(), &options, &device)?;
    *model = updated;
    Ok(stats)
}

/// Step options with gradient checkpointing on or off.
pub fn options(lr: f64, checkpointing: bool) -> StepOptions {
    StepOptions {
        lr,
        max_grad_norm: Some(1.0),
        gradient_checkpointing: checkpointing.then_some(Recompute { offload: false }),
        ..Default::default()
    }
}

/// Every float parameter of `model`, trainable or not, flattened and concatenated in burn's visiting order.
pub fn weights<B: Backend, M: Module<B>>(model: &M) -> Vec<f32> {
    let mut all = Vec::new();
    visit_floats(model, |value| all.extend(value.into_data().convert::<f32>().into_vec::<f32>().expect("float data")));
    all
}
