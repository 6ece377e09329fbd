//! The single-node RMSNorm and SwiGLU against the plain burn ops (`RmsNorm::forward`, `silu(gate) * up`): outputs
//! and every input gradient under autodiff (f32 and bf16), a frozen norm weight, the forward without autodiff and
//! the same node on an autodiff backend with another checkpointing strategy; and, through a counting global
//! allocator, how much less the fused nodes keep alive until backward. Run with `--nocapture` to see the max differences and sizes.

mod common;
use common::{max_diff, to_vec, values};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, FloatDType, Tensor, TensorData};
use llmtrain_core::device::CpuBackend;
use llmtrain_core::kernels::AutodiffKernels;
use llmtrain_core::kernels::fused_ops::{rms_norm, rope, swiglu};
use llmtrain_core::model::RmsNorm;
use llmtrain_core::model::rope::apply_rotary;
use llmtrain_core::model::{RopeConfig, RopeScaling, Rotary};

type A = Autodiff<CpuBackend>;
/// Autodiff with another checkpointing strategy: the kernels are a backend extension, so it gets the same nodes.
type Balanced = Autodiff<CpuBackend, BalancedCheckpointing>;

const SHAPE: [usize; 3] = [2, 37, 64];
const EPS: f64 = 1e-6;

/// Bytes currently allocated by the whole test binary.
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: forwards every call to the system allocator unchanged; only counts the sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Tests run one at a time, so that a memory measurement sees only its own allocations.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `[2, 37, 64]` values in `scale · [-1, 1)`.
fn activations<Bk: Backend>(seed: u64, scale: f32, device: &Bk::Device) -> Tensor<Bk, 3> {
    let data: Vec<f32> = values(SHAPE.iter().product(), seed).iter().map(|v| v * scale).collect();
    Tensor::from_data(TensorData::new(data, SHAPE), device)
}

/// A norm weight around 1 (in [0.5, 1.5)).
fn norm_weight<Bk: Backend>(device: &Bk::Device) -> Tensor<Bk, 1> {
    let data: Vec<f32> = values(SHAPE[2], 7).iter().map(|v| 1.0 + 0.5 * v).collect();
    Tensor::from_data(TensorData::new(data, [SHAPE[2]]), device)
}

/// The loss `Σ y ∘ R` (in f32) with fixed random `R`, so every output element gets a different gradient.
fn weighted_sum<Bk: Backend>(y: Tensor<Bk, 3>) -> Tensor<Bk, 1> {
    let r = activations::<Bk>(99, 1.0, &y.device());
    (y.cast(FloatDType::F32) * r).sum()
}

/// The largest difference in units of the reference value's f32 ulp (0 when bit-identical).
fn max_ulps<Bk: Backend, const D: usize>(a: Tensor<Bk, D>, b: Tensor<Bk, D>) -> f32 {
    let (a, b) = (to_vec(a), to_vec(b));
    a.iter().zip(&b).map(|(x, y)| (x - y).abs() / (y.abs() * f32::EPSILON).max(f32::MIN_POSITIVE)).fold(0.0, f32::max)
}

fn max_abs<Bk: Backend, const D: usize>(a: Tensor<Bk, D>) -> f32 {
    to_vec(a).iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// The autodiff backend's name for the printed lines.
fn backend<Bk: Backend>() -> &'static str {
    if std::any::type_name::<Bk>().contains("BalancedCheckpointing") {
        "Autodiff<Flex, BalancedCheckpointing>"
    } else {
        "Autodiff<Flex>"
    }
}

/// What one comparison measured: output, first input's and second input's gradient (`None` when frozen).
struct Diffs {
    out: f32,
    first: f32,
    second: Option<f32>,
}

impl Diffs {
    fn assert_within(&self, out: f32, grad: f32) {
        assert!(self.out <= out, "output max difference {}", self.out);
        assert!(self.first <= grad, "first input's gradient max difference {}", self.first);
        if let Some(d) = self.second {
            assert!(d <= grad, "second input's gradient max difference {d}");
        }
    }
}

