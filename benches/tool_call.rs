//! `tool_call`: one call of the built-in `echo` tool through the whole host
//! path (policy check, argument size and JSON Schema validation, a fresh
//! instance with its WASI context, the call, the output check), against
//! spawning an equivalent native process per call (`cat`, which echoes its
//! input), in the same run. Prints both medians and the ratio.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Samples;
use criterion::{Criterion, criterion_group, criterion_main};
use longrun_host::policy::Policy;
use longrun_host::sandbox::{CallRequest, Sandbox, SandboxConfig, Toolbox};

mod common;

const ARGS: &str = r#"{"text":"hello from the benchmark"}"#;

fn tool_call(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let tools_dir = longrun_host::tooldir::builtin_tools_dir()
        .expect("built-in tools not found: run scripts/build-tools first");
    let toolbox = runtime.block_on(async {
        let sandbox = Arc::new(Sandbox::new(SandboxConfig::default()).expect("engine"));
        Toolbox::load_dir(sandbox, &tools_dir).await.expect("tools")
    });
    let policy_path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/locked-down.toml");
    let policy = Policy::load(&policy_path).expect("policy");
    let request = CallRequest {
        tool: "echo",
        args: ARGS,
        approved: false,
    };
    let expected = runtime
        .block_on(toolbox.call(&policy, &request))
        .outcome
        .expect("echo works");

    let mut group = c.benchmark_group("tool_call");
    let wasm = Samples::default();
    group.bench_function("longrun_echo", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let report = runtime.block_on(toolbox.call(&policy, &request));
                assert_eq!(report.outcome.as_deref(), Ok(expected.as_str()));
            }
            let elapsed = start.elapsed();
            wasm.record(elapsed, iters);
            elapsed
        })
    });

    let native = Samples::default();
    group.bench_function("process_per_call", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let mut child = Command::new("cat")
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .expect("spawn cat");
                if let Some(mut stdin) = child.stdin.take() {
                    stdin.write_all(ARGS.as_bytes()).expect("write");
                }
                let output = child.wait_with_output().expect("wait");
                assert_eq!(output.stdout, ARGS.as_bytes());
            }
            let elapsed = start.elapsed();
            native.record(elapsed, iters);
            elapsed
        })
    });
    group.finish();

    if let (Some(w), Some(n)) = (wasm.median(), native.median()) {
        common::print_result(&format!(
            "tool_call: longrun echo median {:.1} µs, process per call median {:.1} µs, ratio {:.1}x faster",
            w * 1e6,
            n * 1e6,
            n / w
        ));
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50).measurement_time(Duration::from_secs(5));
    targets = tool_call
}
criterion_main!(benches);
