//! mistral.rs's CPU attention as patched (see
//! `vendor/mistralrs-core/LONGRUN-PATCH.md`): whatever inner loops it picks on
//! this machine (AVX2, chosen at run time, where the CPU has it), it gives
//! softmax(q·kᵀ·scale)·v as a plain reference computes it, for one query
//! (decoding) and for several (a prompt), with grouped key/value heads as
//! SmolLM2 has them (9 query heads over 3); and so does the prompt path that
//! runs several queries as matrix products, under a causal mask over a cached
//! prefix, in the layouts the model hands it.

use candle_core::{Device, Tensor};
use mistralrs_core::{SdpaParams, run_flash_attn_cpu, run_prompt_attn_cpu};

const HEADS: usize = 9;
const KV_HEADS: usize = 3;
/// Not a multiple of 16: the vector loops' remainders are exercised too.
const HEAD_DIM: usize = 68;

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

/// Reference attention over (query, head) rows; layouts (seq, heads, dim).
/// With `causal_past`, query `i` sees keys `0..=past + i` only.
fn reference(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    q_len: usize,
    kv_len: usize,
    scale: f32,
    causal_past: Option<usize>,
) -> Vec<f32> {
    let d = HEAD_DIM;
    let group = HEADS / KV_HEADS;
    // Output layout (heads, q_len, dim), as the kernel returns it.
    let mut out = vec![0f32; HEADS * q_len * d];
    for h in 0..HEADS {
        let kv_h = h / group;
        for i in 0..q_len {
            let q_row = &q[(i * HEADS + h) * d..][..d];
            let seen = causal_past.map_or(kv_len, |past| past + i + 1);
            let scores: Vec<f64> = (0..seen)
                .map(|j| {
                    let k_row = &k[(j * KV_HEADS + kv_h) * d..][..d];
                    q_row
                        .iter()
                        .zip(k_row)
                        .map(|(a, b)| (a * b) as f64)
                        .sum::<f64>()
                        * scale as f64
                })
                .collect();
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f64 = weights.iter().sum();
            for (j, w) in weights.iter().enumerate() {
                let v_row = &v[(j * KV_HEADS + kv_h) * d..][..d];
                for (o, x) in out[(h * q_len + i) * d..][..d].iter_mut().zip(v_row) {
                    *o += (w / total * *x as f64) as f32;
                }
            }
        }
    }
    out
}

fn params(scale: f32) -> SdpaParams {
    SdpaParams {
        n_kv_groups: HEADS / KV_HEADS,
        softcap: None,
        softmax_scale: scale,
        sliding_window: None,
        sinks: None,
    }
}

fn largest_gap(got: &Tensor, want: &[f32]) -> f32 {
    let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max)
}

fn largest_difference(q_len: usize, kv_len: usize) -> f32 {
    let d = HEAD_DIM;
    let scale = 1.0 / (d as f32).sqrt();
    let (q, k, v) = (
        values(q_len * HEADS * d, 1),
        values(kv_len * KV_HEADS * d, 2),
        values(kv_len * KV_HEADS * d, 3),
    );
    let tensor = |data: &[f32], seq: usize, heads: usize| {
        Tensor::from_vec(data.to_vec(), (1, seq, heads, d), &Device::Cpu).unwrap()
    };
    let out = run_flash_attn_cpu::<f32>(
        &tensor(&q, q_len, HEADS),
        &tensor(&k, kv_len, KV_HEADS),
        &tensor(&v, kv_len, KV_HEADS),
        None,
        &params(scale),
    )
    .unwrap();
    assert_eq!(out.dims(), &[1, HEADS, q_len, d]);
    largest_gap(&out, &reference(&q, &k, &v, q_len, kv_len, scale, None))
}

/// The prompt path on `q_len` new queries after `past` cached positions,
/// with the causal mask the model builds, q/k/v laid out as the model hands
/// them over ((seq, heads, dim) rows transposed to (heads, seq, dim) views;
/// the keys and values inside a cache with room to spare).
fn prompt_path_difference(q_len: usize, past: usize) -> f32 {
    let d = HEAD_DIM;
    let kv_len = past + q_len;
    let scale = 1.0 / (d as f32).sqrt();
    let (q, k, v) = (
        values(q_len * HEADS * d, 4),
        values(kv_len * KV_HEADS * d, 5),
        values(kv_len * KV_HEADS * d, 6),
    );
    let queries = Tensor::from_vec(q.clone(), (1, q_len, HEADS, d), &Device::Cpu)
        .unwrap()
        .transpose(1, 2)
        .unwrap();
    let cached = |data: &[f32]| {
        let room = 7;
        let mut padded = data.to_vec();
        padded.extend(values(room * KV_HEADS * d, 7));
        Tensor::from_vec(padded, (1, kv_len + room, KV_HEADS, d), &Device::Cpu)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .narrow(2, 0, kv_len)
            .unwrap()
    };
    let mask: Vec<f32> = (0..q_len)
        .flat_map(|i| (0..kv_len).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    let mask = Tensor::from_vec(mask, (q_len, kv_len), &Device::Cpu).unwrap();
    let out = run_prompt_attn_cpu(
        &queries,
        &cached(&k),
        &cached(&v),
        Some(&mask),
        &params(scale),
    )
    .unwrap()
    .expect("the prompt path takes f32 queries under a 2-D mask");
    assert_eq!(out.dims(), &[1, HEADS, q_len, d]);
    largest_gap(
        &out,
        &reference(&q, &k, &v, q_len, kv_len, scale, Some(past)),
    )
}

#[test]
fn decoding_attention_matches_the_reference() {
    // 37 positions: more than two of the kernel's 16-position tiles.
    assert!(largest_difference(1, 37) < 1e-5);
}

#[test]
fn prompt_attention_matches_the_reference() {
    assert!(largest_difference(5, 37) < 1e-5);
}

#[test]
fn prompt_attention_after_a_cached_prefix_matches_the_reference() {
    assert!(prompt_path_difference(5, 0) < 1e-5);
    assert!(prompt_path_difference(56, 613) < 1e-5);
}

#[test]
fn prompt_attention_over_a_long_context_is_split_into_blocks_and_still_matches() {
    // 40,000 positions: the scores of all 30 queries (9 heads) would take
    // ~43 MB, more than one block may hold, so the rows come in two blocks.
    assert!(prompt_path_difference(30, 39_970) < 1e-5);
}
