//! Element-wise math for the CPU kernels written so that LLVM vectorises the loops that call it: an exponential
//! without libm calls or branches, and reductions over independent lanes (a sequential f32 sum or max cannot be
//! reordered, so it never vectorises). [`with_simd`] compiles a loop for the widest vectors the CPU has.

/// Runs `f` compiled for the best instruction set this CPU offers (AVX-512, else AVX2 + FMA, detected at run time
/// by `pulp`, the dispatcher gemm uses), so that the loops inlined into it vectorise to that width: the crates are
/// built for baseline x86-64, where they get 4-wide SSE at best. Everything `f` calls in its hot loop must be
/// `#[inline(always)]` to be compiled with those features too, and so must `f` itself (`#[inline(always)] || ..`):
/// a closure LLVM leaves out of line is compiled for the baseline.
#[inline(always)]
pub(super) fn with_simd<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
}

/// Lanes of the vectorised reductions: one AVX-512 register of f32 (two AVX2 ones).
const LANES: usize = 16;

/// Below this `e^x` leaves f32's normal range; [`exp_nonpositive`] returns exactly 0 there.
const LOWEST: f32 = -87.336_54;

/// `e^t` for `t ≤ 0` (larger arguments are taken as 0), inlined so that the caller's loop vectorises.
///
/// libm's `expf` is a call per element, which keeps loops scalar (it was a sixth of an attention step's time).
/// This is Cephes' `expf`: `t = n·ln 2 + r` with `|r| ≤ ln 2 / 2` (Cody and Waite's two-part `ln 2`), a degree-6
/// polynomial for `e^r` (under 2 ulp from libm, tested), and `2^n` built in the exponent bits. Below [`LOWEST`]
/// (where libm returns subnormals) the result is exactly 0, so masked scores weigh nothing.
#[inline(always)]
pub(super) fn exp_nonpositive(t: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5·2²³ rounds to the nearest integer in f32 arithmetic (no call to `round`), and leaves that
    // integer in the low mantissa bits, where 2^n's exponent field is read from without a float-to-int conversion
    // (whose saturating semantics would not vectorise).
    const ROUND: f32 = 12_582_912.0;
    let t = t.clamp(LOWEST, 0.0);
    let rounded = t * LOG2_E + ROUND;
    let n = rounded - ROUND;
    let r = t - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_2e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e_r = p * r * r + r + 1.0;
    // n is in [-126, 0], so n + 127 is a valid biased exponent.
    let n_bits = rounded.to_bits().wrapping_sub(ROUND.to_bits());
    let two_n = f32::from_bits(n_bits.wrapping_add(127) << 23);
    if t > LOWEST { e_r * two_n } else { 0.0 }
}

/// `x ← e^(x − shift)` in place, for `x ≤ shift` (scores minus their maximum or their log-sum-exp).
#[inline(always)]
pub(super) fn exp_shifted(xs: &mut [f32], shift: f32) {
    for x in xs.iter_mut() {
        *x = exp_nonpositive(*x - shift);
    }
}

/// The logistic function `1 / (1 + e^−g)`, from `e^−|g|` so the exponential never overflows.
#[inline(always)]
pub(super) fn sigmoid(g: f32) -> f32 {
    let e = exp_nonpositive(-g.abs());
    let r = 1.0 / (1.0 + e);
    if g >= 0.0 { r } else { e * r }
}

/// The largest value (`-inf` for none), reduced over [`LANES`] partial maxima.
#[inline(always)]
pub(super) fn max(xs: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder().iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    for chunk in chunks {
        for (m, &x) in lanes.iter_mut().zip(chunk) {
            *m = m.max(x);
        }
    }
    lanes.iter().fold(tail, |m, &x| m.max(x))
}

/// The sum over [`LANES`] partial sums.
#[inline(always)]
pub(super) fn sum(xs: &[f32]) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for (s, &x) in lanes.iter_mut().zip(chunk) {
            *s += x;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_libm_within_two_ulp_and_underflows_to_zero() {
        let xs: Vec<f32> = (0..200_000).map(|i| -90.0 * i as f32 / 200_000.0).collect();
        let mut ys = xs.clone();
        exp_shifted(&mut ys, 0.0);
        let mut worst = 0.0f32;
        for (&x, &y) in xs.iter().zip(&ys) {
            let want = x.exp();
            if x > -87.3 {
                worst = worst.max((y - want).abs() / (want * f32::EPSILON));
            } else {
                assert!(y == 0.0 || (y - want).abs() < 1e-37, "e^{x}: {y} vs {want}");
            }
        }
        assert!(worst <= 2.0, "worst relative error {worst} ulp");
        let mut shifted = [5.0f32, 3.0, -1.0e30];
        exp_shifted(&mut shifted, 5.0);
        assert_eq!(shifted[0], 1.0);
        assert!((shifted[1] - (-2.0f32).exp()).abs() <= f32::EPSILON * 0.2);
        assert_eq!(shifted[2], 0.0, "a masked score weighs exactly nothing");
    }

    #[test]
    fn sigmoid_matches_libm_within_three_ulp_on_both_sides() {
        let mut worst = 0.0f32;
        // Down to -80, where e^g is still a normal f32 (below -87.3 the kernel returns 0, libm a subnormal).
        for i in -80_000..=80_000 {
            let g = i as f32 * 1e-3;
            let want = if g >= 0.0 { 1.0 / (1.0 + (-g).exp()) } else { g.exp() / (1.0 + g.exp()) };
            worst = worst.max((sigmoid(g) - want).abs() / (want * f32::EPSILON));
        }
        assert!(worst <= 3.0, "worst relative error {worst} ulp");
        assert_eq!(sigmoid(200.0), 1.0);
        assert_eq!(sigmoid(-200.0), 0.0);
        assert_eq!(sigmoid(-90.0), 0.0);
    }

    #[test]
    fn lane_reductions_match_sequential_ones() {
        for len in [0, 1, 15, 16, 17, 100, 1000] {
            let xs: Vec<f32> = (0..len).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.37).collect();
            let want_max = xs.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            assert_eq!(max(&xs), want_max, "max of {len}");
            let want_sum: f64 = xs.iter().map(|&x| f64::from(x)).sum();
            assert!((f64::from(sum(&xs)) - want_sum).abs() <= 1e-4 * (1.0 + want_sum.abs()), "sum of {len}");
        }
    }
}
