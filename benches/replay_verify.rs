//! `replay_verify`: `longrun replay verify` of a 100,000-step session (a
//! step: the model's request and response, one tool call's intent and
//! result; 400,001 records), as an auditor runs it: hash chain, blobs, and
//! every call re-checked against the recorded policy, schema and budgets.
//!
//! Baseline, in the same run: the hash chain and blobs alone
//! (`Journal::verify`), so the ratio is what the policy re-check costs. Also
//! printed: the whole command's path, the journal opened in place (read
//! only, no copy) and then verified, on the segment store and on
//! PostgreSQL (a private cluster on loopback, started by the benchmark).
//! Target: under 1 second.

use std::time::{Duration, Instant};

use common::Samples;
use criterion::{Criterion, criterion_group, criterion_main};
use longrun_host::agent::{RecordedTool, SessionCreated, ToolIntent, ToolResult};
use longrun_host::journal::{Journal, JournalOptions, Location, RecordKind, SessionId};
use longrun_host::model::{Message, ModelResponse, Role, ToolCall, Usage};
use longrun_replay::audit;

mod common;

const STEPS: u64 = 100_000;

/// A payload, serialised as the agent does.
macro_rules! json {
    ($value:expr) => {
        serde_json::to_vec($value).expect("payload")
    };
}
const RECORDS: u64 = 1 + 4 * STEPS;

const POLICY: &str = r#"
[session]
max_steps = 1_000_000
max_tool_calls = 1_000_000
max_input_tokens = 100_000_000_000
max_output_tokens = 100_000_000_000
max_cost_usd = 1_000_000.0
max_wall_time = "72h"

[[filesystem]]
host = "workspace"
guest = "/workspace"
access = "read-write"

[tools]
allow = ["fs_*"]

[prices.bench-model]
input_per_million = 1.0
output_per_million = 2.0
"#;

