//! `journal_append`: durable steps per second, for 1 and for 64 concurrent
//! sessions, with the journal's group commit against one sled flush per
//! step, in the same run. Prints steps/s for each and the ratios.

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

fn journal_append(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = Journal::open(dir.path()).expect("journal");
    let mut group = c.benchmark_group("journal_append");
    let mut rates = Vec::new();

    for sessions in [1usize, 64] {
        group.throughput(Throughput::Elements(sessions as u64));

        let grouped = Samples::default();
        let ws = Arc::new(tokio::sync::Mutex::new(writers(&journal, sessions)));
        group.bench_function(format!("group_commit/{sessions}_sessions"), |b| {
            b.iter_custom(|iters| {
                let ws = ws.clone();
                let start = Instant::now();
                runtime.block_on(async move {
                    let mut ws = ws.lock().await;
                    let taken: Vec<SessionWriter> = ws.drain(..).collect();
                    let tasks: Vec<_> = taken
                        .into_iter()
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
                let elapsed = start.elapsed();
                grouped.record(elapsed, iters);
                elapsed
            })
        });

        let per_step = Samples::default();
        let ws = Arc::new(Mutex::new(writers(&journal, sessions)));
        group.bench_function(format!("flush_per_step/{sessions}_sessions"), |b| {
            b.iter_custom(|iters| {
                let mut guard = ws.lock().expect("writers");
                let start = Instant::now();
                std::thread::scope(|s| {
                    for w in guard.iter_mut() {
                        let journal = &journal;
                        s.spawn(move || {
                            for _ in 0..iters {
                                w.append(RecordKind::ToolIntent, PAYLOAD, &[])
                                    .expect("append");
                                journal.flush_now().expect("flush");
                            }
                        });
                    }
                });
                let elapsed = start.elapsed();
                per_step.record(elapsed, iters);
                elapsed
            })
        });
        // Each iteration is one durable step of every session.
        let rate = |s: &Samples| s.median().map(|secs| sessions as f64 / secs).unwrap_or(0.0);
        rates.push((sessions, rate(&grouped), rate(&per_step)));
    }
    group.finish();
    for (sessions, grouped, per_step) in rates {
        if grouped > 0.0 && per_step > 0.0 {
            println!(
                "journal_append: {sessions} session(s): group commit {grouped:.0} durable steps/s, one flush per step {per_step:.0} steps/s, ratio {:.2}x",
                grouped / per_step
            );
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(4));
    targets = journal_append
}
criterion_main!(benches);
