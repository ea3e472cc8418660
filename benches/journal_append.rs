//! `journal_append`: durable steps per second, for 1 and for 64 concurrent
//! sessions, with the journal's group commit against one commit per step on
//! each writer's own thread, paired sample by sample in the same run. Prints
//! steps/s for each and the median of the paired ratios.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Samples;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use longrun_host::journal::{Journal, RecordKind, SessionWriter};

mod common;

const PAYLOAD: &[u8] = br#"{"tool":"fs_write","args":{"path":"/workspace/notes.md","content":"a step of about two hundred bytes, the size of a typical tool intent record in a long session ........"}}"#;

fn writers(journal: &Arc<Journal>, n: usize) -> Vec<SessionWriter> {
    (0..n)
        .map(|_| journal.create_session().expect("session"))
        .collect()
}

/// `iters` durable steps of every writer through the group commit.
fn grouped(runtime: &tokio::runtime::Runtime, ws: &mut Vec<SessionWriter>, iters: u64) -> Duration {
    let start = Instant::now();
    runtime.block_on(async {
        let tasks: Vec<_> = ws
            .drain(..)
            .map(|mut w| {
                tokio::spawn(async move {
                    for _ in 0..iters {
                        w.append_durable(RecordKind::ToolIntent, PAYLOAD, &[])
                            .await
                            .expect("append");
                    }
                    w
                })
            })
            .collect();
        for t in tasks {
            ws.push(t.await.expect("task"));
        }
    });
    start.elapsed()
}

/// `iters` steps of every writer, each appended and then flushed on the
/// writer's own thread: the baseline.
fn flushed_per_step(journal: &Arc<Journal>, ws: &mut [SessionWriter], iters: u64) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for w in ws.iter_mut() {
            s.spawn(move || {
                for _ in 0..iters {
                    w.append(RecordKind::ToolIntent, PAYLOAD, &[])
                        .expect("append");
                    journal.flush_now().expect("flush");
                }
            });
        }
    });
    start.elapsed()
}

fn journal_append(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = Journal::open(dir.path()).expect("journal");
    let mut group = c.benchmark_group("journal_append");
    let mut results = Vec::new();

    for sessions in [1usize, 64] {
        group.throughput(Throughput::Elements(sessions as u64));
        // Each sample runs the group commit and then the baseline for the
        // same number of steps, back to back: the disk's speed drifts by
        // more than the difference being measured, and a pair sees the same
        // disk. Criterion's own figures are the group commit's.
        let ratios = Samples::default();
        let (grouped_time, baseline_time) = (Samples::default(), Samples::default());
        let ws = Mutex::new((writers(&journal, sessions), writers(&journal, sessions)));
        group.bench_function(format!("group_commit/{sessions}_sessions"), |b| {
            b.iter_custom(|iters| {
                let mut guard = ws.lock().expect("writers");
                let (for_group, for_baseline) = &mut *guard;
                let g = grouped(&runtime, for_group, iters);
                let f = flushed_per_step(&journal, for_baseline, iters);
                grouped_time.record(g, iters);
                baseline_time.record(f, iters);
                // Stored as a "time" so that the median helper serves: the
                // group commit's speed over the baseline's.
                ratios.record(
                    Duration::from_secs_f64(f.as_secs_f64() / g.as_secs_f64().max(1e-9)),
                    1,
                );
                g
            })
        });
        // Each iteration is one durable step of every session.
        let rate = |s: &Samples| s.median().map(|secs| sessions as f64 / secs).unwrap_or(0.0);
        results.push((
            sessions,
            rate(&grouped_time),
            rate(&baseline_time),
            ratios.median().unwrap_or(0.0),
        ));
    }
    group.finish();
    for (sessions, grouped, per_step, ratio) in results {
        common::print_result(&format!(
            "journal_append: {sessions} session(s): group commit {grouped:.0} durable steps/s, one flush per step {per_step:.0} steps/s (medians); median of paired ratios {ratio:.2}x"
        ));
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(4));
    targets = journal_append
}
criterion_main!(benches);
