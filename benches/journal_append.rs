//! `journal_append`: durable steps per second, for 1 and for 64 concurrent
//! sessions, with the journal's group commit against one commit per step on
//! each writer's own thread, paired sample by sample in the same run, on
//! each store: segment files (the default), sled, and PostgreSQL (a private
//! cluster on loopback, started by the benchmark). Prints steps/s for each,
//! the median of the paired ratios, one session's durable append latency,
//! and each store's 64-session rate against the segment store's.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Samples;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use longrun_host::journal::{Journal, JournalOptions, Location, RecordKind, SessionWriter};

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
    let segments = tempfile::tempdir().expect("tempdir");
    let sled = tempfile::tempdir().expect("tempdir");
    let cluster = longrun_test_postgres::Cluster::start().expect("a PostgreSQL cluster");
    let database = cluster.create_database("journal").expect("a database");
    let stores = [
        ("segments", Location::Segments(segments.path().into())),
        ("sled", Location::Sled(sled.path().into())),
        ("postgres", Location::Postgres(database)),
    ];
    let mut group = c.benchmark_group("journal_append");
    let mut results = Vec::new();
    for (store, location) in &stores {
        let journal = Journal::open_location(location, JournalOptions::HOST).expect("journal");
        for sessions in [1usize, 64] {
            let (grouped, per_step, ratio) =
                measure(&mut group, &runtime, &journal, store, sessions);
            results.push((*store, sessions, grouped, per_step, ratio));
        }
    }
    group.finish();
    for (store, sessions, grouped, per_step, ratio) in &results {
        common::print_result(&format!(
            "journal_append: {store}, {sessions} session(s): group commit {grouped:.0} durable steps/s, one flush per step {per_step:.0} steps/s (medians); median of paired ratios {ratio:.2}x"
        ));
        if *sessions == 1 && *grouped > 0.0 {
            common::print_result(&format!(
                "journal_append: {store}: one session's durable append latency {:.0} µs (median)",
                1e6 / grouped
            ));
        }
    }
    let at_64 = |name: &str| {
        results
            .iter()
            .find(|(store, sessions, ..)| *store == name && *sessions == 64)
            .map_or(0.0, |r| r.2)
    };
    for store in ["sled", "postgres"] {
        common::print_result(&format!(
            "journal_append: 64 sessions on {store}: {:.0} durable steps/s, {:.2}x the segment store's {:.0}",
            at_64(store),
            at_64(store) / at_64("segments").max(1e-9),
            at_64("segments")
        ));
    }
}

/// One store, `sessions` writers: the group commit and the one-flush-per-step
/// baseline, paired. Returns (grouped steps/s, baseline steps/s, median of
/// the paired ratios).
fn measure(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    runtime: &tokio::runtime::Runtime,
    journal: &Arc<Journal>,
    store: &str,
    sessions: usize,
) -> (f64, f64, f64) {
    group.throughput(Throughput::Elements(sessions as u64));
    // Each sample runs the group commit and then the baseline for the
    // same number of steps, back to back: the disk's speed drifts by
    // more than the difference being measured, and a pair sees the same
    // disk. Criterion's own figures are the group commit's.
    let ratios = Samples::default();
    let (grouped_time, baseline_time) = (Samples::default(), Samples::default());
    let ws = Mutex::new((writers(journal, sessions), writers(journal, sessions)));
    group.bench_function(format!("{store}/group_commit/{sessions}_sessions"), |b| {
        b.iter_custom(|iters| {
            let mut guard = ws.lock().expect("writers");
            let (for_group, for_baseline) = &mut *guard;
            let g = grouped(runtime, for_group, iters);
            let f = flushed_per_step(journal, for_baseline, iters);
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
    (
        rate(&grouped_time),
        rate(&baseline_time),
        ratios.median().unwrap_or(0.0),
    )
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(4));
    targets = journal_append
}
criterion_main!(benches);