/// A journal with one session of `STEPS` steps, as the agent writes them.
fn write_session(location: &Location) -> SessionId {
    let journal = Journal::open_location(location, JournalOptions::HOST).expect("journal");
    let mut writer = journal.create_session().expect("session");
    let policy =
        longrun_host::Policy::parse(POLICY, "bench", std::path::Path::new("/")).expect("policy");
    let mut created = SessionCreated {
        goal: "Read every file".into(),
        policy_text: policy.text.clone(),
        policy_hash: longrun_host::agent::policy_hash(&policy),
        model: "bench-model".into(),
        labels: Default::default(),
        tools: Vec::new(),
        snapshot: None,
        parent: None,
        spawned_by: None,
        policy_base: None,
        driver: Default::default(),
        trajectories: None,
    };
    created.tools.push(RecordedTool {
        name: "fs_read".into(),
        parameters: serde_json::json!({
            "type": "object",
            "properties": {"path": {"type": "string"}, "offset": {"type": "integer", "minimum": 0}},
            "required": ["path"],
            "additionalProperties": false
        }),
        idempotent: true,
        effects: Some(longrun_host::sandbox::Effects::Reads),
        component: "longrun_tool_fs.wasm".into(),
        component_hash: "0".repeat(64),
    });
    writer
        .append(RecordKind::SessionCreated, &json!(&created), &[])
        .expect("append");
    for i in 0..STEPS {
        let call = ToolCall {
            id: format!("call_{i}_0"),
            name: "fs_read".into(),
            arguments: format!(r#"{{"path":"/workspace/file-{i}.txt"}}"#),
        };
        let request = vec![Message::tool_result(
            format!("call_{}_0", i.saturating_sub(1)),
            "ok",
        )];
        writer
            .append(RecordKind::ModelRequest, &json!(&request), &[])
            .expect("append");
        let response = ModelResponse {
            message: Message {
                role: Role::Assistant,
                content: None,
                reasoning_content: Some(format!("Next, file {i}.")),
                tool_calls: vec![call.clone()],
                tool_call_id: None,
            },
            usage: Usage {
                input_tokens: 900,
                output_tokens: 30,
                cached_input_tokens: 0,
                reasoning_tokens: 0,
            },
        };
        writer
            .append(RecordKind::ModelResponse, &json!(&response), &[])
            .expect("append");
        let intent = ToolIntent {
            call_id: call.id.clone(),
            tool: call.name.clone(),
            arguments: call.arguments.clone(),
            idempotent: true,
        };
        writer
            .append(RecordKind::ToolIntent, &json!(&intent), &[])
            .expect("append");
        let long = i % 10 == 0;
        let output = format!(r#"{{"content":"file {i} "}}"#).repeat(if long { 100 } else { 1 });
        let (result, blobs) = longrun_host::agent::tool_result(
            &journal,
            &call.id,
            &Ok(output),
            Duration::from_millis(3),
        )
        .expect("result");
        let result: ToolResult = result;
        writer
            .append(RecordKind::ToolResult, &json!(&result), &blobs)
            .expect("append");
    }
    let session = writer.session();
    journal.flush_now().expect("flush");
    session
}

fn replay_verify(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal_dir = dir.path().join("journal");
    let on_disk = Location::Dir(journal_dir.clone());
    let session = write_session(&on_disk);
    let cluster = longrun_test_postgres::Cluster::start().expect("a PostgreSQL cluster");
    let in_postgres = Location::Postgres(cluster.create_database("journal").expect("a database"));
    let pg_session = write_session(&in_postgres);
    let journal = Journal::open_with(&journal_dir, JournalOptions::AUDIT).expect("journal");

    let mut group = c.benchmark_group("replay_verify");
    let (audit_time, chain_time, command_time, pg_time) = (
        Samples::default(),
        Samples::default(),
        Samples::default(),
        Samples::default(),
    );
    group.bench_function("100k_steps", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let verified = audit::verify(&journal, session, None).expect("verifies");
                assert_eq!(verified.records, RECORDS);
            }
            let elapsed = start.elapsed();
            audit_time.record(elapsed, iters);
            elapsed
        })
    });
    group.bench_function("baseline_chain_only", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                assert_eq!(journal.verify(session), Ok(RECORDS));
            }
            let elapsed = start.elapsed();
            chain_time.record(elapsed, iters);
            elapsed
        })
    });
    drop(journal);
    group.bench_function("command_open_and_verify", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let copy = longrun_replay::copy::open_read_only(&on_disk).expect("open");
                audit::verify(&copy.journal, session, None).expect("verifies");
            }
            let elapsed = start.elapsed();
            command_time.record(elapsed, iters);
            elapsed
        })
    });
    group.bench_function("postgres_command_open_and_verify", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let copy = longrun_replay::copy::open_read_only(&in_postgres).expect("open");
                let verified = audit::verify(&copy.journal, pg_session, None).expect("verifies");
                assert_eq!(verified.records, RECORDS);
            }
            let elapsed = start.elapsed();
            pg_time.record(elapsed, iters);
            elapsed
        })
    });
    group.finish();
    if let (Some(audit), Some(chain), Some(command)) = (
        audit_time.median(),
        chain_time.median(),
        command_time.median(),
    ) {
        common::print_result(&format!(
            "replay_verify: {STEPS} steps ({RECORDS} records) verified with the policy re-check in {:.1} ms (median); \
             baseline, hash chain and blobs only: {:.1} ms; ratio {:.2}x; the whole command (open in place, verify): {:.1} ms (target: under 1,000 ms)",
            audit * 1e3,
            chain * 1e3,
            audit / chain,
            command * 1e3
        ));
    }
    if let (Some(command), Some(postgres)) = (command_time.median(), pg_time.median()) {
        common::print_result(&format!(
            "replay_verify: the whole command on PostgreSQL (open read-only, verify {RECORDS} records): {:.1} ms (median), {:.2}x the segment store's {:.1} ms",
            postgres * 1e3,
            postgres / command,
            command * 1e3
        ));
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(10));
    targets = replay_verify
}
criterion_main!(benches);
