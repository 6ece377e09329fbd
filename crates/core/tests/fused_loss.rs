//! The fused lm_head + cross-entropy (the CPU kernel, and the chunked default it overrides) against the plain path
//! (full logits, log_softmax, gather, sum over scored rows): the loss and the gradients of hidden and head, and at
//! model level against `causal_lm_loss_parts(model.logits(hidden), labels)`. Run with `--nocapture` to see the
//! max differences.

use crate::common;
use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, FloatDType, Int, Tensor, TensorData};
use common::{max_diff, to_vec, values};
use llmtrain_core::device::CpuBackend;
use llmtrain_core::kernels::AutodiffKernels;
use llmtrain_core::kernels::cross_entropy::fused_linear_cross_entropy;
use llmtrain_core::model::fused_loss::fused_causal_lm_loss;
use llmtrain_core::model::{LlamaModel, ModelConfig, ParamRef};
use llmtrain_core::train::{IGNORE_INDEX, causal_lm_loss_parts};

type A = Autodiff<CpuBackend>;

const ROWS: usize = 300;
const VOCAB: usize = 500;
const H: usize = 48;

fn tensor<Bk: Backend>(shape: [usize; 2], seed: u64, device: &Bk::Device) -> Tensor<Bk, 2> {
    Tensor::from_data(TensorData::new(values(shape.iter().product(), seed), shape), device)
}

/// Targets in 0..vocab with every seventh row (and a whole run of rows) ignored.
fn targets(rows: usize, vocab: usize) -> Vec<i64> {
    values(rows, 99)
        .iter()
        .enumerate()
        .map(|(i, v)| {
            if i % 7 == 3 || (130..200).contains(&i) {
                IGNORE_INDEX
            } else {
                (((v + 1.0) / 2.0 * vocab as f32) as i64).min(vocab as i64 - 1)
            }
        })
        .collect()
}

/// The plain summed cross-entropy: full f32 logits, log_softmax, gather, masked sum.
fn reference<Bk: Backend>(hidden: Tensor<Bk, 2>, head: Tensor<Bk, 2>, targets: &[i64]) -> Tensor<Bk, 1> {
    let device = hidden.device();
    let rows = targets.len();
    let logits = hidden.cast(FloatDType::F32).matmul(head.cast(FloatDType::F32).transpose());
    let safe: Vec<i64> = targets.iter().map(|&t| if t == IGNORE_INDEX { 0 } else { t }).collect();
    let keep: Vec<f32> = targets.iter().map(|&t| if t == IGNORE_INDEX { 0.0 } else { 1.0 }).collect();
    let safe = Tensor::<Bk, 2, Int>::from_data(TensorData::new(safe, [rows, 1]), &device);
    let keep = Tensor::<Bk, 2>::from_data(TensorData::new(keep, [rows, 1]), &device);
    (log_softmax(logits, 1).gather(1, safe) * keep).sum().neg()
}

fn max_abs<Bk: Backend, const D: usize>(a: Tensor<Bk, D>) -> f32 {
    to_vec(a).iter().fold(0.0, |m, x| m.max(x.abs()))
}

fn scalar<Bk: Backend>(t: Tensor<Bk, 1>) -> f32 {
    to_vec(t)[0]
}

/// What one comparison measured.
struct Diffs {
    loss_rel: f32,
    dhidden: f32,
    dhead: Option<f32>,
}

/// Fused vs plain under autodiff on `Bk`: hidden leaves in `hidden_dtype` (the reference sees the same values in
/// f32), an f32 head, trainable or frozen. Asserts the gradient dtypes and that a frozen head gets no gradient.
fn compare<Bk: AutodiffKernels>(chunk: usize, hidden_dtype: FloatDType, head_trainable: bool) -> Diffs {
    let device = Default::default();
    let targets = targets(ROWS, VOCAB);
    let hidden_values = tensor::<Bk>([ROWS, H], 1, &device).cast(hidden_dtype);
    let head_values = tensor::<Bk>([VOCAB, H], 2, &device);
    let leaf = |t: Tensor<Bk, 2>, trainable: bool| if trainable { t.detach().require_grad() } else { t.detach() };

    let (hidden, head) = (leaf(hidden_values.clone(), true), leaf(head_values.clone(), head_trainable));
    let (loss, count) = fused_linear_cross_entropy(hidden.clone(), head.clone(), &targets, chunk);
    assert_eq!(count, targets.iter().filter(|&&t| t != IGNORE_INDEX).count());
    assert_eq!(loss.dtype(), DType::F32);
    let fused_loss = scalar(loss.clone());
    let grads = loss.backward();
    let dhidden = hidden.grad(&grads).expect("hidden gradient");
    assert_eq!(dhidden.dtype(), DType::from(hidden_dtype), "dhidden in hidden's dtype");
    let dhead = head.grad(&grads);
    assert_eq!(dhead.is_some(), head_trainable, "a frozen head must get no gradient");
    if let Some(d) = &dhead {
        assert_eq!(d.dtype(), DType::F32, "dhead in head's dtype");
    }

    let (rh, rw) = (leaf(hidden_values.cast(FloatDType::F32), true), leaf(head_values, head_trainable));
    let loss = reference(rh.clone(), rw.clone(), &targets);
    let plain_loss = scalar(loss.clone());
    let grads = loss.backward();
    let diffs = Diffs {
        loss_rel: (fused_loss - plain_loss).abs() / plain_loss.abs(),
        dhidden: max_diff(dhidden, rh.grad(&grads).expect("reference hidden gradient")),
        dhead: dhead.map(|d| max_diff(d, rw.grad(&grads).expect("reference head gradient"))),
    };
    println!(
        "chunk {chunk} hidden {hidden_dtype:?} head {}: loss {fused_loss} vs {plain_loss} (rel {:.2e}), \
         dhidden max diff {:.2e}, dhead max diff {:?} (|dhidden| max {:.2}, |dhead| max {:?})",
        if head_trainable { "trainable" } else { "frozen" },
        diffs.loss_rel,
        diffs.dhidden,
        diffs.dhead,
        max_abs(rh.grad(&grads).expect("reference hidden gradient")),
        rw.grad(&grads).map(max_abs),
    );
    diffs
}

