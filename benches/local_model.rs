//! `local_model`: the local backend (mistral.rs, through `LocalModel`) on the
//! default GGUF (SmolLM2-135M-Instruct Q4_1), against llama.cpp on the same
//! file with the same number of threads, in the same run.
//!
//! - `decode`: 64 tokens decoded greedily after a short chat prompt.
//! - `prompt`: a ~300-token chat prompt processed from an empty context (a
//!   new prefix each iteration, so no cache helps).
//! - `prefix`: a growing session of `STEPS` steps, each adding one assistant
//!   turn and one user turn (~56 tokens); the prompt time of the last step
//!   with prefix reuse (steps 1..N run in order, so the engine has the earlier
//!   context) against processing that step's whole context, and the prompt
//!   time of every step printed, with the growth from step 2 to the last
//!   (a step should cost its new tokens, not the context behind them).
//!
//! Decode times are each engine's own: mistral.rs's reported completion
//! time, and llama.cpp's calls timed in its driver. Prompt times are the wall
//! time of a request that decodes one token (mistral.rs reports no prompt
//! time for those), against llama.cpp's prompt call (`llama_cpp_driver.py`,
//! run with the Python of `LONGRUN_LLAMA_PYTHON`, else the bench virtual
//! environment that `scripts/bench-deps` makes). Prints tokens/s and ratios.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::Samples;
use criterion::{Criterion, criterion_group, criterion_main};
use longrun_model_local::LocalModel;
use longrun_model_local::mistralrs::{self, RequestBuilder, TextMessageRole};
use serde_json::{Value, json};

mod common;

/// Tokens decoded per `decode` iteration.
const DECODE_TOKENS: usize = 64;
/// Steps of the growing session in `prefix`.
const STEPS: usize = 50;

const DECODE_PROMPT: &str = "Count from 1 to 1000, separated by commas.";

/// SmolLM2's chat template (the one in the GGUF), for llama.cpp, which is
/// given text: the same conversation mistral.rs renders from messages.
fn chat(system: &str, turns: &[(&str, &str)]) -> String {
    let mut text = format!("<|im_start|>system\n{system}<|im_end|>\n");
    for (role, content) in turns {
        text.push_str(&format!("<|im_start|>{role}\n{content}<|im_end|>\n"));
    }
    text.push_str("<|im_start|>assistant\n");
    text
}

const SYSTEM: &str = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

/// A paragraph of ~300 tokens that starts with `nonce`, so that no earlier
/// request shares its prefix.
fn long_text(nonce: u64) -> String {
    let mut text = format!("Request {nonce}. ");
    for i in 0..12 {
        text.push_str(&format!(
            "Line {i}: the agent read the file, checked the policy, and wrote a short note. "
        ));
    }
    text
}

/// The user turn of step `step` of the growing session.
fn user_turn(step: usize) -> String {
    format!(
        "Step {step}: the tool returned the listing of directory number {step}, with three files and two folders in it."
    )
}

/// The assistant turn after step `step` (fixed, so every run is the same).
fn assistant_turn(step: usize) -> String {
    format!(r#"{{"tool": "fs_list", "arguments": {{"path": "/workspace/dir{step}"}}}}"#)
}

/// llama.cpp, in its driver process.
struct LlamaCpp {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
}

impl LlamaCpp {
    fn start(model: &std::path::Path, threads: usize) -> LlamaCpp {
        let python = std::env::var_os("LONGRUN_LLAMA_PYTHON")
            .map(std::path::PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|home| {
                    std::path::PathBuf::from(home)
                        .join(".cache/longrun/bench/llama-venv-portable/bin/python")
                })
            })
            .filter(|p| p.exists())
            .expect(
                "llama-cpp-python not found: run scripts/bench-deps (or set LONGRUN_LLAMA_PYTHON)",
            );
        let driver =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/llama_cpp_driver.py");
        let mut child = Command::new(python)
            .arg(driver)
            .arg(model)
            .arg(threads.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the llama.cpp driver");
        let input = child.stdin.take().expect("stdin");
        let mut output = BufReader::new(child.stdout.take().expect("stdout"));
        let mut ready = String::new();
        output.read_line(&mut ready).expect("driver ready");
        assert!(ready.contains("ready"), "llama.cpp driver: {ready}");
        LlamaCpp {
            child,
            input,
            output,
        }
    }

    /// (tokens, seconds) of one request.
    fn ask(&mut self, request: Value) -> (u64, f64) {
        writeln!(self.input, "{request}").expect("write to the driver");
        let mut line = String::new();
        self.output.read_line(&mut line).expect("driver answer");
        let answer: Value = serde_json::from_str(&line).expect("driver JSON");
        (
            answer["tokens"].as_u64().expect("tokens"),
            answer["seconds"].as_f64().expect("seconds"),
        )
    }
}