/// `rms_norm` vs `RmsNorm::forward` under autodiff on `Bk`: x in `dtype` (the reference sees the same values), an
/// f32 weight, trainable or frozen. Asserts output and gradient dtypes and that a frozen weight gets no gradient.
fn compare_rms_norm<Bk: AutodiffKernels>(dtype: FloatDType, weight_trainable: bool) -> Diffs {
    let device = Default::default();
    let x_values = activations::<Bk>(1, 2.0, &device).cast(dtype);
    let weight_values = norm_weight::<Bk>(&device);

    let x = x_values.clone().detach().require_grad();
    let weight = if weight_trainable { weight_values.clone().detach().require_grad() } else { weight_values.clone() };
    let y = rms_norm(x.clone(), weight.clone(), EPS);
    assert_eq!(y.dtype(), DType::from(dtype), "output in x's dtype");
    let grads = weighted_sum(y.clone()).backward();
    let dx = x.grad(&grads).expect("x gradient");
    assert_eq!(dx.dtype(), DType::from(dtype), "dx in x's dtype");
    let dweight = weight.grad(&grads);
    assert_eq!(dweight.is_some(), weight_trainable, "a frozen weight must get no gradient");
    if let Some(d) = &dweight {
        assert_eq!(d.dtype(), DType::F32, "dweight in weight's dtype");
    }

    let rx = x_values.detach().require_grad();
    let norm = RmsNorm::new(weight_values, EPS);
    let ry = norm.forward(rx.clone());
    let grads = weighted_sum(ry.clone()).backward();
    let rdx = rx.grad(&grads).expect("reference x gradient");
    let rdw = norm.weight.val().grad(&grads).expect("reference weight gradient");
    let diffs = Diffs {
        out: max_diff(y, ry),
        first: max_diff(dx, rdx.clone()),
        second: dweight.map(|d| max_diff(d, rdw.clone())),
    };
    println!(
        "rms_norm {} x {dtype:?} weight {}: y max diff {:.2e}, dx max diff {:.2e}, dweight max diff {:?} \
         (|dx| max {:.2}, |dweight| max {:.2})",
        backend::<Bk>(),
        if weight_trainable { "trainable" } else { "frozen" },
        diffs.out,
        diffs.first,
        diffs.second,
        max_abs(rdx),
        max_abs(rdw),
    );
    diffs
}

/// `swiglu` vs `silu(gate) * up` under autodiff on `Bk`, both inputs in `dtype` and tracked.
fn compare_swiglu<Bk: AutodiffKernels>(dtype: FloatDType) -> Diffs {
    let device = Default::default();
    // Gate values in [-6, 6): both tails of the sigmoid.
    let gate_values = activations::<Bk>(3, 6.0, &device).cast(dtype);
    let up_values = activations::<Bk>(4, 2.0, &device).cast(dtype);

    let (gate, up) = (gate_values.clone().detach().require_grad(), up_values.clone().detach().require_grad());
    let y = swiglu(gate.clone(), up.clone());
    assert_eq!(y.dtype(), DType::from(dtype), "output in the inputs' dtype");
    let grads = weighted_sum(y.clone()).backward();
    let dgate = gate.grad(&grads).expect("gate gradient");
    let dup = up.grad(&grads).expect("up gradient");
    assert_eq!((dgate.dtype(), dup.dtype()), (DType::from(dtype), DType::from(dtype)), "gradients in inputs' dtype");

    let (rgate, rup) = (gate_values.detach().require_grad(), up_values.detach().require_grad());
    let ry = silu(rgate.clone()) * rup.clone();
    let grads = weighted_sum(ry.clone()).backward();
    let (rdgate, rdup) = (rgate.grad(&grads).expect("reference gate gradient"), rup.grad(&grads).expect("up"));
    let diffs = Diffs {
        out: max_diff(y, ry),
        first: max_diff(dgate, rdgate.clone()),
        second: Some(max_diff(dup, rdup.clone())),
    };
    println!(
        "swiglu {} {dtype:?}: y max diff {:.2e}, dgate max diff {:.2e}, dup max diff {:.2e} \
         (|dgate| max {:.2}, |dup| max {:.2})",
        backend::<Bk>(),
        diffs.out,
        diffs.first,
        diffs.second.unwrap_or_default(),
        max_abs(rdgate),
        max_abs(rdup),
    );
    diffs
}

