//! Normalised Walsh–Hadamard rotation `y = x · H_n · n^-1/2` (Sylvester order), used on the
//! Lightning Indexer's queries and keys before their FP4 fake quantisation.

/// The unscaled butterflies of the fast Walsh–Hadamard transform, in place (power-of-two
/// length). Stage `h` pairs `(j, j + h)` within blocks of `2h` as two contiguous halves, so
/// the wider stages vectorise; every value sees the same additions in the same order as the
/// textbook loop. Shared by the engine and the trainer's fused op, so both round alike.
pub fn butterflies<T: Copy + std::ops::Add<Output = T> + std::ops::Sub<Output = T>>(x: &mut [T]) {
    let n = x.len();
    debug_assert!(n.is_power_of_two());
    let mut h = 1;
    while h < n {
        for block in x.chunks_exact_mut(2 * h) {
            let (lo, hi) = block.split_at_mut(h);
            for (a, b) in lo.iter_mut().zip(hi.iter_mut()) {
                let (p, q) = (*a, *b);
                *a = p + q;
                *b = p - q;
            }
        }
        h *= 2;
    }
}

/// In-place fast Walsh–Hadamard transform of a power-of-two length vector, scaled by `n^-1/2`.
pub fn rotate(x: &mut [f32]) {
    butterflies(x);
    let s = (x.len() as f32).powf(-0.5);
    for v in x.iter_mut() {
        *v *= s;
    }
}

/// The dense `n × n` Sylvester matrix (`H[i][j] = (−1)^popcount(i & j)`), row-major.
pub fn matrix(n: usize) -> Vec<f32> {
    (0..n * n).map(|k| if ((k / n) & (k % n)).count_ones().is_multiple_of(2) { 1.0 } else { -1.0 }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_transform_equals_matrix_product() {
        let n = 16;
        let x: Vec<f32> = (0..n).map(|i| (i as f32 * 0.7).sin()).collect();
        let h = matrix(n);
        let want: Vec<f32> =
            (0..n).map(|j| (0..n).map(|i| x[i] * h[i * n + j]).sum::<f32>() / (n as f32).sqrt()).collect();
        let mut y = x.clone();
        rotate(&mut y);
        for (a, b) in y.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5);
        }
        // orthonormal: applying twice gives the input back
        rotate(&mut y);
        for (a, b) in y.iter().zip(&x) {
            assert!((a - b).abs() < 1e-5);
        }
    }
}
