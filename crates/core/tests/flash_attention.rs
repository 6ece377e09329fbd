//! Flash attention (the CPU kernel, and the tiled default it overrides) against a plain attention (matmul,
//! mask_fill with -inf, softmax, matmul): outputs and the gradients of q, k and v. Run with `--nocapture` to see
//! the max abs differences.

use crate::common;
use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
use burn::tensor::activation::softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Bool, DType, FloatDType, Tensor, TensorData};
use common::{max_diff, values};
use llmtrain_core::device::CpuBackend;
use llmtrain_core::kernels::AutodiffKernels;
use llmtrain_core::kernels::flash_attention::flash_attention;
use llmtrain_core::model::PositionIds;

type A = Autodiff<CpuBackend>;

fn tensor<Bk: Backend>(shape: [usize; 4], seed: u64, device: &Bk::Device) -> Tensor<Bk, 4> {
    Tensor::from_data(TensorData::new(values(shape.iter().product(), seed), shape), device)
}

/// Plain attention with the end-aligned causal mask (and the extra mask), in f32.
fn reference<Bk: Backend>(
    q: Tensor<Bk, 4>,
    k: Tensor<Bk, 4>,
    v: Tensor<Bk, 4>,
    mask: Option<&Tensor<Bk, 4, Bool>>,
    scale: f64,
) -> Tensor<Bk, 4> {
    let [batch, heads, q_len, _] = q.dims();
    let k_len = k.dims()[2];
    let offset = k_len - q_len;
    let causal: Vec<bool> = (0..q_len).flat_map(|i| (0..k_len).map(move |j| j > i + offset)).collect();
    let shape = [batch, heads, q_len, k_len];
    let mut blocked =
        Tensor::<Bk, 4, Bool>::from_data(TensorData::new(causal, [1, 1, q_len, k_len]), &q.device()).expand(shape);
    if let Some(m) = mask {
        blocked = blocked.bool_or(m.clone().expand(shape));
    }
    let scores = q.cast(FloatDType::F32).matmul(k.cast(FloatDType::F32).swap_dims(2, 3)).mul_scalar(scale);
    softmax(scores.mask_fill(blocked, f32::NEG_INFINITY), 3).matmul(v.cast(FloatDType::F32))
}

struct Case {
    name: &'static str,
    batch: usize,
    heads: usize,
    /// Key/value heads (fewer than `heads`: grouped-query attention, against the reference on repeated heads).
    kv_heads: usize,
    q_len: usize,
    k_len: usize,
    head_dim: usize,
    block: usize,
}

/// Runs flash and reference attention under autodiff on `dtype` leaves; the loss is a random-weighted sum of the
/// output. Returns the max abs differences of (output, dq, dk, dv).
fn compare_autodiff<Bk: AutodiffKernels>(
    case: &Case,
    mask: Option<&Tensor<Bk, 4, Bool>>,
    dtype: FloatDType,
) -> [f32; 4] {
    let device = Default::default();
    let Case { batch, heads, kv_heads, q_len, k_len, head_dim, block, .. } = *case;
    let scale = 1.0 / (head_dim as f64).sqrt();
    let leaf = |shape, seed| tensor::<Bk>(shape, seed, &device).cast(dtype).detach().require_grad();
    let (qf, kf, vf) = (
        leaf([batch, heads, q_len, head_dim], 1),
        leaf([batch, kv_heads, k_len, head_dim], 2),
        leaf([batch, kv_heads, k_len, head_dim], 3),
    );
    let (qr, kr, vr) =
        (qf.clone().detach().require_grad(), kf.clone().detach().require_grad(), vf.clone().detach().require_grad());
    let weights = tensor::<Bk>([batch, heads, q_len, head_dim], 4, &device);

    let out_f = flash_attention(qf.clone(), kf.clone(), vf.clone(), mask, scale, case.block);
    // The reference repeats each key/value head for its group (autodiff sums the group's gradients).
    let repeat = |t: &Tensor<Bk, 4>| {
        let expanded = t.clone().unsqueeze_dim::<5>(2).expand([batch, kv_heads, heads / kv_heads, k_len, head_dim]);
        expanded.reshape([batch, heads, k_len, head_dim])
    };
    let out_r = reference(qr.clone(), repeat(&kr), repeat(&vr), mask, scale);
    assert_eq!(out_f.dtype(), DType::from(dtype), "{}: output dtype", case.name);
    let grads_f = (out_f.clone().cast(FloatDType::F32) * weights.clone()).sum().backward();
    let grads_r = (out_r.clone() * weights).sum().backward();

    let grad = |t: &Tensor<Bk, 4>, g: &<Bk as AutodiffBackend>::Gradients| t.grad(g).expect("leaf has a gradient");
    for (leaf, label) in [(&qf, "q"), (&kf, "k"), (&vf, "v")] {
        assert_eq!(grad(leaf, &grads_f).dtype(), DType::from(dtype), "{}: d{label} dtype", case.name);
    }
    let diffs = [
        max_diff(out_f, out_r.cast(dtype)),
        max_diff(grad(&qf, &grads_f), grad(&qr, &grads_r)),
        max_diff(grad(&kf, &grads_f), grad(&kr, &grads_r)),
        max_diff(grad(&vf, &grads_f), grad(&vr, &grads_r)),
    ];
    println!(
        "{} (block {block}): max |Δ| out {:.2e}, dq {:.2e}, dk {:.2e}, dv {:.2e}",
        case.name, diffs[0], diffs[1], diffs[2], diffs[3]
    );
    diffs
}