fn assert_close(d: &Diffs, loss_rel: f32, grad: f32) {
    assert!(d.loss_rel < loss_rel, "loss relative difference {}", d.loss_rel);
    assert!(d.dhidden < grad, "dhidden max difference {}", d.dhidden);
    if let Some(dw) = d.dhead {
        assert!(dw < grad, "dhead max difference {dw}");
    }
}

#[test]
fn matches_plain_with_trainable_head_over_uneven_chunks() {
    assert_close(&compare::<A>(64, FloatDType::F32, true), 1e-5, 1e-5);
}

#[test]
fn frozen_head_gets_no_gradient() {
    assert_close(&compare::<A>(64, FloatDType::F32, false), 1e-5, 1e-5);
}

#[test]
fn chunk_larger_than_rows() {
    assert_close(&compare::<A>(1024, FloatDType::F32, true), 1e-5, 1e-5);
}

#[test]
fn bf16_hidden_gets_bf16_gradient() {
    // The loss sees the same (bf16-exact) values in f32; only dhidden's rounding to bf16 differs.
    assert_close(&compare::<A>(64, FloatDType::BF16, true), 1e-5, 2e-2);
}

#[test]
fn a_checkpointing_autodiff_backend_gets_the_same_node() {
    assert_close(&compare::<Autodiff<CpuBackend, BalancedCheckpointing>>(64, FloatDType::F32, true), 1e-5, 1e-5);
}

#[test]
fn forward_without_autodiff() {
    let device = Default::default();
    let targets = targets(ROWS, VOCAB);
    let hidden = tensor::<CpuBackend>([ROWS, H], 1, &device);
    let head = tensor::<CpuBackend>([VOCAB, H], 2, &device);
    let (loss, count) = fused_linear_cross_entropy(hidden.clone(), head.clone(), &targets, 64);
    let (fused, plain) = (scalar(loss), scalar(reference(hidden, head, &targets)));
    let rel = (fused - plain).abs() / plain.abs();
    println!("no autodiff: loss {fused} vs {plain} (rel {rel:.2e}), {count} scored rows");
    assert!(rel < 1e-5);
    assert_eq!(count, targets.iter().filter(|&&t| t != IGNORE_INDEX).count());
}

#[test]
fn all_rows_ignored_gives_zero_loss_and_zero_gradient() {
    let device = Default::default();
    let hidden = tensor::<A>([10, H], 1, &device).require_grad();
    let head = tensor::<A>([VOCAB, H], 2, &device).require_grad();
    let (loss, count) = fused_linear_cross_entropy(hidden.clone(), head.clone(), &[IGNORE_INDEX; 10], 4);
    assert_eq!(count, 0);
    assert_eq!(scalar(loss.clone()), 0.0);
    let grads = loss.backward();
    assert_eq!(max_abs(hidden.grad(&grads).expect("hidden gradient")), 0.0);
    assert_eq!(max_abs(head.grad(&grads).expect("head gradient")), 0.0);
}

