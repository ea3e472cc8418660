//! The quantized dot-product kernels of the patched candle-core (see
//! `vendor/candle-core/LONGRUN-PATCH.md`): whatever kernel `vec_dot` picks on
//! this machine (the AVX2 one, chosen at run time, where the CPU has it) gives
//! what candle's scalar reference gives, for every format that has a kernel;
//! so do the four-row kernel of prompts and the quantization of activations.

use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8_0, BlockQ8_1,
    BlockQ8K, GgmlType, matmul,
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
    // An odd number of blocks: the kernel takes them two at a time.
    assert!(largest_difference::<BlockQ4_1>(32 * 19, 64) < ROUNDING);
}

/// A prompt (several rows) goes through the patched matrix product, which
/// works on a few columns at a time, four rows at a time (`vec_dot_4rows`),
/// then row by row for the rest; one row goes through candle's row-by-row one.
/// Both give, for every row, the dot products of that row alone, up to the
/// order in which the kernels add.
#[test]
fn a_several_row_product_equals_its_rows_one_at_a_time() {
    // Seven rows: one group of four and three left over; 40 columns: two
    // tasks of sixteen and one of eight.
    let (m, k, n) = (7, 576, 40);
    let weights = values(k * n, 3);
    let input = values(m * k, 4);
    let mut w = vec![BlockQ4_1::zeros(); k * n / BlockQ4_1::BLCK_SIZE];
    BlockQ4_1::from_float(&weights, &mut w);
    let mut all_rows = vec![0f32; m * n];
    matmul((m, k, n), &input, &w, &mut all_rows).unwrap();
    for row in 0..m {
        let mut one_row = vec![0f32; n];
        matmul((1, k, n), &input[row * k..(row + 1) * k], &w, &mut one_row).unwrap();
        let scale = one_row.iter().fold(0f32, |s, v| s.max(v.abs()));
        for (col, (several, one)) in all_rows[row * n..(row + 1) * n]
            .iter()
            .zip(&one_row)
            .enumerate()
        {
            assert!(
                (several - one).abs() <= ROUNDING * scale,
                "row {row} column {col}: {several} against {one}"
            );
        }
    }
}

#[test]
fn the_four_row_q4_1_kernel_gives_each_rows_own_dot_product() {
    let (k, columns) = (1536, 64);
    let blocks = k / BlockQ4_1::BLCK_SIZE;
    let mut w = vec![BlockQ4_1::zeros(); columns * blocks];
    BlockQ4_1::from_float(&values(k * columns, 5), &mut w);
    let mut x = vec![BlockQ8_1::zeros(); 4 * blocks];
    BlockQ8_1::from_float(&values(4 * k, 6), &mut x);
    let rows: Vec<&[BlockQ8_1]> = x.chunks(blocks).collect();
    let rows = [rows[0], rows[1], rows[2], rows[3]];
    let (mut diff, mut scale) = (0f32, 0f32);
    for column in w.chunks(blocks) {
        let four = BlockQ4_1::vec_dot_4rows(k, column, rows);
        for (value, row) in four.into_iter().zip(rows) {
            let reference = BlockQ4_1::vec_dot_unopt(k, column, row);
            assert!(value.is_finite(), "a finite result");
            diff = diff.max((value - reference).abs());
            scale = scale.max(reference.abs());
        }
    }
    assert!(
        diff / scale < ROUNDING,
        "largest difference {diff}, largest result {scale}"
    );
}

#[test]
fn activations_are_quantized_as_candles_scalar_code_does_halves_away_from_zero() {
    // Random values, and a block whose largest value is 127, so that the
    // scale is exactly 1 and values ending in .5 are ties: the scalar code
    // rounds them away from zero (2.5 to 3, -0.5 to -1), not to even.
    let mut input = values(32 * 48, 7);
    let ties = [127.0, 2.5, -2.5, 0.5, -0.5, 1.5, -1.5, 126.5];
    input[..8].copy_from_slice(&ties);
    let mut fast = vec![BlockQ8_1::zeros(); 48];
    let mut reference = vec![BlockQ8_1::zeros(); 48];
    BlockQ8_1::from_float(&input, &mut fast);
    BlockQ8_1::from_float_unopt(&input, &mut reference);
    for (i, (fast, reference)) in fast.iter().zip(&reference).enumerate() {
        assert_eq!(fast, reference, "block {i}");
    }
    // The tie block, read back through a dot product with ones (and 127
    // beside them, for a scale of exactly 1): 127 + 3 - 3 + 1 - 1 + 2 - 2 + 127.
    let tie_sum: f32 = [127.0, 3.0, -3.0, 1.0, -1.0, 2.0, -2.0, 127.0].iter().sum();
    let mut first = vec![BlockQ8_1::zeros(); 1];
    let mut block = [0f32; 32];
    block[..8].copy_from_slice(&ties);
    BlockQ8_1::from_float(&block, &mut first);
    let mut ones = vec![BlockQ8_1::zeros(); 1];
    let mut one_values = [0f32; 32];
    one_values[..8].fill(1.0);
    one_values[8] = 127.0; // a scale of exactly 1
    BlockQ8_1::from_float(&one_values, &mut ones);
    let sum = BlockQ8_1::vec_dot(32, &ones, &first);
    assert_eq!(sum, tie_sum);
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