/// `rope` vs `apply_rotary` under autodiff on `Bk`: `[2, 3, 37, 16]` x in `dtype` with real tables (positions of
/// two packed rows), the loss weighting every output element differently.
fn compare_rope<Bk: AutodiffKernels>(dtype: FloatDType) -> Diffs {
    let device = Default::default();
    let shape = [2, 3, 37, 16];
    let data: Vec<f32> = values(shape.iter().product(), 11).iter().map(|v| 3.0 * v).collect();
    let x_values = Tensor::<Bk, 4>::from_data(TensorData::new(data, shape), &device).cast(dtype);
    let positions: Vec<u32> = (0..2 * 37).map(|i| (i % 37 + 5 * (i / 37)) as u32).collect();
    let rotary = Rotary::new(&RopeConfig { theta: 10_000.0, scaling: RopeScaling::Default }, 16);
    let (cos, sin) = rotary.tables::<Bk>(&positions, 2, 37, &device);
    let (cos, sin) = (cos.cast(dtype), sin.cast(dtype));
    let weights = Tensor::<Bk, 4>::from_data(TensorData::new(values(shape.iter().product(), 12), shape), &device);
    let loss = |y: Tensor<Bk, 4>| (y.cast(FloatDType::F32) * weights.clone()).sum();

    let x = x_values.clone().detach().require_grad();
    let y = rope(x.clone(), &cos, &sin);
    assert_eq!(y.dtype(), DType::from(dtype), "output in x's dtype");
    let dx = x.grad(&loss(y.clone()).backward()).expect("x gradient");
    assert_eq!(dx.dtype(), DType::from(dtype), "gradient in x's dtype");
    let rx = x_values.detach().require_grad();
    let ry = apply_rotary(rx.clone(), &cos, &sin);
    let rdx = rx.grad(&loss(ry.clone()).backward()).expect("reference x gradient");
    let diffs = Diffs { out: max_diff(y, ry), first: max_diff(dx, rdx.clone()), second: None };
    println!(
        "rope {} {dtype:?}: y max diff {:.2e}, dx max diff {:.2e} (|dx| max {:.2})",
        backend::<Bk>(),
        diffs.out,
        diffs.first,
        max_abs(rdx)
    );
    diffs
}

#[test]
fn rope_matches_plain_f32_and_bf16() {
    let _serial = serial();
    let f32_diffs = compare_rope::<A>(FloatDType::F32);
    assert_eq!(f32_diffs.out, 0.0, "the same forward ops");
    f32_diffs.assert_within(0.0, 1e-6);
    compare_rope::<A>(FloatDType::BF16).assert_within(0.0, 1e-6);
    compare_rope::<Balanced>(FloatDType::F32).assert_within(0.0, 1e-6);
}

#[test]
fn rms_norm_matches_plain_f32() {
    let _serial = serial();
    compare_rms_norm::<A>(FloatDType::F32, true).assert_within(1e-5, 1e-5);
}

#[test]
fn rms_norm_f32_output_is_within_three_ulp_of_the_composed_ops() {
    // The CPU kernel sums the squares in f64 and rounds once; burn's composed mean sums in f32 in its SIMD order.
    let _serial = serial();
    let device = Default::default();
    let x = activations::<A>(1, 2.0, &device).require_grad();
    let weight = norm_weight::<A>(&device).require_grad();
    let fused = rms_norm(x.clone(), weight.clone(), EPS);
    let plain = RmsNorm::new(weight, EPS).forward(x);
    let ulps = max_ulps(fused, plain);
    println!("rms_norm f32 output: max {ulps} ulp from RmsNorm::forward");
    assert!(ulps <= 3.0, "{ulps} ulp");
}

