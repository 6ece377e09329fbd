//! QLoRA against bitsandbytes + PEFT (`scripts/make_qlora_fixture.py`): the committed base loaded in 4 bits
//! dequantizes to bitsandbytes' weights bit for bit, and gives transformers' 4-bit logits, alone and with PEFT's
//! LoRA and DoRA adapters; training on the 4-bit base reaches only the adapters.

use crate::common;

use common::{fixture_tokens, fixtures, logits_of, max_diff};

use burn::backend::Autodiff;
use burn::tensor::{Int, Tensor, TensorData};
use llmtrain_core::device::CpuBackend as B;
use llmtrain_core::hf::{self, TensorFiles};
use llmtrain_core::model::{LinearWeight, LlamaModel};
use llmtrain_fastlora::{LoraConfig, TargetModules, attach, load_adapter, trainable_params};

fn expected(name: &str) -> Vec<f32> {
    let files = TensorFiles::open_files(vec![fixtures().join("qlora_expected.safetensors")]).unwrap();
    let shape = files.shape(name).unwrap();
    files.read(name, &shape).unwrap().values
}

fn tokens() -> Vec<i64> {
    fixture_tokens(&fixtures().join("qlora_expected.safetensors"))
}

fn base_4bit(double_quant: bool) -> LlamaModel<B> {
    hf::load_model_with::<B>(&fixtures().join("base"), &Default::default(), Some(double_quant)).unwrap().0
}

fn logits(model: &LlamaModel<B>) -> Vec<f32> {
    logits_of(model, tokens())
}

#[test]
fn a_checkpoint_loaded_in_4_bits_holds_bitsandbytes_weights() {
    let model = base_4bit(true);
    let q = &model.layers[0].self_attn.q_proj;
    assert!(matches!(q.weight, LinearWeight::Nf4(_)), "decoder linears load quantized");
    assert!(model.lm_head.as_ref().is_some_and(|h| h.dense_weight().is_some()), "the head stays dense");
    let ours: Vec<f32> = q.weight_value().into_data().into_vec().unwrap();
    let theirs = expected("q_proj_dequantized");
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&ours), bits(&theirs), "dequantized q_proj vs bitsandbytes");
}

#[test]
fn logits_of_the_4_bit_base_with_and_without_adapters_match_transformers_and_peft() {
    let cases = [(true, None, "base_logits"), (false, None, "plain_base_logits")]
        .into_iter()
        .chain([(true, Some("lora"), "lora_logits"), (true, Some("dora_rslora"), "dora_logits")]);
    for (double_quant, adapter, name) in cases {
        let mut model = base_4bit(double_quant);
        if let Some(adapter) = adapter {
            load_adapter(&mut model, &fixtures().join(adapter), &Default::default()).unwrap();
        }
        let diff = max_diff(&logits(&model), &expected(name));
        println!("{name}: max |Δ| vs bitsandbytes + PEFT {diff:.2e}");
        assert!(diff <= 1e-4, "{name}: {diff}");
    }
}

#[test]
fn training_on_a_4_bit_base_reaches_only_the_adapters() {
    type A = Autodiff<B>;
    let device = Default::default();
    let mut model = hf::load_model_with::<A>(&fixtures().join("base"), &device, Some(true)).unwrap().0;
    let config = LoraConfig::new(4, 8.0, TargetModules::List(vec!["q_proj".into(), "down_proj".into()]));
    attach(&mut model, &config, &device).unwrap();
    let (trainable, total) = trainable_params(&model);
    assert_eq!(trainable, 2 * (4 * 32 + 32 * 4) + 2 * (4 * 64 + 32 * 4));
    assert_eq!(total - trainable, 128 * 32 * 2 + 2 * (2 * 32 * 32 + 2 * 16 * 32 + 3 * 32 * 64) + 5 * 32);
    let tokens = tokens();
    let n = tokens.len();
    let input = Tensor::<A, 2, Int>::from_data(TensorData::new(tokens, [1, n]), &device);
    let grads = model.forward(input, None).powi_scalar(2).mean().backward();
    let mut with_grad = Vec::new();
    for (name, param) in model.named_params() {
        let has = match param {
            llmtrain_core::model::ParamRef::Vector(p) => p.val().grad(&grads).is_some(),
            llmtrain_core::model::ParamRef::Matrix(p) => p.val().grad(&grads).is_some(),
        };
        if has {
            with_grad.push(name);
        }
    }
    assert_eq!(with_grad.len(), 2 * 2 * 2, "A and B of two modules in two layers: {with_grad:?}");
    assert!(with_grad.iter().all(|n| n.contains(".lora_")), "{with_grad:?}");
}