fn assert_within(diffs: [f32; 4], tol: f32, name: &str) {
    for (diff, label) in diffs.iter().zip(["out", "dq", "dk", "dv"]) {
        assert!(*diff <= tol, "{name}: {label} differs by {diff:e} (tolerance {tol:e})");
    }
}

#[test]
fn causal_with_ragged_tiles_matches_reference() {
    let case = Case {
        name: "causal 300x300, GQA 4/2",
        batch: 2,
        heads: 4,
        kv_heads: 2,
        q_len: 300,
        k_len: 300,
        head_dim: 16,
        block: 64,
    };
    assert_within(compare_autodiff::<A>(&case, None, FloatDType::F32), 1e-5, case.name);
}

#[test]
fn block_larger_than_sequence_matches_reference() {
    let case =
        Case { name: "one tile 50x50", batch: 1, heads: 3, kv_heads: 3, q_len: 50, k_len: 50, head_dim: 8, block: 128 };
    assert_within(compare_autodiff::<A>(&case, None, FloatDType::F32), 1e-5, case.name);
}

/// Two rows of packed sequences (3 and 2 per row), tiles that straddle sequence boundaries.
fn packed_mask<Bk: Backend>(device: &Bk::Device) -> Tensor<Bk, 4, Bool> {
    let row0 = (0..40u32).chain(0..30).chain(0..26);
    let row1 = (0..50u32).chain(0..46);
    let ids: Vec<u32> = row0.chain(row1).collect();
    PositionIds::new(2, 96, ids).attention_mask::<Bk>(None, device).expect("packed batches always have a mask")
}

#[test]
fn packed_mask_matches_reference() {
    let case = Case {
        name: "packed 2x96, MQA",
        batch: 2,
        heads: 2,
        kv_heads: 1,
        q_len: 96,
        k_len: 96,
        head_dim: 16,
        block: 32,
    };
    let mask = packed_mask::<A>(&Default::default());
    assert_within(compare_autodiff::<A>(&case, Some(&mask), FloatDType::F32), 1e-5, case.name);
}

#[test]
fn a_checkpointing_autodiff_backend_gets_the_same_node() {
    // The kernels are a backend extension: any checkpointing strategy gets the custom backward.
    let case = Case {
        name: "balanced checkpointing 70x70",
        batch: 1,
        heads: 2,
        kv_heads: 2,
        q_len: 70,
        k_len: 70,
        head_dim: 8,
        block: 32,
    };
    let mask = packed_mask::<Autodiff<CpuBackend, BalancedCheckpointing>>(&Default::default());
    let mask = mask.slice([0..1, 0..1, 0..70, 0..70]);
    let diffs = compare_autodiff::<Autodiff<CpuBackend, BalancedCheckpointing>>(&case, Some(&mask), FloatDType::F32);
    assert_within(diffs, 1e-5, case.name);
}

#[test]
fn bf16_keeps_dtypes_and_stays_close() {
    let case = Case {
        name: "bf16 causal 150x150, MQA",
        batch: 1,
        heads: 2,
        kv_heads: 1,
        q_len: 150,
        k_len: 150,
        head_dim: 16,
        block: 64,
    };
    assert_within(compare_autodiff::<A>(&case, None, FloatDType::BF16), 2e-2, case.name);
}

/// Forward only on the plain (non-autodiff) backend.
fn compare_forward(name: &str, q_len: usize, k_len: usize, block: usize, with_mask: bool) -> f32 {
    let device = Default::default();
    let (batch, heads, d) = (2, 2, 16);
    let q = tensor::<CpuBackend>([batch, heads, q_len, d], 5, &device);
    let k = tensor::<CpuBackend>([batch, heads, k_len, d], 6, &device);
    let v = tensor::<CpuBackend>([batch, heads, k_len, d], 7, &device);
    let mask = with_mask.then(|| packed_mask::<CpuBackend>(&device));
    let scale = 0.25;
    let out = flash_attention(q.clone(), k.clone(), v.clone(), mask.as_ref(), scale, block);
    let diff = max_diff(out, reference(q, k, v, mask.as_ref(), scale));
    println!("{name} (block {block}): max |Δ| out {diff:.2e}");
    diff
}

