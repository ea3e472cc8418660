//! `journal_verify`: records verified per second on a 100,000-step journal
//! (hash chain, sequence and blob checks), written by a host and then
//! opened for audit, as an auditor would. Prints the median records/s.

use std::time::{Duration, Instant};

use common::Samples;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use longrun_host::journal::{Journal, JournalOptions, RecordKind};

mod common;

const STEPS: u64 = 100_000;

fn journal_verify(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = Journal::open(dir.path()).expect("journal");
    let mut writer = journal.create_session().expect("session");
    let session = writer.session();
    for i in 0..STEPS {
        let blobs = if i % 10 == 0 {
            vec![
                journal
                    .put_blob(format!("tool output {i} ").repeat(100).as_bytes())
                    .expect("blob"),
            ]
        } else {
            vec![]
        };
        let payload = format!(
            r#"{{"step":{i},"tool":"fs_read","args":{{"path":"/workspace/file-{i}.txt"}}}}"#
        );
        writer
            .append(RecordKind::ToolResult, payload.as_bytes(), &blobs)
            .expect("append");
    }
    journal.flush_now().expect("flush");
    drop(writer);
    drop(journal);
    let journal = Journal::open_with(dir.path(), JournalOptions::AUDIT).expect("journal");

    let mut group = c.benchmark_group("journal_verify");
    group.throughput(Throughput::Elements(STEPS));
    let samples = Samples::default();
    group.bench_function("100k_steps", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                assert_eq!(journal.verify(session), Ok(STEPS));
            }
            let elapsed = start.elapsed();
            samples.record(elapsed, iters);
            elapsed
        })
    });
    group.finish();
    if let Some(median) = samples.median() {
        common::print_result(&format!(
            "journal_verify: {STEPS} records in {:.1} ms (median), {:.0} records/s",
            median * 1e3,
            STEPS as f64 / median
        ));
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(5));
    targets = journal_verify
}
criterion_main!(benches);
