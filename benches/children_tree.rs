//! `children_tree`: a planner that hands its work to 8 workers at once,
//! against the same 8 worker sessions run one after another.
//!
//! Every model call takes 200 ms (the scripted model's `delay_ms`, standing
//! in for a remote API's latency). The planner's first answer starts the 8
//! workers and waits for them (`start_child` ×8 and `wait_children` in one
//! response); its second is the final answer. Each worker makes 7 calls of
//! the built-in `echo` tool (real wasmtime sandbox, real journal) and then
//! answers: 8 model calls, 1.6 s of latency. The tree's latency is the
//! planner's two calls and one worker's eight (2.0 s); the baseline's is
//! eight workers' (12.8 s), so the most the tree can gain is 6.4×.
//!
//! Prints both medians, the speed-up, and the cost report of the last tree
//! run (each node's own tokens and cost, each model's, the tree's total) at
//! a strong model's prices for the planner and a cheap one's for workers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Samples;
use criterion::{Criterion, criterion_group, criterion_main};
use longrun_host::agent::{AgentConfig, Session, SessionStatus};
use longrun_host::children::Workers;
use longrun_host::journal::{Journal, Status, Unpriced, tree};
use longrun_host::model::{Model, ScriptedModel};
use longrun_host::policy::RecordedPrices;
use longrun_host::{Policy, Toolbox};

mod common;

const WORKERS: usize = 8;

/// Each session's budgets; a worker's share of the planner's (what is left,
/// over `max_concurrent` + 1) covers its 8 steps and 7 calls.
const BUDGETS: &str = "max_steps = 100\nmax_tool_calls = 1000\nmax_cost_usd = 1.0\n";

/// Prices per million tokens (input, output): the planner on a strong
/// model, the workers on one a thirtieth of its price.
const PLANNER_PRICE: (f64, f64) = (3.0, 15.0);
const WORKER_PRICE: (f64, f64) = (0.1, 0.4);

fn prices() -> String {
    let table = |name: &str, (input, output): (f64, f64)| {
        format!("[prices.{name}]\ninput_per_million = {input:?}\noutput_per_million = {output:?}\n")
    };
    table("planner", PLANNER_PRICE) + &table("worker", WORKER_PRICE)
}