#[test]
fn single_query_over_cached_keys_matches_reference() {
    assert!(compare_forward("cached 1 query x 40 keys", 1, 40, 16, false) <= 1e-5);
    assert!(compare_forward("cached 7 queries x 40 keys", 7, 40, 16, false) <= 1e-5);
}

#[test]
fn plain_backend_forward_matches_reference() {
    assert!(compare_forward("flex causal 130x130", 130, 130, 32, false) <= 1e-5);
    assert!(compare_forward("flex packed 2x96", 96, 96, 40, true) <= 1e-5);
}

/// The whole model with `AttentionKernel::Flash` against the same model with eager attention: the loss and every
/// parameter's gradient, on packed rows (GQA, 2 layers, block 16 over 48 tokens).
#[test]
fn model_with_flash_attention_matches_eager_attention() {
    use llmtrain_core::data::Batch;
    use llmtrain_core::model::{AttentionKernel, LlamaModel, ModelConfig};
    use llmtrain_core::train::{GradientBuffer, batch_loss};

    let device = Default::default();
    let eager = LlamaModel::<A>::init(&ModelConfig::tiny_llama(80, 32, 2, 4, 2), &device, 5);
    let mut flash = eager.clone();
    flash.compute.attention = AttentionKernel::Flash { block: 16 };
    let (rows, seq) = (2, 48);
    let input_ids: Vec<u32> = (0..rows * seq).map(|i| (i as u32 * 11 + 5) % 80).collect();
    let labels = input_ids.iter().map(|&t| t as i64).collect();
    // Row 0 holds one sequence, row 1 three packed ones.
    let position_ids = (0..rows).flat_map(|r| (0..seq).map(move |t| if r == 0 { t } else { t % 20 } as u32)).collect();
    let batch = Batch { rows, seq, input_ids, labels, position_ids: Some(position_ids) };

    let mut grads = Vec::new();
    let mut losses = Vec::new();
    for model in [&eager, &flash] {
        let (sum, _) = batch_loss(model, &batch, &device);
        losses.push(sum.clone().into_scalar());
        let mut buffer = GradientBuffer::default();
        buffer.accumulate(model, &sum.backward());
        grads.push(buffer);
    }
    let diff = grads[0].max_abs_diff(&grads[1]);
    println!("model: loss {} vs {}, max |Δgrad| {diff:.2e}", losses[0], losses[1]);
    assert!((losses[0] - losses[1]).abs() <= 1e-5 * losses[0].abs(), "{losses:?}");
    assert!(diff <= 1e-5, "gradients differ by {diff}");
}

/// The CPU backend's kernel against the tiled default it overrides, on the plain backend: output, log-sum-exp and
/// the three gradients, with q read through a head-split view (strided, as the model passes it), one key/value head
/// for three query heads, and a packed mask.
#[test]
fn cpu_kernel_matches_the_tiled_default() {
    use llmtrain_core::kernels::Kernels;
    use llmtrain_core::kernels::flash_attention::{tiled_backward, tiled_forward};
    let device = Default::default();
    let (batch, heads, len, d, block, scale) = (2, 3, 96, 16, 40, 0.25);
    // [batch, seq, heads, d] seen as [batch, heads, seq, d], as the attention layer's projections are.
    let q = tensor::<CpuBackend>([batch, len, heads, d], 11, &device).swap_dims(1, 2);
    // One key/value head for the three query heads (multi-query attention).
    let k = tensor::<CpuBackend>([batch, 1, len, d], 12, &device);
    let v = tensor::<CpuBackend>([batch, 1, len, d], 13, &device);
    let grad_out = tensor::<CpuBackend>([batch, len, heads, d], 14, &device).swap_dims(1, 2);
    for mask in [None, Some(packed_mask::<CpuBackend>(&device))] {
        let mask = mask.as_ref();
        let (out, lse) = CpuBackend::flash_attention_forward(&q, &k, &v, mask, scale, block);
        let (tiled_out, tiled_lse) = tiled_forward(&q, &k, &v, mask, scale, block);
        let grads = CpuBackend::flash_attention_backward(&q, &k, &v, &out, &lse, grad_out.clone(), mask, scale, block);
        let tiled = tiled_backward(&q, &k, &v, &out, &lse, grad_out.clone(), mask, scale, block);
        let diffs = [
            max_diff(out, tiled_out),
            max_diff(lse.unsqueeze_dim::<4>(3), tiled_lse.unsqueeze_dim(3)),
            max_diff(grads.0, tiled.0),
            max_diff(grads.1, tiled.1),
            max_diff(grads.2, tiled.2),
        ];
        println!("kernel vs tiled (mask: {}): out, lse, dq, dk, dv {diffs:?}", mask.is_some());
        assert!(diffs.iter().all(|&d| d <= 2e-6), "kernel vs tiled: {diffs:?}");
    }
}