impl Drop for LlamaCpp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One mistral.rs request; returns its usage and its wall time in seconds.
/// (mistral.rs reports no prompt time for a request that decodes one token,
/// so prompt measurements use the wall time, which adds that one token.)
fn mistral(
    runtime: &tokio::runtime::Runtime,
    model: &LocalModel,
    request: RequestBuilder,
) -> (mistralrs::Usage, f64) {
    let start = std::time::Instant::now();
    let usage = runtime
        .block_on(model.engine().send_chat_request(request))
        .expect("mistral.rs answers")
        .usage;
    (usage, start.elapsed().as_secs_f64())
}

fn conversation(system: &str, steps: usize) -> RequestBuilder {
    let mut request = RequestBuilder::new().add_message(TextMessageRole::System, system);
    for step in 1..=steps {
        request = request.add_message(TextMessageRole::User, user_turn(step));
        if step < steps {
            request = request.add_message(TextMessageRole::Assistant, assistant_turn(step));
        }
    }
    request.set_deterministic_sampler().set_sampler_max_len(1)
}

fn local_model(c: &mut Criterion) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    // mistral.rs's CPU kernels run on rayon's global pool; llama.cpp gets the
    // same count. SAFETY: set before any thread that reads it exists.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
    let common::DefaultModel {
        runtime,
        model,
        path,
    } = common::default_model();
    let mut llama = LlamaCpp::start(&path, threads);
    let nonce = AtomicU64::new(0);
    let next = || nonce.fetch_add(1, Ordering::Relaxed);

    let mut group = c.benchmark_group("local_model");
    // Seconds per token of each measurement, for the ratios printed below.
    let (m_decode, l_decode) = (Samples::default(), Samples::default());
    group.bench_function("decode/mistral.rs", |b| {
        b.iter_custom(|iters| {
            m_decode.measure(iters, || {
                let (usage, _) = mistral(
                    &runtime,
                    &model,
                    RequestBuilder::new()
                        .add_message(TextMessageRole::User, DECODE_PROMPT)
                        .set_deterministic_sampler()
                        .set_sampler_max_len(DECODE_TOKENS),
                );
                // Per DECODE_TOKENS tokens, should the model stop early.
                let tokens = usage.completion_tokens.max(1) as f64;
                let seconds =
                    usage.total_completion_time_sec as f64 * DECODE_TOKENS as f64 / tokens;
                (Duration::from_secs_f64(seconds), DECODE_TOKENS as u64)
            })
        })
    });
    group.bench_function("decode/llama.cpp", |b| {
        b.iter_custom(|iters| {
            l_decode.measure(iters, || {
                let (tokens, seconds) = llama.ask(json!({
                    "op": "decode",
                    "text": chat(SYSTEM, &[("user", DECODE_PROMPT)]),
                    "n": DECODE_TOKENS,
                }));
                (Duration::from_secs_f64(seconds), tokens)
            })
        })
    });

    let (m_prompt, l_prompt) = (Samples::default(), Samples::default());
    group.bench_function("prompt/mistral.rs", |b| {
        b.iter_custom(|iters| {
            m_prompt.measure(iters, || {
                let (usage, seconds) = mistral(
                    &runtime,
                    &model,
                    RequestBuilder::new()
                        .add_message(TextMessageRole::User, long_text(next()))
                        .set_deterministic_sampler()
                        .set_sampler_max_len(1),
                );
                (
                    Duration::from_secs_f64(seconds),
                    usage.prompt_tokens.max(1) as u64,
                )
            })
        })
    });
    group.bench_function("prompt/llama.cpp", |b| {
        b.iter_custom(|iters| {
            l_prompt.measure(iters, || {
                let text = chat(SYSTEM, &[("user", &long_text(next()))]);
                let (tokens, seconds) = llama.ask(json!({"op": "prompt", "text": text}));
                (Duration::from_secs_f64(seconds), tokens)
            })
        })
    });
    group.finish();

    if let (Some(m), Some(l)) = (m_decode.median(), l_decode.median()) {
        println!(
            "local_model decode ({threads} threads): mistral.rs {:.1} tokens/s, llama.cpp {:.1} tokens/s, ratio {:.2}x",
            1.0 / m,
            1.0 / l,
            l / m
        );
    }
    if let (Some(m), Some(l)) = (m_prompt.median(), l_prompt.median()) {
        println!(
            "local_model prompt ({threads} threads): mistral.rs {:.1} tokens/s, llama.cpp {:.1} tokens/s, ratio {:.2}x",
            1.0 / m,
            1.0 / l,
            l / m
        );
    }

    let mut group = c.benchmark_group("local_model_prefix");
    let reused = Samples::default();
    let mut curve = Vec::new();
    group.bench_function(format!("step{STEPS}/with_prefix_reuse"), |b| {
        b.iter_custom(|iters| {
            reused.measure(iters, || {
                let system = format!("{SYSTEM}. Session {}.", next());
                curve.clear();
                for step in 1..=STEPS {
                    let (usage, seconds) = mistral(&runtime, &model, conversation(&system, step));
                    curve.push((usage.prompt_tokens, seconds));
                }
                let (_, last) = curve[STEPS - 1];
                (Duration::from_secs_f64(last), 1)
            })
        })
    });
    let whole = Samples::default();
    group.bench_function(format!("step{STEPS}/whole_context"), |b| {
        b.iter_custom(|iters| {
            whole.measure(iters, || {
                let system = format!("{SYSTEM}. Session {}.", next());
                let (_, seconds) = mistral(&runtime, &model, conversation(&system, STEPS));
                (Duration::from_secs_f64(seconds), 1)
            })
        })
    });
    group.finish();

    let shown: Vec<String> = curve
        .iter()
        .enumerate()
        .map(|(i, (tokens, seconds))| format!("{}:{tokens}t/{:.0}ms", i + 1, seconds * 1e3))
        .collect();
    println!(
        "local_model_prefix: prompt time per step of the last session (step:prompt tokens/ms): {}",
        shown.join(" ")
    );
    // Step 1 processes the system prompt too; steps 2.. add one turn each.
    if let (Some((_, second)), Some((tokens, last))) = (curve.get(1), curve.last()) {
        println!(
            "local_model_prefix: step 2 {:.1} ms, step {STEPS} {:.1} ms ({tokens} tokens of context), growth {:+.0}%",
            second * 1e3,
            last * 1e3,
            (last / second - 1.0) * 100.0
        );
    }
    if let (Some(r), Some(w)) = (reused.median(), whole.median()) {
        println!(
            "local_model_prefix: step {STEPS} prompt with prefix reuse {:.1} ms, whole context {:.1} ms, ratio {:.1}x faster",
            r * 1e3,
            w * 1e3,
            w / r
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(10));
    targets = local_model
}
criterion_main!(benches);