#[test]
fn rms_norm_frozen_weight_gets_no_gradient() {
    let _serial = serial();
    compare_rms_norm::<A>(FloatDType::F32, false).assert_within(1e-5, 1e-5);
}

#[test]
fn rms_norm_bf16_keeps_dtypes_and_stays_close() {
    let _serial = serial();
    // The output goes through the same ops; the gradients differ by bf16 rounding (the plain backward runs in
    // bf16, the fused one in f32): within one bf16 ulp of the largest gradient (|dweight| ≈ 15, ulp 0.0625).
    compare_rms_norm::<A>(FloatDType::BF16, true).assert_within(1e-2, 0.1);
    compare_rms_norm::<A>(FloatDType::BF16, false).assert_within(1e-2, 0.1);
}

#[test]
fn rms_norm_on_a_checkpointing_autodiff_backend() {
    let _serial = serial();
    compare_rms_norm::<Balanced>(FloatDType::F32, true).assert_within(1e-5, 1e-5);
    compare_rms_norm::<Balanced>(FloatDType::F32, false).assert_within(1e-5, 1e-5);
}

#[test]
fn rms_norm_forward_without_autodiff() {
    let _serial = serial();
    let device = Default::default();
    for dtype in [FloatDType::F32, FloatDType::BF16] {
        let x = activations::<CpuBackend>(1, 2.0, &device).cast(dtype);
        let weight = norm_weight::<CpuBackend>(&device);
        let fused = rms_norm(x.clone(), weight.clone(), EPS);
        assert_eq!(fused.dtype(), DType::from(dtype));
        let d = max_diff(fused, RmsNorm::new(weight, EPS).forward(x));
        println!("rms_norm without autodiff {dtype:?}: y max diff {d:.2e}");
        assert!(d <= 1e-6, "max difference {d}");
    }
}

#[test]
fn swiglu_matches_plain_f32() {
    let _serial = serial();
    compare_swiglu::<A>(FloatDType::F32).assert_within(1e-5, 1e-5);
}

#[test]
fn swiglu_bf16_keeps_dtypes_and_stays_close() {
    let _serial = serial();
    // Within one bf16 ulp of the largest gradient (|dup| ≈ 6, ulp 0.03125).
    compare_swiglu::<A>(FloatDType::BF16).assert_within(1e-2, 0.05);
}

#[test]
fn swiglu_on_a_checkpointing_autodiff_backend() {
    let _serial = serial();
    compare_swiglu::<Balanced>(FloatDType::F32).assert_within(1e-5, 1e-5);
}

#[test]
fn swiglu_frozen_input_gets_no_gradient() {
    let _serial = serial();
    let device = Default::default();
    let (gate_values, up_values) = (activations::<A>(3, 6.0, &device), activations::<A>(4, 2.0, &device));
    for (gate_tracked, up_tracked) in [(true, false), (false, true)] {
        let leaf = |t: &Tensor<A, 3>, tracked: bool| if tracked { t.clone().require_grad() } else { t.clone() };
        let (gate, up) = (leaf(&gate_values, gate_tracked), leaf(&up_values, up_tracked));
        let grads = weighted_sum(swiglu(gate.clone(), up.clone())).backward();
        assert_eq!(gate.grad(&grads).is_some(), gate_tracked, "gate gradient only when tracked");
        assert_eq!(up.grad(&grads).is_some(), up_tracked, "up gradient only when tracked");
    }
}

#[test]
fn swiglu_forward_without_autodiff() {
    let _serial = serial();
    let device = Default::default();
    for dtype in [FloatDType::F32, FloatDType::BF16] {
        let gate = activations::<CpuBackend>(3, 6.0, &device).cast(dtype);
        let up = activations::<CpuBackend>(4, 2.0, &device).cast(dtype);
        let fused = swiglu(gate.clone(), up.clone());
        assert_eq!(fused.dtype(), DType::from(dtype));
        let plain = silu(gate) * up;
        let (d, ulps) = (max_diff(fused.clone(), plain.clone()), max_ulps(fused, plain));
        println!("swiglu without autodiff {dtype:?}: y max diff {d:.2e} ({ulps:.2} ulp)");
        // The CPU kernel's vectorised exponential is within 2 ulp of libm's (bf16 takes the composed ops).
        assert!(ulps <= 4.0, "the forward is the plain op within a few ulp: {ulps}");
    }
}

