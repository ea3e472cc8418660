//! The quantized dot-product kernels of the patched candle-core (see
//! `vendor/candle-core/LONGRUN-PATCH.md`): whatever kernel `vec_dot` picks on
//! this machine (the AVX2 one, chosen at run time, where the CPU has it) gives
//! what candle's scalar reference gives, for every format that has a kernel.

use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8_0, BlockQ8K,
    GgmlType,
};

/// Deterministic values in [-1, 1), with a few outliers as real weights have.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    (0..n)
        .map(|i| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let x = (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
            if i % 97 == 0 { x * 8.0 } else { x }
        })
        .collect()
}

/// `rows` dot products of a `k`-long quantized row with a quantized vector,
/// by `vec_dot` and by `vec_dot_unopt`; returns the largest difference
/// relative to the largest result.
fn largest_difference<T: GgmlType>(k: usize, rows: usize) -> f32 {
    let weights = values(k * rows, 1);
    let input = values(k, 2);
    let mut w = vec![T::zeros(); k * rows / T::BLCK_SIZE];
    T::from_float(&weights, &mut w);
    let mut x = vec![T::VecDotType::zeros(); k / T::BLCK_SIZE];
    T::VecDotType::from_float(&input, &mut x);
    let blocks = k / T::BLCK_SIZE;
    let (mut diff, mut scale) = (0f32, 0f32);
    for row in w.chunks(blocks) {
        let fast = T::vec_dot(k, row, &x);
        let reference = T::vec_dot_unopt(k, row, &x);
        assert!(fast.is_finite(), "a finite result");
        diff = diff.max((fast - reference).abs());
        scale = scale.max(reference.abs());
    }
    diff / scale
}

/// Sums in a different order (eight lanes, fused multiply-add) differ from the
/// scalar ones only by rounding.
const ROUNDING: f32 = 1e-5;

#[test]
fn q4_1_kernel_matches_the_scalar_reference() {
    // The shapes of SmolLM2-135M's projections.
    assert!(largest_difference::<BlockQ4_1>(576, 1536) < ROUNDING);
    assert!(largest_difference::<BlockQ4_1>(1536, 576) < ROUNDING);
}

#[test]
fn q8_0_and_q4_0_kernels_match_the_scalar_reference() {
    assert!(largest_difference::<BlockQ8_0>(576, 512) < ROUNDING);
    assert!(largest_difference::<BlockQ4_0>(576, 512) < ROUNDING);
}

#[test]
fn k_quant_kernels_match_the_scalar_reference() {
    assert!(largest_difference::<BlockQ2K>(1536, 128) < ROUNDING);
    assert!(largest_difference::<BlockQ3K>(1536, 128) < ROUNDING);
    assert!(largest_difference::<BlockQ4K>(1536, 128) < ROUNDING);
    assert!(largest_difference::<BlockQ5K>(1536, 128) < ROUNDING);
    assert!(largest_difference::<BlockQ6K>(1536, 128) < ROUNDING);
    assert!(largest_difference::<BlockQ8K>(1536, 128) < ROUNDING);
}
