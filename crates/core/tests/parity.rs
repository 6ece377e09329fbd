//! Parity with transformers on committed fixtures (made by scripts/make_fixtures.py), and checkpoint round trips.

use std::path::Path;

use burn::tensor::Tensor;
use llmtrain_core::device::CpuBackend as B;
use llmtrain_core::generate::{SamplingConfig, generate, generate_batch, generate_uncached};
use llmtrain_core::hf::{self, SaveOptions, StorageDtype, TensorFiles};
use llmtrain_core::model::{LlamaModel, PositionIds, tokens_tensor};

use crate::common;
use common::{expected_floats, expected_ints, fixture, max_abs_diff};

const FIXTURES: [&str; 3] = ["llama_gqa_tied", "qwen2_bias", "mistral_mqa"];
const TOLERANCE: f32 = 1e-4;

/// (tokens, logits, packed position ids, packed logits) as transformers computed them.
fn expected(dir: &Path) -> (Vec<u32>, Vec<f32>, Vec<u32>, Vec<f32>) {
    let (ints, floats) = (|n| expected_ints(dir, n), |n| expected_floats(dir, n));
    (ints("tokens"), floats("logits"), ints("packed_positions"), floats("packed_logits"))
}

fn to_vec(t: Tensor<B, 3>) -> Vec<f32> {
    common::to_vec(t)
}

#[test]
fn logits_match_transformers() {
    let device = Default::default();
    for name in FIXTURES {
        let dir = fixture(name);
        let (model, _) = hf::load_model::<B>(&dir, &device).unwrap();
        let (tokens, want, _, _) = expected(&dir);
        let got = to_vec(model.forward(tokens_tensor::<B>(&tokens, 1, &device), None));
        let diff = max_abs_diff(&got, &want);
        println!("{name}: max |Δlogits| = {diff:.3e}");
        assert!(diff <= TOLERANCE, "{name}: max abs diff {diff} > {TOLERANCE}");
    }
}

#[test]
fn packed_rows_match_separate_sequences() {
    let device = Default::default();
    for name in FIXTURES {
        let dir = fixture(name);
        let (model, _) = hf::load_model::<B>(&dir, &device).unwrap();
        let (tokens, _, positions, want) = expected(&dir);
        let positions = PositionIds::new(1, tokens.len(), positions);
        let got = to_vec(model.forward(tokens_tensor::<B>(&tokens, 1, &device), Some(&positions)));
        let diff = max_abs_diff(&got, &want);
        assert!(diff <= TOLERANCE, "{name}: packed max abs diff {diff}");
    }
}

#[test]
fn batch_rows_are_independent() {
    let device = Default::default();
    let (model, _) = hf::load_model::<B>(&fixture("qwen2_bias"), &device).unwrap();
    let (tokens, want, _, _) = expected(&fixture("qwen2_bias"));
    let mut two = tokens.clone();
    two.extend(tokens.iter().rev());
    let got = to_vec(model.forward(tokens_tensor::<B>(&two, 2, &device), None));
    assert!(max_abs_diff(&got[..want.len()], &want) <= TOLERANCE);
}

fn all_tensors(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let files = TensorFiles::open(dir).unwrap();
    let names: Vec<String> = files.names().map(String::from).collect();
    names
        .into_iter()
        .map(|n| {
            let shape = files.shape(&n).unwrap();
            let values = files.read(&n, &shape).unwrap().values;
            (n, values)
        })
        .collect()
}

#[test]
fn load_save_load_is_bit_identical_single_sharded_and_bf16() {
    let device = Default::default();
    for name in FIXTURES {
        let dir = fixture(name);
        let (model, config) = hf::load_model::<B>(&dir, &device).unwrap();
        let original = all_tensors(&dir);

        let out = tempfile::tempdir().unwrap();
        hf::save_model(&model, &config, out.path(), &SaveOptions::default()).unwrap();
        assert_eq!(all_tensors(out.path()), original, "{name}: single file");
        let header = std::fs::read(out.path().join("model.safetensors")).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&header).unwrap();
        assert_eq!(meta.metadata().as_ref().unwrap()["format"], "pt");

        let sharded = tempfile::tempdir().unwrap();
        hf::save_model(&model, &config, sharded.path(), &SaveOptions { dtype: None, max_shard_bytes: 100_000 })
            .unwrap();
        assert!(sharded.path().join(hf::INDEX_FILE).exists() && !sharded.path().join(hf::SINGLE_FILE).exists());
        assert_eq!(all_tensors(sharded.path()), original, "{name}: sharded");
        let (reloaded, _) = hf::load_model::<B>(sharded.path(), &device).unwrap();
        let tokens = tokens_tensor::<B>(&[1, 2, 3], 1, &device);
        assert_eq!(to_vec(reloaded.forward(tokens.clone(), None)), to_vec(model.forward(tokens, None)));

        // bf16 → f32 → bf16 is exact, so a bf16 checkpoint round-trips bit for bit too.
        let bf16 = tempfile::tempdir().unwrap();
        hf::save_model(
            &model,
            &config,
            bf16.path(),
            &SaveOptions { dtype: Some(StorageDtype::BF16), ..Default::default() },
        )
        .unwrap();
        let (m16, c16) = hf::load_model::<B>(bf16.path(), &device).unwrap();
        assert_eq!(c16.dtype.as_deref(), Some("bfloat16"));
        let again = tempfile::tempdir().unwrap();
        hf::save_model(&m16, &c16, again.path(), &SaveOptions::default()).unwrap();
        assert_eq!(
            std::fs::read(again.path().join("model.safetensors")).unwrap(),
            std::fs::read(bf16.path().join("model.safetensors")).unwrap()
        );
    }
}

