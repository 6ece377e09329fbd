//! PEFT adapters (written by PEFT itself, `scripts/make_peft_fixture.py`) give PEFT's logits in llmtrain, merge to
//! PEFT's merged logits, and survive a save/load round trip through llmtrain's writer unchanged.

use crate::common;

use common::{fixture_tokens, fixtures, logits_of, max_diff};

use burn::tensor::{Int, Tensor, TensorData};
use llmtrain_core::device::CpuBackend as B;
use llmtrain_core::hf::{self, TensorFiles};
use llmtrain_core::model::LlamaModel;
use llmtrain_fastlora::peft::ADAPTER_WEIGHTS_FILE;
use llmtrain_fastlora::{LoraConfig, TargetModules, attach, load_adapter, merge, save_adapter};

fn base() -> LlamaModel<B> {
    hf::load_model::<B>(&fixtures().join("base"), &Default::default()).unwrap().0
}

/// `name` of `adapter`'s expected.safetensors as host values.
fn expected(adapter: &str, name: &str) -> (Vec<usize>, Vec<f32>) {
    let files = TensorFiles::open_files(vec![fixtures().join(adapter).join("expected.safetensors")]).unwrap();
    let shape = files.shape(name).unwrap();
    let t = files.read(name, &shape).unwrap();
    (t.shape, t.values)
}

fn logits(model: &LlamaModel<B>, adapter: &str) -> Vec<f32> {
    logits_of(model, fixture_tokens(&fixtures().join(adapter).join("expected.safetensors")))
}

/// Loads `adapter` onto the base, compares logits with PEFT's, then merges and compares with PEFT's merged model.
fn check(adapter: &str) {
    let device = Default::default();
    let mut model = base();
    let base_logits = logits(&model, adapter);
    let config = load_adapter(&mut model, &fixtures().join(adapter), &device).unwrap();
    let (_, want) = expected(adapter, "logits");
    let got = logits(&model, adapter);
    let diff = max_diff(&got, &want);
    let effect = max_diff(&base_logits, &want);
    let mut merged = model.clone();
    assert!(merge(&mut merged).unwrap() > 0);
    let (_, want_merged) = expected(adapter, "merged_logits");
    let merged_diff = max_diff(&logits(&merged, adapter), &want_merged);
    println!(
        "{adapter}: |llmtrain - PEFT| {diff:.2e}, merged {merged_diff:.2e} (the adapter moves logits by {effect:.2e}); \
         dora={} rslora={}",
        config.use_dora, config.use_rslora
    );
    assert!(effect > 1e-2, "the adapter must change the output for the comparison to mean anything");
    assert!(diff <= 1e-4, "{adapter}: logits differ from PEFT's by {diff}");
    assert!(merged_diff <= 1e-4, "{adapter}: merged logits differ from PEFT's by {merged_diff}");
}

#[test]
fn lora_adapter_written_by_peft_gives_peft_logits() {
    check("lora");
}

#[test]
fn dora_rslora_all_linear_adapter_gives_peft_logits() {
    check("dora_rslora");
}

#[test]
fn regex_targets_with_rank_and_alpha_patterns_give_peft_logits() {
    check("regex_pattern");
}

#[test]
fn saving_a_loaded_adapter_rewrites_peft_tensors_exactly() {
    let device = Default::default();
    for adapter in ["lora", "dora_rslora", "regex_pattern"] {
        let mut model = base();
        let config = load_adapter(&mut model, &fixtures().join(adapter), &device).unwrap();
        let out = tempfile::tempdir().unwrap();
        let dir = out.path().join("adapter");
        save_adapter(&model, &config, &dir).unwrap();
        let ours = TensorFiles::open_files(vec![dir.join(ADAPTER_WEIGHTS_FILE)]).unwrap();
        let theirs = TensorFiles::open_files(vec![fixtures().join(adapter).join(ADAPTER_WEIGHTS_FILE)]).unwrap();
        let names: Vec<&str> = ours.names().collect();
        assert_eq!(names, theirs.names().collect::<Vec<_>>(), "{adapter}: tensor names");
        for name in names {
            let shape = theirs.shape(name).unwrap();
            assert_eq!(ours.read(name, &shape).unwrap(), theirs.read(name, &shape).unwrap(), "{adapter}: {name}");
        }
        // The written config reads back as the same adapter.
        assert_eq!(LoraConfig::load(&dir).unwrap().rank_pattern, config.rank_pattern);
        let mut again = base();
        load_adapter(&mut again, &dir, &device).unwrap();
        assert_eq!(logits(&again, adapter), logits(&model, adapter), "{adapter}: reloaded logits");
    }
}

#[test]
fn attach_freezes_the_base_and_starts_as_a_no_op() {
    use burn::backend::Autodiff;
    type A = Autodiff<B>;
    let device = Default::default();
    let mut model = hf::load_model::<A>(&fixtures().join("base"), &device).unwrap().0;
    let tokens = Tensor::<A, 2, Int>::from_data([[3, 17, 42, 99]], &device);
    let before = model.forward(tokens.clone(), None).into_data();
    let config = LoraConfig::new(4, 8.0, TargetModules::Pattern("all-linear".into()));
    let names = attach(&mut model, &config, &device).unwrap();
    assert_eq!(names.len(), 14);
    assert_eq!(model.forward(tokens.clone(), None).into_data(), before, "B = 0: the adapter adds nothing yet");
    let grads = model.forward(tokens, None).sum().backward();
    let q = &model.layers[0].self_attn.q_proj;
    assert!(q.weight_value().grad(&grads).is_none(), "the frozen base gets no gradient");
    assert!(model.embed_tokens.val().grad(&grads).is_none());
    let adapter = q.adapter.as_ref().unwrap();
    assert!(adapter.lora_b.val().grad(&grads).is_some(), "the adapter trains");
    let (trainable, total) = llmtrain_fastlora::trainable_params(&model);
    // Per layer: 4 × (32 + out) for each of 7 linears.
    let per_layer = 4 * ((32 + 32) + (32 + 16) + (32 + 16) + (32 + 32) + (32 + 64) * 2 + (64 + 32));
    assert_eq!(trainable, 2 * per_layer);
    assert!(trainable < total / 5);
}