/// The model-level helper against `causal_lm_loss_parts(model.logits(hidden), labels)`: loss, count and the
/// gradient of every parameter.
fn compare_model(tied: bool) {
    let device = Default::default();
    let (batch, seq, chunk) = (3, 23, 16);
    let mut config = ModelConfig::tiny_llama(300, 32, 2, 4, 2);
    config.tie_word_embeddings = tied;
    let model = LlamaModel::<A>::init(&config, &device, 3);
    let ids: Vec<i64> = values(batch * seq, 5).iter().map(|v| (((v + 1.0) * 150.0) as i64).min(299)).collect();
    let labels: Vec<i64> =
        ids.iter().enumerate().map(|(i, &t)| if i % 5 == 2 || i % seq < 4 { IGNORE_INDEX } else { t }).collect();
    let tokens = || Tensor::<A, 2, Int>::from_data(TensorData::new(ids.clone(), [batch, seq]), &device);

    let (loss, count) = fused_causal_lm_loss(&model, model.hidden_states(tokens(), None), &labels, chunk);
    let fused_loss = scalar(loss.clone());
    let fused_grads = loss.backward();

    let labels_tensor = Tensor::<A, 2, Int>::from_data(TensorData::new(labels.clone(), [batch, seq]), &device);
    let (loss, plain_count) = causal_lm_loss_parts(model.logits(model.hidden_states(tokens(), None)), labels_tensor);
    let plain_loss = scalar(loss.clone());
    let plain_grads = loss.backward();

    assert_eq!(count as f32, scalar(plain_count), "scored positions");
    let rel = (fused_loss - plain_loss).abs() / plain_loss.abs();
    let mut worst = (0.0f32, String::new());
    let params = model.named_params();
    for (name, param) in &params {
        let (fused, plain) = match param {
            ParamRef::Vector(p) => {
                let (a, b) = (p.val().grad(&fused_grads), p.val().grad(&plain_grads));
                (a.map(to_vec), b.map(to_vec))
            }
            ParamRef::Matrix(p) => {
                let (a, b) = (p.val().grad(&fused_grads), p.val().grad(&plain_grads));
                (a.map(to_vec), b.map(to_vec))
            }
        };
        let (fused, plain) = (fused.expect("fused gradient"), plain.expect("plain gradient"));
        let d = fused.iter().zip(&plain).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
        if d >= worst.0 {
            worst = (d, name.clone());
        }
    }
    println!(
        "model ({}): loss {fused_loss} vs {plain_loss} (rel {rel:.2e}), {count} scored, {} params, \
         max grad diff {:.2e} ({})",
        if tied { "tied" } else { "untied" },
        params.len(),
        worst.0,
        worst.1
    );
    assert!(rel < 1e-5, "loss relative difference {rel}");
    assert!(worst.0 < 1e-5, "gradient of {} differs by {}", worst.1, worst.0);
}

#[test]
fn model_helper_matches_causal_lm_loss_parts_untied() {
    compare_model(false);
}

#[test]
fn model_helper_matches_causal_lm_loss_parts_tied() {
    compare_model(true);
}

/// The CPU backend's kernel against the chunked default it overrides, on the plain backend: the loss, the
/// log-sum-exp of scored rows and both gradients, with a transposed (strided) hidden and ignored rows.
#[test]
fn cpu_kernel_matches_the_chunked_default() {
    use llmtrain_core::kernels::Kernels;
    use llmtrain_core::kernels::cross_entropy::{chunked_backward, chunked_forward};
    let device = Default::default();
    let hidden = tensor::<CpuBackend>([H, ROWS], 1, &device).transpose();
    let head = tensor::<CpuBackend>([VOCAB, H], 2, &device);
    let targets = targets(ROWS, VOCAB);
    let grad = Tensor::<CpuBackend, 1>::from_floats([0.7], &device);
    let chunk = 64;
    let (loss, lse) = CpuBackend::linear_cross_entropy_forward(&hidden, &head, &targets, chunk);
    let (chunked_loss, chunked_lse) = chunked_forward(&hidden, &head, &targets, chunk);
    let scored: Vec<i64> = (0..ROWS as i64).filter(|&i| targets[i as usize] != IGNORE_INDEX).collect();
    let scored = Tensor::<CpuBackend, 1, Int>::from_data(TensorData::new(scored.clone(), [scored.len()]), &device);
    let want = (true, true);
    let (dh, dw) = CpuBackend::linear_cross_entropy_backward(&hidden, &head, &lse, &targets, chunk, grad.clone(), want);
    let (chunked_dh, chunked_dw) = chunked_backward(&hidden, &head, &lse, &targets, chunk, grad, want);
    let (loss, chunked_loss) = (scalar(loss), scalar(chunked_loss));
    let diffs = [
        (loss - chunked_loss).abs() / chunked_loss.abs(),
        max_diff(lse.select(0, scored.clone()), chunked_lse.select(0, scored)),
        max_diff(dh.expect("wanted"), chunked_dh.expect("wanted")),
        max_diff(dw.expect("wanted"), chunked_dw.expect("wanted")),
    ];
    println!("kernel vs chunked: loss (relative), lse, dhidden, dhead {diffs:?}");
    assert!(diffs[0] <= 1e-6 && diffs[1..].iter().all(|&d| d <= 1e-5), "kernel vs chunked: {diffs:?}");
}
