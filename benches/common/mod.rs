//! What the benchmarks share: a recorder of criterion's samples, so that a
//! benchmark can print its median beside its baseline's in the same run.

use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The per-iteration time of every sample criterion takes.
#[derive(Clone, Default)]
pub struct Samples(Arc<Mutex<Vec<f64>>>);

impl Samples {
    /// Record a sample of `iters` iterations that took `elapsed`.
    pub fn record(&self, elapsed: Duration, iters: u64) {
        if let Ok(mut s) = self.0.lock() {
            s.push(elapsed.as_secs_f64() / iters.max(1) as f64);
        }
    }

    /// For criterion's `iter_custom`: run `once` `iters` times, each run
    /// returning the time it measured and the units (tokens, steps) that
    /// time covers; records each run per unit and returns the total time.
    #[allow(dead_code)] // Not every benchmark measures run by run.
    pub fn measure(&self, iters: u64, mut once: impl FnMut() -> (Duration, u64)) -> Duration {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let (elapsed, units) = once();
            self.record(elapsed, units);
            total += elapsed;
        }
        total
    }

    /// The median seconds per iteration, if any sample was taken.
    #[allow(dead_code)] // Not every benchmark prints a median.
    pub fn median(&self) -> Option<f64> {
        let mut s = self.0.lock().ok()?.clone();
        if s.is_empty() {
            return None;
        }
        s.sort_by(f64::total_cmp);
        Some(s[s.len() / 2])
    }
}

/// Print a benchmark's result line. Under `cargo test` (no `--bench`)
/// criterion runs each benchmark once, as a smoke test: the figures are then
/// one unmeasured sample on a busy machine, and the line says so.
#[allow(dead_code)] // Not every benchmark prints a result line.
pub fn print_result(line: &str) {
    if std::env::args().any(|a| a == "--bench") {
        println!("{line}");
    } else {
        println!("(test mode, one sample, not a measurement: `cargo bench` measures) {line}");
    }
}

/// The built-in tool components, loaded on `runtime` into a fresh sandbox.
#[allow(dead_code)] // Not every benchmark calls tools.
pub fn builtin_toolbox(runtime: &tokio::runtime::Runtime) -> longrun_host::Toolbox {
    let tools_dir = longrun_host::tooldir::builtin_tools_dir()
        .expect("the built-in tools: run scripts/build-tools first");
    let sandbox = Arc::new(
        longrun_host::Sandbox::new(longrun_host::SandboxConfig::default()).expect("sandbox"),
    );
    runtime
        .block_on(longrun_host::Toolbox::load_dir(sandbox, &tools_dir))
        .expect("the built-in tools load")
}

/// The default local model, loaded, with what its benchmarks need beside it.
#[allow(dead_code)] // Only the local model's benchmarks load it.
pub struct DefaultModel {
    /// The two-worker runtime the model was loaded on, for the benchmark
    /// to go on using.
    pub runtime: tokio::runtime::Runtime,
    pub model: longrun_model_local::LocalModel,
    /// The GGUF file (for a baseline that loads it too).
    pub path: std::path::PathBuf,
}

/// Load the default local model (SmolLM2-135M-Instruct Q4_1) from the cache;
/// mistral.rs never asks the hub. Call it before any other thread exists:
/// it sets `HF_HUB_OFFLINE`.
#[allow(dead_code)] // Only the local model's benchmarks load it.
pub fn default_model() -> DefaultModel {
    // SAFETY: the caller runs this before any thread that reads the
    // environment exists.
    unsafe { std::env::set_var("HF_HUB_OFFLINE", "1") };
    let path = longrun_host::fetch::cached(longrun_host::fetch::DEFAULT_MODEL)
        .expect("models dir")
        .expect("the default model is not cached: run `longrun model fetch`");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let model = runtime
        .block_on(longrun_model_local::LocalModel::load(
            "local:smollm2-135m",
            &path,
        ))
        .expect("load the default model");
    DefaultModel {
        runtime,
        model,
        path,
    }
}
