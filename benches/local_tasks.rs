//! `local_tasks`: how often the default model (SmolLM2-135M-Instruct, Q4_1,
//! on the CPU) reaches the goal of a small suite of agent tasks through the
//! whole loop (sandboxed built-in tools, journal, policy), under the first
//! protocol (`Protocol::Plain`, the baseline) and the default one
//! (`Protocol::Guided`), in the same run.
//!
//! The tasks — list a folder, read a file, search the files, write a note,
//! answer without tools — each start from a fresh workspace, offer the same
//! four file tools (`fs_list`, `fs_read`, `fs_search`, `fs_write`, on a
//! read-write mount), and are checked on what matters: the answer holds the
//! fact asked for, or the note is on disk. Decoding is greedy, so a task's
//! outcome repeats from run to run; criterion times a whole suite run, and
//! the success rate of every run is printed beside the baseline's, with the
//! tasks each protocol failed.

use std::time::{Duration, Instant};

use common::print_result;
use criterion::{Criterion, criterion_group, criterion_main};
use longrun_host::agent::{AgentConfig, Session, SessionStatus};
use longrun_host::journal::{Journal, RecordKind};
use longrun_host::model::ModelResponse;
use longrun_host::{Policy, Toolbox};
use longrun_model_local::{LocalModel, Protocol};

mod common;

/// One task of the suite.
struct Task {
    name: &'static str,
    goal: &'static str,
    /// Whether the session reached the goal, from its answer and the
    /// workspace it left.
    reached: fn(answer: &str, workspace: &std::path::Path) -> bool,
}

const FILES: [(&str, &str); 3] = [
    ("todo.txt", "Buy milk and call the plumber.\n"),
    (
        "report.txt",
        "Quarterly report. The invoice number is 4711.\n",
    ),
    (
        "readme.md",
        "Project Falcon sorts holiday photos by place.\n",
    ),
];

fn has(answer: &str, word: &str) -> bool {
    answer.to_lowercase().contains(&word.to_lowercase())
}

const TASKS: [Task; 5] = [
    Task {
        name: "list",
        goal: "List the files in /workspace and answer with their names.",
        reached: |answer, _| FILES.iter().all(|(name, _)| has(answer, name)),
    },
    Task {
        name: "read",
        goal: "Read /workspace/todo.txt and answer with what it says.",
        reached: |answer, _| has(answer, "plumber"),
    },
    Task {
        name: "search",
        goal: "Which file in /workspace mentions an invoice? Search the files for the word invoice and answer with the file's name.",
        reached: |answer, _| has(answer, "report.txt"),
    },
    Task {
        name: "write a note",
        goal: "Write the text 'Meeting at noon.' to the file /workspace/note.txt, then answer done.",
        reached: |_, workspace| {
            std::fs::read_to_string(workspace.join("note.txt"))
                .is_ok_and(|text| has(&text, "meeting at noon"))
        },
    },
    Task {
        name: "answer",
        goal: "What is the capital of France? Answer with the name of the city.",
        reached: |answer, _| has(answer, "paris"),
    },
];

/// What one suite run found.
#[derive(Default)]
struct Outcome {
    reached: usize,
    tried: usize,
    failed: Vec<&'static str>,
}

struct Bench {
    runtime: tokio::runtime::Runtime,
    toolbox: Toolbox,
}

impl Bench {
    /// Run `task` once on `model`; whether it reached its goal.
    fn run(&self, model: &LocalModel, task: &Task) -> bool {
        let dir = tempfile::tempdir().expect("temporary directory");
        let workspace = dir.path().join("ws");
        std::fs::create_dir(&workspace).expect("workspace");
        for (name, text) in FILES {
            std::fs::write(workspace.join(name), text).expect("workspace file");
        }
        let policy = Policy::parse(
            &format!(
                "[session]\nmax_steps = 6\n[tools]\nallow = [\"fs_list\", \"fs_read\", \"fs_search\", \"fs_write\"]\n\
                 [[filesystem]]\nhost = \"{}\"\nguest = \"/workspace\"\naccess = \"read-write\"\n",
                workspace.display()
            ),
            "local-tasks",
            dir.path(),
        )
        .expect("the suite's policy");
        let journal = Journal::open(&dir.path().join("journal")).expect("journal");
        let config = AgentConfig {
            max_output_tokens: 256,
            context_tokens: 6000,
            ..AgentConfig::default()
        };
        let status = self.runtime.block_on(async {
            let mut session =
                Session::start(&journal, &self.toolbox, &policy, model, config, task.goal).await?;
            session.run().await
        });
        let answer = match &status {
            Ok(SessionStatus::Completed { answer }) => answer.as_str(),
            // A stuck or failed session did not reach its goal (a note that
            // was written still counts).
            _ => "",
        };
        let reached = (task.reached)(answer, &workspace);
        if !reached {
            eprintln!(
                "local_tasks: {:?} missed {:?} ({status:?}); the model wrote: {}",
                model.protocol(),
                task.name,
                written(&journal).join(" | ")
            );
        }
        reached
    }

    fn suite(&self, model: &LocalModel, outcome: &mut Outcome) -> Duration {
        let start = Instant::now();
        for task in &TASKS {
            outcome.tried += 1;
            if self.run(model, task) {
                outcome.reached += 1;
            } else if !outcome.failed.contains(&task.name) {
                outcome.failed.push(task.name);
            }
        }
        start.elapsed()
    }
}

/// What the model wrote in each step of the journal's one session.
fn written(journal: &Journal) -> Vec<String> {
    journal
        .records(0)
        .filter_map(Result::ok)
        .filter(|r| r.kind == RecordKind::ModelResponse)
        .filter_map(|r| serde_json::from_slice::<ModelResponse>(&r.payload).ok())
        .map(|r| match r.message.tool_calls.first() {
            Some(call) => format!("{}({})", call.name, call.arguments),
            None => format!("answer {:?}", r.message.content.unwrap_or_default()),
        })
        .collect()
}

fn local_tasks(c: &mut Criterion) {
    let common::DefaultModel { runtime, model, .. } = common::default_model();
    let toolbox = common::builtin_toolbox(&runtime);
    let bench = Bench { runtime, toolbox };

    let mut model = Some(model);
    let mut outcomes = Vec::new();
    let mut group = c.benchmark_group("local_tasks");
    for (label, protocol) in [("plain", Protocol::Plain), ("guided", Protocol::Guided)] {
        let current = model.take().expect("the model").with_protocol(protocol);
        let mut outcome = Outcome::default();
        group.bench_function(format!("suite/{label}"), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| bench.suite(&current, &mut outcome))
                    .sum()
            })
        });
        outcomes.push((label, outcome));
        model = Some(current);
    }
    group.finish();

    let rate = |o: &Outcome| o.reached as f64 / o.tried.max(1) as f64;
    let shown: Vec<String> = outcomes
        .iter()
        .map(|(label, o)| {
            format!(
                "{label} {}/{} ({:.0}%, failed: {})",
                o.reached,
                o.tried,
                100.0 * rate(o),
                if o.failed.is_empty() {
                    "none".to_owned()
                } else {
                    o.failed.join(", ")
                }
            )
        })
        .collect();
    if let [before, after] = shown.as_slice() {
        let [(_, b), (_, a)] = outcomes.as_slice() else {
            return;
        };
        print_result(&format!(
            "local_tasks: goals reached on the default model over every run of the {} tasks: before {before}; after {after}; ratio {:.2}x",
            TASKS.len(),
            rate(a) / rate(b).max(f64::EPSILON)
        ));
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(30));
    targets = local_tasks
}
criterion_main!(benches);
