//! Strided f32 matrices over tensor storage and the one GEMM the CPU kernels call on them (the `gemm` crate,
//! which burn's Flex matmul runs on too).

use burn::backend::flex::FlexTensor;

/// A matrix read in place from a tensor's storage: element `(i, j)` at `data[offset + i·rs + j·cs]`.
#[derive(Clone, Copy)]
pub(super) struct Mat<'a> {
    pub(super) data: &'a [f32],
    pub(super) offset: usize,
    pub(super) rs: usize,
    pub(super) cs: usize,
}

impl<'a> Mat<'a> {
    /// A row-major matrix with `cols` columns.
    pub(super) fn dense(data: &'a [f32], cols: usize) -> Self {
        Self { data, offset: 0, rs: cols, cs: 1 }
    }

    pub(super) fn transposed(self) -> Self {
        Self { rs: self.cs, cs: self.rs, ..self }
    }

    /// The matrix from row `start` on.
    pub(super) fn rows_from(self, start: usize) -> Self {
        Self { offset: self.offset + start * self.rs, ..self }
    }

    pub(super) fn row(&self, i: usize, cols: usize) -> impl Iterator<Item = f32> + '_ {
        (0..cols).map(move |j| self.at(i, j))
    }

    pub(super) fn at(&self, i: usize, j: usize) -> f32 {
        self.data[self.offset + i * self.rs + j * self.cs]
    }

    /// Whether every element of a `rows × cols` view lies inside `data`.
    fn fits(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || self.offset + (rows - 1) * self.rs + (cols - 1) * self.cs < self.data.len()
    }
}

/// Who runs a GEMM: the calling thread (one product per rayon task), or gemm over rayon's threads (one large
/// product at a time).
#[derive(Clone, Copy)]
pub(super) enum Threads {
    Caller,
    All,
}

/// `dst = lhs · rhs` (or `dst += lhs · rhs` with `accumulate`) for `lhs` `[m × k]`, `rhs` `[k × n]` and `dst` a
/// row-major `[m × n]` block with row stride `dst_rs`.
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul(
    dst: &mut [f32],
    dst_rs: usize,
    (m, n, k): (usize, usize, usize),
    lhs: Mat,
    rhs: Mat,
    accumulate: bool,
    threads: Threads,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        lhs.fits(m, k) && rhs.fits(k, n) && n <= dst_rs && (m - 1) * dst_rs + n <= dst.len(),
        "CPU kernel: a GEMM operand out of its buffer"
    );
    // SAFETY: the assertion above bounds every element gemm reads (lhs, rhs) or writes (dst) inside its slice, all
    // strides are non-negative, and `dst` is borrowed mutably, so no other thread touches it while gemm runs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.data.as_ptr().add(lhs.offset),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr().add(rhs.offset),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            match threads {
                Threads::Caller => gemm::Parallelism::None,
                Threads::All => gemm::Parallelism::Rayon(0),
            },
        );
    }
}

/// The tensor itself when no stride is negative (views of it are read in place), else a contiguous copy.
pub(super) fn readable(t: FlexTensor) -> FlexTensor {
    if t.layout().strides().iter().all(|&s| s >= 0) { t } else { t.to_contiguous() }
}

/// A 2-d f32 tensor with non-negative strides ([`readable`]) as a matrix read where it lies.
pub(super) fn matrix(t: &FlexTensor) -> Mat<'_> {
    let s = t.layout().strides();
    Mat { data: t.storage(), offset: t.layout().start_offset(), rs: s[0] as usize, cs: s[1] as usize }
}
