//! `tool_call`: one call of the built-in `echo` tool through the whole host
//! path (policy check, argument size and JSON Schema validation, a fresh
//! instance with its WASI context, the call, the output check), against two
//! baselines in the same run:
//!
//! - bare wasmtime: the same component, pre-instantiated once, with the
//!   pooling allocator; each call is a new store with an empty WASI context,
//!   a fresh instance and the call — the least any host can do per call
//!   with a fresh instance;
//! - spawning an equivalent native process per call (`cat`, which echoes its
//!   input).
//!
//! Prints the three medians and longrun's ratio to each.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Samples;
use criterion::{Criterion, criterion_group, criterion_main};
use longrun_host::policy::Policy;
use longrun_host::sandbox::CallRequest;

mod common;

/// The bare-wasmtime baseline.
mod bare {
    use wasmtime::component::{Component, Linker, ResourceTable};
    use wasmtime::{Config, Engine, PoolingAllocationConfig, Store};
    use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

    wasmtime::component::bindgen!({
        path: "wit",
        world: "tool",
        exports: { default: async },
    });

    pub struct Ctx {
        wasi: WasiCtx,
        table: ResourceTable,
    }

    impl WasiView for Ctx {
        fn ctx(&mut self) -> WasiCtxView<'_> {
            WasiCtxView {
                ctx: &mut self.wasi,
                table: &mut self.table,
            }
        }
    }

    /// One component, ready to be instantiated per call.
    pub struct Bare {
        engine: Engine,
        pre: ToolPre<Ctx>,
    }

    impl Bare {
        pub fn new(component: &std::path::Path) -> Bare {
            let mut pool = PoolingAllocationConfig::default();
            pool.total_component_instances(4)
                .total_core_instances(64)
                .total_memories(8)
                .total_tables(32)
                .total_stacks(4);
            let mut config = Config::new();
            config.allocation_strategy(pool);
            let engine = Engine::new(&config).expect("engine");
            let mut linker = Linker::new(&engine);
            wasmtime_wasi::p2::add_to_linker_async(&mut linker).expect("WASI");
            let component = Component::from_file(&engine, component).expect("component");
            let pre = ToolPre::new(linker.instantiate_pre(&component).expect("pre"))
                .expect("the tool world");
            Bare { engine, pre }
        }

        /// A fresh store and instance, and one call of `tool`.
        pub async fn call(&self, tool: &str, args: &str) -> String {
            let ctx = Ctx {
                wasi: WasiCtx::builder().build(),
                table: ResourceTable::new(),
            };
            let mut store = Store::new(&self.engine, ctx);
            let instance = self
                .pre
                .instantiate_async(&mut store)
                .await
                .expect("instance");
            match instance.call_call(&mut store, tool, args).await {
                Ok(Ok(output)) => output,
                other => panic!("the bare call failed: {other:?}"),
            }
        }
    }
}

const ARGS: &str = r#"{"text":"hello from the benchmark"}"#;

fn tool_call(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let toolbox = common::builtin_toolbox(&runtime);
    let tools_dir = longrun_host::tooldir::builtin_tools_dir().expect("built-in tools");
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

    let component = tools_dir.join("longrun_tool_example.wasm");
    let bare = bare::Bare::new(&component);
    assert_eq!(
        runtime.block_on(bare.call("echo", ARGS)),
        expected,
        "both paths run the same tool"
    );
    let bare_samples = Samples::default();
    group.bench_function("bare_wasmtime_echo", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let output = runtime.block_on(bare.call("echo", ARGS));
                assert_eq!(output, expected);
            }
            let elapsed = start.elapsed();
            bare_samples.record(elapsed, iters);
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

    if let (Some(w), Some(b), Some(n)) = (wasm.median(), bare_samples.median(), native.median()) {
        common::print_result(&format!(
            "tool_call: longrun echo median {:.1} µs, bare wasmtime median {:.1} µs (longrun {:.2}x of it), process per call median {:.1} µs (longrun {:.1}x faster)",
            w * 1e6,
            b * 1e6,
            w / b,
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