#[test]
fn an_adapter_for_another_shape_is_refused_naming_the_tensor() {
    // The regex adapter's k_proj rank is 4; pretend it is 2 via rank_pattern to mismatch shapes.
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures().join("lora");
    std::fs::copy(src.join(ADAPTER_WEIGHTS_FILE), dir.path().join(ADAPTER_WEIGHTS_FILE)).unwrap();
    let text = std::fs::read_to_string(src.join("adapter_config.json")).unwrap().replace("\"r\": 4", "\"r\": 2");
    std::fs::write(dir.path().join("adapter_config.json"), text).unwrap();
    let err = load_adapter(&mut base(), dir.path(), &Default::default()).unwrap_err().to_string();
    assert!(err.contains("lora_A.weight") && err.contains("shape"), "{err}");
    assert_eq!(err.lines().count(), 1);
}

/// The adapter's gradients (burn's autodiff through the two thin matmuls) agree with central finite differences
/// of the loss, for elements of A and of B, at a point where B ≠ 0, for three random adapters.
#[test]
fn adapter_gradients_match_finite_differences() {
    for seed in [1, 2, 3] {
        check_finite_differences(seed);
    }
}

fn check_finite_differences(seed: u64) {
    use burn::backend::Autodiff;
    use burn::tensor::backend::Backend;
    use llmtrain_core::model::LoraAdapter;
    type A = Autodiff<B>;
    let device = Default::default();
    let mut model = hf::load_model::<A>(&fixtures().join("base"), &device).unwrap().0;
    let mut config = LoraConfig::new(4, 8.0, TargetModules::List(vec!["q_proj".into(), "down_proj".into()]));
    config.init_lora_weights = llmtrain_fastlora::InitLoraWeights::Default(false);
    {
        // Burn's RNG is process-wide: seed and draw under one lock, so each seed gives its adapter.
        static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _serial = INIT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        A::seed(&device, seed);
        attach(&mut model, &config, &device).unwrap();
    }
    let tokens = || Tensor::<A, 2, Int>::from_data([[3, 17, 42, 99, 5, 120]], &device);
    let loss = |m: &LlamaModel<A>| m.forward(tokens(), None).powi_scalar(2).sum();
    let grads = loss(&model).backward();
    // The finite differences sum the squared logits on the host in f64: an f32 sum of ~10³ would round away the
    // 10⁻⁵-relative changes they measure.
    let host_loss = |m: &LlamaModel<A>| -> f64 {
        let logits: Vec<f32> = m.forward(tokens(), None).into_data().convert::<f32>().into_vec().unwrap();
        logits.iter().map(|&l| (l as f64) * (l as f64)).sum()
    };
    // (layer, which matrix, element)
    type Pick = fn(&mut LlamaModel<A>) -> &mut LoraAdapter<A>;
    let q: Pick = |m| m.layers[0].self_attn.q_proj.adapter.as_mut().unwrap();
    let down: Pick = |m| m.layers[1].mlp.down_proj.adapter.as_mut().unwrap();
    let (mut worst, mut largest) = (0.0f64, 0.0f64);
    for (pick, use_b, index) in [(q, true, 0), (q, false, 5), (down, true, 7), (down, false, 3)] {
        let param = |m: &mut LlamaModel<A>| {
            let ad = pick(m);
            if use_b { ad.lora_b.clone() } else { ad.lora_a.clone() }
        };
        let analytic: Vec<f32> =
            param(&mut model).val().grad(&grads).unwrap().into_data().convert::<f32>().into_vec().unwrap();
        let shifted = |delta: f32| {
            let mut m = model.clone();
            let p = param(&mut m);
            let dims = p.val().dims();
            let mut values: Vec<f32> = p.val().into_data().convert::<f32>().into_vec().unwrap();
            values[index] += delta;
            let t = burn::module::Param::from_tensor(Tensor::from_data(TensorData::new(values, dims), &device));
            let ad = pick(&mut m);
            if use_b {
                ad.lora_b = t
            } else {
                ad.lora_a = t
            }
            host_loss(&m)
        };
        let eps = 1e-2;
        let numeric = (shifted(eps) - shifted(-eps)) / (2.0 * eps as f64);
        largest = largest.max(numeric.abs());
        println!(
            "seed {seed} {} [{index}]: autodiff {:.6} finite difference {numeric:.6}",
            if use_b { "B" } else { "A" },
            analytic[index]
        );
        worst = worst.max((analytic[index] as f64 - numeric).abs());
    }
    // The logits themselves are f32: compare with the largest gradient checked.
    assert!(worst < 2e-3 * largest, "seed {seed}: max |autodiff - finite difference| {worst} (largest {largest})");
}
