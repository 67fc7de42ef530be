//! A checked, safe wrapper over the `gemm` crate for the probe's host-side matrix products.
//!
//! The linear probe runs on host features with tiny weight matrices (classes x dim); going through
//! device tensors would only add copies, so it calls the CPU GEMM directly on slices.

use gemm::Parallelism;

/// A matrix view: row-major data of `rows x cols` read with `(row_stride, col_stride)`, so a
/// transposed operand is the same slice with swapped strides.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Mat<'a> {
    /// Row-major `rows x cols`.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Mat { data, rows, cols, rs: cols, cs: 1 }
    }
    /// The transpose (no copy).
    pub fn t(self) -> Self {
        Mat { data: self.data, rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs }
    }
    fn fits(&self) -> bool {
        self.rows == 0 || self.cols == 0 || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

/// `dst (m x n, row-major) = a (m x k) . b (k x n)`, overwriting `dst`. Single-threaded, so the
/// result is deterministic (the probe must be reproducible from its seed).
///
/// # Panics
/// On mismatched shapes or views that read past their slices (programming errors).
pub(crate) fn matmul_into(dst: &mut [f32], a: Mat<'_>, b: Mat<'_>) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "matmul_into: inner dimensions {k} vs {}", b.rows);
    assert_eq!(dst.len(), m * n, "matmul_into: dst has {} values for {m} x {n}", dst.len());
    assert!(a.fits() && b.fits(), "matmul_into: operand view out of bounds");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        dst.fill(0.0);
        return;
    }
    // SAFETY: every index the kernel touches, `i*rs + j*cs` for i < rows, j < cols, is inside the
    // corresponding slice (checked by `fits` above and the `dst` length check), `dst` is a unique
    // borrow that does not alias the operands, and `read_dst = false` means dst's old values are
    // never read.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_naive_with_transposes() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect(); // stored (n, k)
        let mut dst = vec![f32::NAN; m * n];
        matmul_into(&mut dst, Mat::new(&a, m, k), Mat::new(&b, n, k).t());
        for i in 0..m {
            for j in 0..n {
                let e: f32 = (0..k).map(|l| a[i * k + l] * b[j * k + l]).sum();
                assert!((dst[i * n + j] - e).abs() < 1e-5);
            }
        }
    }
}