/// Bytes still allocated after `forward` returns (its output alive, so autodiff holds everything saved for
/// backward), beyond what was allocated before.
fn retained<Bk: Backend>(forward: impl FnOnce() -> Tensor<Bk, 3>) -> isize {
    let before = LIVE.load(Ordering::SeqCst);
    let y = forward();
    let after = LIVE.load(Ordering::SeqCst);
    drop(y);
    after - before
}

#[test]
fn fused_nodes_keep_less_for_backward() {
    let _serial = serial();
    let device = Default::default();
    let shape = [4, 256, 1024];
    let elements: usize = shape.iter().product();
    let big = |seed: u64, dtype: FloatDType| {
        let data = values(elements, seed);
        Tensor::<A, 3>::from_data(TensorData::new(data, shape), &device).cast(dtype).require_grad()
    };
    for dtype in [FloatDType::F32, FloatDType::BF16] {
        let tensor_bytes = (elements * DType::from(dtype).size()) as f64;
        let mib = |bytes: isize| bytes as f64 / (1 << 20) as f64;
        let (x, gate, up) = (big(1, dtype), big(2, dtype), big(3, dtype));
        let weight = Tensor::<A, 1>::ones([shape[2]], &device).require_grad();
        let norm = RmsNorm::new(weight.clone(), EPS);
        let fused_norm = retained(|| rms_norm(x.clone(), weight.clone(), EPS));
        let plain_norm = retained(|| norm.forward(x.clone()));
        let fused_glu = retained(|| swiglu(gate.clone(), up.clone()));
        let plain_glu = retained(|| silu(gate.clone()) * up.clone());
        println!(
            "kept until backward (output included), {dtype:?} {shape:?} (one tensor = {:.1} MiB): rms_norm {:.1} MiB fused vs {:.1} \
             MiB plain; swiglu {:.1} MiB fused vs {:.1} MiB plain",
            tensor_bytes / (1 << 20) as f64,
            mib(fused_norm),
            mib(plain_norm),
            mib(fused_glu),
            mib(plain_glu),
        );
        // The fused nodes keep their output plus (RMSNorm) one f32 per row.
        let slack = tensor_bytes * 0.1;
        assert!((fused_norm as f64) < tensor_bytes + slack, "fused rms_norm kept {fused_norm} bytes");
        assert!((fused_glu as f64) < tensor_bytes + slack, "fused swiglu kept {fused_glu} bytes");
        assert!(plain_norm > fused_norm && plain_glu > fused_glu);
    }
    // Another checkpointing strategy: the node keeps no more than its output and one f32 per row. (This bounds the
    // memory but does not tell the node from the composed ops: burn's balanced strategy recomputes their
    // element-wise chain too, and kept the same 4 MiB when measured.)
    let (x, weight) = (big(1, FloatDType::F32), Tensor::<A, 1>::ones([shape[2]], &device).require_grad());
    let (x, weight) = (Tensor::<Balanced, 3>::from_data(x.into_data(), &device).require_grad(), weight);
    let weight = Tensor::<Balanced, 1>::from_data(weight.into_data(), &device).require_grad();
    let kept = retained(|| rms_norm(x.clone(), weight.clone(), EPS));
    let tensor_bytes = (elements * 4) as f64;
    println!("rms_norm on Autodiff<Flex, BalancedCheckpointing>: {:.1} MiB kept", kept as f64 / (1 << 20) as f64);
    assert!((kept as f64) < tensor_bytes * 1.1, "rms_norm kept {kept} bytes");
}
