//! The GPU code path, executed: the wgpu backend against transformers' fixtures and against the CPU backend.
//!
//! On a machine without a GPU, Mesa's lavapipe (Debian `mesa-vulkan-drivers`) runs wgpu's compute shaders on the
//! CPU, so CI runs this file (`cargo test -p llmtrain-core --features wgpu --test wgpu`): the same shaders, the
//! same custom-op dispatch and the same tensor types (u8 codes, int gathers, bool masks) as on a GPU.
//!
//! - transformers parity: logits of the three fixtures (one with a bias, one with a sliding window), whole and
//!   packed;
//! - generation with the KV cache: greedy output equals transformers' `generate`, cached equals recomputed;
//! - training: three AdamW steps through every custom op (plain, flash attention, the fused head + loss with the
//!   fused RMSNorm/SwiGLU/RoPE, an NF4 base with LoRA adapters) give the CPU backend's losses.

mod common;

use burn::backend::Autodiff;
use burn::tensor::{Tensor, TensorData};
use llmtrain_core::data::Batch;
use llmtrain_core::device::{CpuBackend, WgpuBackend};
use llmtrain_core::generate::{SamplingConfig, generate, generate_uncached};
use llmtrain_core::hf;
use llmtrain_core::kernels::AutodiffKernels;
use llmtrain_core::model::{AttentionKernel, LlamaModel, LoraAdapter, ModelConfig, PositionIds, tokens_tensor};
use llmtrain_core::train::{AdamW, AdamWConfig, GradientBuffer, batch_loss};

use common::{expected_floats, expected_ints, fixture, max_abs_diff, to_vec};

type Gpu = WgpuBackend;

const FIXTURES: [&str; 3] = ["llama_gqa_tied", "qwen2_bias", "mistral_mqa"];
/// The CPU parity tests' tolerance: the shaders compute in f32 too.
const TOLERANCE: f32 = 1e-4;

#[test]
fn logits_match_transformers() {
    let device = Default::default();
    for name in FIXTURES {
        let dir = fixture(name);
        let (model, _) = hf::load_model::<Gpu>(&dir, &device).unwrap();
        let tokens = expected_ints(&dir, "tokens");
        let got = to_vec(model.forward(tokens_tensor::<Gpu>(&tokens, 1, &device), None));
        let diff = max_abs_diff(&got, &expected_floats(&dir, "logits"));
        let positions = PositionIds::new(1, tokens.len(), expected_ints(&dir, "packed_positions"));
        let packed = to_vec(model.forward(tokens_tensor::<Gpu>(&tokens, 1, &device), Some(&positions)));
        let packed_diff = max_abs_diff(&packed, &expected_floats(&dir, "packed_logits"));
        println!("wgpu {name}: max |Δlogits| {diff:.3e}, packed {packed_diff:.3e}");
        assert!(diff <= TOLERANCE && packed_diff <= TOLERANCE, "{name}: {diff} / {packed_diff} > {TOLERANCE}");
    }
}

#[test]
fn generation_with_the_kv_cache_matches_transformers() {
    let device = Default::default();
    let dir = fixture("llama_gqa_tied");
    let (model, _) = hf::load_model::<Gpu>(&dir, &device).unwrap();
    let want = expected_ints(&dir, "generate_output");
    let config = SamplingConfig { max_new_tokens: want.len(), ..Default::default() };
    assert_eq!(generate(&model, &expected_ints(&dir, "generate_prompt"), &config, &device), want);
    for name in FIXTURES {
        let (model, _) = hf::load_model::<Gpu>(&fixture(name), &device).unwrap();
        let config = SamplingConfig { max_new_tokens: 8, ..Default::default() };
        let prompt = [1, 17, 42, 99];
        let cached = generate(&model, &prompt, &config, &device);
        assert_eq!(cached, generate_uncached(&model, &prompt, &config, &device), "{name}");
    }
}

/// Which custom ops a training run goes through.
#[derive(Debug, Clone, Copy)]
enum Ops {
    Plain,
    FlashAttention,
    /// The head fused with the loss, and RMSNorm, SwiGLU and RoPE as single nodes.
    Fused,
    /// A frozen NF4 base with LoRA adapters on every decoder linear layer.
    Nf4Lora,
}

fn batch(step: usize) -> Batch {
    let (rows, seq) = (2, 20);
    let input_ids: Vec<u32> = (0..rows * seq).map(|i| ((i * 7 + step * 13) % 90) as u32).collect();
    let labels = input_ids.iter().enumerate().map(|(i, &t)| if i % 7 == 3 { -100 } else { t as i64 }).collect();
    Batch { rows, seq, input_ids, labels, position_ids: None }
}

/// The losses of three AdamW steps from the same initial model (drawn from a seeded host generator, so equal on
/// every backend).
fn train<A: AutodiffKernels>(ops: Ops, device: &A::Device) -> Vec<f32> {
    let config = ModelConfig::tiny_llama(90, 32, 2, 4, 2);
    let mut model = LlamaModel::<A>::init_with(&config, device, matches!(ops, Ops::Nf4Lora).then_some(true), 9);
    match ops {
        Ops::Plain => {}
        Ops::FlashAttention => model.compute.attention = AttentionKernel::Flash { block: 8 },
        Ops::Fused => {
            model.compute.loss_chunk = Some(16);
            model.compute.fused_kernels = true;
        }
        Ops::Nf4Lora => {
            for (i, (_, linear)) in model.decoder_linears_mut().into_iter().enumerate() {
                let [out, inp] = linear.dims();
                let values = |shape: [usize; 2], seed: u64| {
                    let mut state = seed;
                    let data: Vec<f32> = (0..shape[0] * shape[1])
                        .map(|_| {
                            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
                        })
                        .collect();
                    Tensor::<A, 2>::from_data(TensorData::new(data, shape), device)
                };
                linear.adapter = Some(LoraAdapter {
                    lora_a: burn::module::Param::from_tensor(values([4, inp], 2 * i as u64 + 1)),
                    lora_b: burn::module::Param::from_tensor(values([out, 4], 2 * i as u64 + 2)),
                    magnitude: None,
                    scaling: 2.0,
                    dropout: 0.0,
                    dropout_stream: 0,
                });
            }
        }
    }
    let mut optimizer = AdamW::new(AdamWConfig::default());
    (0..3)
        .map(|step| {
            let (sum, count) = batch_loss(&model, &batch(step), device);
            let loss = sum / count;
            let value = to_vec(loss.clone())[0];
            let grads = loss.backward();
            let mut buffer = GradientBuffer::default();
            buffer.accumulate(&model, &grads);
            model = optimizer.step(model.clone(), &mut buffer, 1e-2);
            value
        })
        .collect()
}

#[test]
fn training_through_every_custom_op_follows_the_cpu() {
    for ops in [Ops::Plain, Ops::FlashAttention, Ops::Fused, Ops::Nf4Lora] {
        let cpu = train::<Autodiff<CpuBackend>>(ops, &Default::default());
        let gpu = train::<Autodiff<Gpu>>(ops, &Default::default());
        let diff = max_abs_diff(&cpu, &gpu);
        println!("wgpu training {ops:?}: losses {gpu:?}, max |Δloss| vs CPU {diff:.2e}");
        assert!(diff < 1e-4, "{ops:?}: {cpu:?} vs {gpu:?}");
        assert!(gpu[2] < gpu[0], "{ops:?}: it learns");
    }
}