fn planner_script() -> String {
    let start = (0..WORKERS)
        .map(|i| {
            format!(
                r#"{{"name": "start_child", "arguments": {{"goal": "part {i}: echo seven lines", "model": "worker"}}}}"#
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "{{\"tool_calls\": [{start}, {{\"name\": \"wait_children\", \"arguments\": {{}}}}], \
           \"delay_ms\": 200, \"usage\": {{\"input_tokens\": 2000, \"output_tokens\": 400}}}}\n\
         {{\"content\": \"all parts done\", \"delay_ms\": 200, \
           \"usage\": {{\"input_tokens\": 4000, \"output_tokens\": 200}}}}\n"
    )
}

const WORKER_SCRIPT: &str = r#"
{"tool_calls": [{"name": "echo", "arguments": {"text": "line {step}"}}], "repeat": 7, "delay_ms": 200, "usage": {"input_tokens": 1500, "output_tokens": 60}}
{"content": "my part is done", "delay_ms": 200, "usage": {"input_tokens": 2500, "output_tokens": 40}}
"#;

struct Bench {
    runtime: tokio::runtime::Runtime,
    toolbox: Arc<Toolbox>,
    planner: ScriptedModel,
    worker: Arc<dyn Model>,
    tree_policy: Policy,
    worker_policy: Policy,
}

impl Bench {
    fn new() -> Bench {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let toolbox = common::builtin_toolbox(&runtime);
        let planner = ScriptedModel::parse(&planner_script(), "planner")
            .expect("the planner's script")
            .named("planner");
        let worker = ScriptedModel::parse(WORKER_SCRIPT, "worker")
            .expect("the worker's script")
            .named("worker");
        let policy = |extra: &str| {
            Policy::parse(
                &format!(
                    "[session]\n{BUDGETS}[tools]\nallow = [\"echo\"]\n{extra}{}",
                    prices()
                ),
                "children-tree",
                std::path::Path::new("/"),
            )
            .expect("the benchmark's policy")
        };
        Bench {
            runtime,
            toolbox: Arc::new(toolbox),
            planner,
            worker: Arc::new(worker),
            tree_policy: policy(&format!(
                "[children]\nmodels = [\"worker\"]\nmax_concurrent = {WORKERS}\nmax_children = {WORKERS}\n"
            )),
            worker_policy: policy(""),
        }
    }

    fn config() -> AgentConfig {
        AgentConfig::default()
    }

    /// The planner and its 8 workers, in a fresh journal; the time it took
    /// and the journal (for the cost report).
    fn tree(&self) -> (Duration, tempfile::TempDir, Arc<Journal>) {
        let dir = tempfile::tempdir().expect("temporary directory");
        let journal = Journal::open(&dir.path().join("journal")).expect("journal");
        let workers = Arc::new(Workers {
            journal: journal.clone(),
            toolbox: self.toolbox.clone(),
            models: BTreeMap::from([("worker".to_owned(), self.worker.clone())]),
            config: Self::config(),
        });
        let start = Instant::now();
        let status = self.runtime.block_on(async {
            let mut session = Session::start(
                &journal,
                &self.toolbox,
                &self.tree_policy,
                &self.planner,
                Self::config(),
                "split the work in eight parts and collect them",
            )
            .await?;
            session.with_workers(workers);
            session.run().await
        });
        let took = start.elapsed();
        match status {
            Ok(SessionStatus::Completed { .. }) => {}
            other => panic!("the planner did not complete: {other:?}"),
        }
        // Each worker did all its work: its budget share was enough.
        let nodes = tree::tree(&journal, 0, &mut Unpriced).expect("the tree reads");
        assert_eq!(nodes.len(), 1 + WORKERS, "the planner and its workers");
        for worker in &nodes[1..] {
            assert_eq!(
                worker.status,
                Status::Completed,
                "worker {}",
                worker.session
            );
            assert_eq!(worker.own.tool_calls, 7, "worker {}", worker.session);
        }
        (took, dir, journal)
    }

    /// The same 8 worker sessions, one after another, in a fresh journal.
    fn one_after_another(&self) -> Duration {
        let dir = tempfile::tempdir().expect("temporary directory");
        let journal = Journal::open(&dir.path().join("journal")).expect("journal");
        let start = Instant::now();
        for i in 0..WORKERS {
            let status = self.runtime.block_on(async {
                let mut session = Session::start(
                    &journal,
                    &self.toolbox,
                    &self.worker_policy,
                    self.worker.as_ref(),
                    Self::config(),
                    &format!("part {i}: echo seven lines"),
                )
                .await?;
                session.run().await
            });
            match status {
                Ok(SessionStatus::Completed { .. }) => {}
                other => panic!("worker {i} did not complete: {other:?}"),
            }
        }
        start.elapsed()
    }
}

/// Each node's own use, each model's, and the tree's total.
fn cost_report(journal: &Journal) -> String {
    let nodes = tree::tree(journal, 0, &mut RecordedPrices::default()).expect("the tree reads");
    let mut out = format!(
        "{:<10} {:<8} {:>10} {:>8} {:>6} {:>10}\n",
        "session", "model", "tokens in", "out", "calls", "cost $"
    );
    for node in &nodes {
        out += &format!(
            "{:<10} {:<8} {:>10} {:>8} {:>6} {:>10.4}\n",
            format!("{}{}", "  ".repeat(node.depth), node.session),
            node.model,
            node.own.input_tokens,
            node.own.output_tokens,
            node.own.tool_calls,
            node.own.cost_usd
        );
    }
    for (model, used) in tree::by_model(&nodes) {
        out += &format!(
            "{:<10} {:<8} {:>10} {:>8} {:>6} {:>10.4}\n",
            "(model)", model, used.input_tokens, used.output_tokens, used.tool_calls, used.cost_usd
        );
    }
    let total = &nodes[0].total;
    out += &format!(
        "{:<10} {:<8} {:>10} {:>8} {:>6} {:>10.4}\n",
        "tree", "", total.input_tokens, total.output_tokens, total.tool_calls, total.cost_usd
    );
    let all_on_planner = (total.input_tokens as f64 * PLANNER_PRICE.0
        + total.output_tokens as f64 * PLANNER_PRICE.1)
        / 1e6;
    out += &format!(
        "the same tokens all on the planner's model: ${all_on_planner:.4}; the tree cost {:.0}% less",
        100.0 * (1.0 - total.cost_usd / all_on_planner)
    );
    out
}

fn children_tree(c: &mut Criterion) {
    let bench = Bench::new();
    let tree_samples = Samples::default();
    let baseline_samples = Samples::default();
    let mut last = None;
    let mut group = c.benchmark_group("children_tree");
    group.bench_function("planner_with_8_workers", |b| {
        b.iter_custom(|iters| {
            tree_samples.measure(iters, || {
                let (took, dir, journal) = bench.tree();
                last = Some((dir, journal));
                (took, 1)
            })
        })
    });
    group.bench_function("8_sessions_one_after_another", |b| {
        b.iter_custom(|iters| baseline_samples.measure(iters, || (bench.one_after_another(), 1)))
    });
    group.finish();

    if let (Some(tree), Some(baseline)) = (tree_samples.median(), baseline_samples.median()) {
        common::print_result(&format!(
            "children_tree: planner with {WORKERS} workers {tree:.3} s, the same {WORKERS} sessions \
             one after another {baseline:.3} s: {:.2}x faster (at most 6.4x: the planner's two \
             200 ms calls are not parallel)",
            baseline / tree
        ));
    }
    if let Some((_dir, journal)) = &last {
        println!(
            "children_tree: the tree's cost report\n{}",
            cost_report(journal)
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(20));
    targets = children_tree
}
criterion_main!(benches);