#[test]
fn cached_greedy_decoding_equals_recomputing() {
    let device = Default::default();
    for name in FIXTURES {
        let (model, _) = hf::load_model::<B>(&fixture(name), &device).unwrap();
        let config = SamplingConfig { max_new_tokens: 12, ..Default::default() };
        let prompt = [1, 17, 42, 99];
        let cached = generate(&model, &prompt, &config, &device);
        assert_eq!(cached, generate_uncached(&model, &prompt, &config, &device), "{name}");
        assert_eq!(cached.len(), 12);
        let sampled = SamplingConfig { temperature: 0.8, top_k: 20, top_p: 0.9, seed: 3, ..config };
        assert_eq!(generate(&model, &prompt, &sampled, &device), generate_uncached(&model, &prompt, &sampled, &device));
    }
}

#[test]
fn left_padded_batches_generate_what_each_prompt_generates_alone() {
    let device = Default::default();
    // The Mistral fixture's sliding window binds within these lengths: the padded mask must keep it.
    for name in FIXTURES {
        let (model, _) = hf::load_model::<B>(&fixture(name), &device).unwrap();
        let prompts: [&[u32]; 3] = [&[1, 17, 42, 99, 5, 8], &[1, 7], &[3, 64, 12]];
        for config in [
            SamplingConfig { max_new_tokens: 10, ..Default::default() },
            SamplingConfig { max_new_tokens: 10, temperature: 0.9, top_k: 30, top_p: 0.95, ..Default::default() },
        ] {
            let seeds = [11, 12, 13];
            let batched = generate_batch(&model, &prompts, &config, &seeds, 0, &device);
            for (i, prompt) in prompts.iter().enumerate() {
                let alone = generate(&model, prompt, &SamplingConfig { seed: seeds[i], ..config.clone() }, &device);
                assert_eq!(batched[i], alone, "{name}, row {i}, {config:?}");
            }
            // A row that stops early keeps its stop token and nothing after it; the others go on.
            let stop = batched[1][2];
            let stopping = SamplingConfig { stop_tokens: vec![stop], ..config.clone() };
            let rows = generate_batch(&model, &prompts, &stopping, &seeds, 0, &device);
            let upto = batched[1].iter().position(|&t| t == stop).unwrap();
            assert_eq!(rows[1], batched[1][..=upto].to_vec(), "{name}");
        }
    }
}

#[test]
fn greedy_generation_matches_transformers_generate() {
    let device = Default::default();
    let dir = fixture("llama_gqa_tied");
    let (model, _) = hf::load_model::<B>(&dir, &device).unwrap();
    let ints = |n: &str| expected_ints(&dir, n);
    let prompt = ints("generate_prompt");
    let tok = llmtrain_core::tokenizer::TextTokenizer::load(&dir).unwrap();
    assert_eq!(tok.encode("To be, or not to be").unwrap(), prompt, "tokenizer.json encodes as transformers did");
    let want = ints("generate_output");
    let config = SamplingConfig { max_new_tokens: want.len(), ..Default::default() };
    assert_eq!(generate(&model, &prompt, &config, &device), want);
}

#[test]
fn sliding_window_binds_in_the_mistral_fixture() {
    // The fixture's window (4) is shorter than its 12 tokens, so matching transformers above proves the window is
    // applied; here we check that it matters (dropping it changes the logits) and that cached decoding honours it.
    let device = Default::default();
    let (model, config) = hf::load_model::<B>(&fixture("mistral_mqa"), &device).unwrap();
    assert_eq!(config.model.sliding_window, Some(4));
    let (tokens, want, _, _) = expected(&fixture("mistral_mqa"));
    let mut unwindowed = config.model.clone();
    unwindowed.sliding_window = None;
    let plain = LlamaModel { config: unwindowed, ..model.clone() };
    let got = to_vec(plain.forward(tokens_tensor::<B>(&tokens, 1, &device), None));
    assert!(max_abs_diff(&got, &want) > 1e-3, "the window should change the logits");
    let cfg = SamplingConfig { max_new_tokens: 8, ..Default::default() };
    assert_eq!(generate(&model, &tokens, &cfg, &device), generate_uncached(&model, &tokens, &cfg, &device));
}

#[test]
fn causal_lm_loss_matches_transformers() {
    let device = Default::default();
    for name in FIXTURES {
        let dir = fixture(name);
        let (model, _) = hf::load_model::<B>(&dir, &device).unwrap();
        let (tokens, _, _, _) = expected(&dir);
        let bytes = std::fs::read(dir.join("expected.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let want = f32::from_le_bytes(st.tensor("loss").unwrap().data()[..4].try_into().unwrap());
        let input = tokens_tensor::<B>(&tokens, 1, &device);
        let got: f32 = llmtrain_core::train::causal_lm_loss(model.forward(input.clone(), None), input).into_scalar();
        assert!((got - want).abs() < 1e-5, "{name}: loss {got} vs transformers {want}");
    }
}
