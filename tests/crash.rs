//! Crash-resume: the `longrun` binary runs a scripted 200-step session that
//! writes files through a non-idempotent tool; the test kills it with
//! SIGKILL at 50 random points (a new process each time), lets it finish,
//! and checks that the session completed, every step is in the journal
//! once, the hash chain verifies, and no non-idempotent call ran twice.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use longrun_host::journal::{Journal, RecordKind};
use serde_json::Value;

mod common;
use common::Rng;

const STEPS: usize = 200;
const KILLS: usize = 50;

#[test]
fn a_session_killed_at_50_random_points_completes_with_every_step_once() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[tools]\nallow = [\"fs_write\"]\n\n[[filesystem]]\nhost = \"ws\"\nguest = \"/workspace\"\naccess = \"read-write\"\n",
    )
    .unwrap();
    let script = dir.path().join("script.jsonl");
    let mut lines: Vec<String> = (0..STEPS)
        .map(|i| {
            format!(
                r#"{{"tool_calls": [{{"name": "fs_write", "arguments": {{"path": "/workspace/step-{i}.txt", "content": "x", "append": true}}}}]}}"#
            )
        })
        .collect();
    lines.push(r#"{"content": "all steps written"}"#.to_owned());
    std::fs::write(&script, lines.join("\n")).unwrap();
    let journal_dir = dir.path().join("journal");

    let mut rng = Rng::from_env("LONGRUN_CRASH_SEED");

    // `run` the first time, `resume` once the journal holds the session (a
    // kill during start-up may come before it does).
    let longrun = |stderr: Stdio| {
        let started = Journal::open_read_only(&journal_dir, Default::default())
            .is_ok_and(|journal| !journal.sessions().unwrap_or_default().is_empty());
        let args: &[&str] = if started {
            &["resume", "--policy"]
        } else {
            &["run", "write the steps", "--policy"]
        };
        Command::new(env!("CARGO_BIN_EXE_longrun"))
            .args(args)
            .arg(&policy)
            .arg("--model")
            .arg(format!("scripted:{}", script.display()))
            .arg("--journal")
            .arg(&journal_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap()
    };

    let ended = || {
        let journal = Journal::open(&journal_dir).unwrap();
        let sessions = journal.sessions().unwrap();
        sessions.iter().any(|s| {
            journal
                .records(*s)
                .last()
                .and_then(Result::ok)
                .map(|r| r.kind)
                == Some(RecordKind::SessionEnded)
        })
    };
    for kill in 0..KILLS {
        let mut child = longrun(Stdio::piped());
        let stderr = child.stderr.take().unwrap();
        // Let it take 0 to 4 steps, then kill it somewhere inside the next.
        let steps_before_kill = rng.next() % 5;
        let mut lines = BufReader::new(stderr).lines();
        let mut seen = 0;
        while seen < steps_before_kill {
            match lines.next() {
                Some(Ok(line)) if line.starts_with("step ") => seen += 1,
                Some(Ok(_)) => {}
                _ => break,
            }
        }
        std::thread::sleep(Duration::from_micros(rng.next() % 3000));
        child.kill().unwrap(); // SIGKILL; a no-op if it has already exited
        child.wait().unwrap();
        assert!(
            !ended(),
            "the session finished after only {} kills; the test needs {KILLS}",
            kill + 1
        );
    }

    let mut child = longrun(Stdio::null());
    let status = child.wait().unwrap();
    assert!(status.success(), "the final run failed: {status}");

    let journal = Journal::open(&journal_dir).unwrap();
    let sessions = journal.sessions().unwrap();
    let summary: Vec<String> = sessions
        .iter()
        .map(|s| {
            let kinds: Vec<RecordKind> = journal.records(*s).map(|r| r.unwrap().kind).collect();
            format!(
                "session {s}: {} records, first {:?}, last {:?}",
                kinds.len(),
                kinds.first(),
                kinds.last()
            )
        })
        .collect();
    assert_eq!(
        sessions.len(),
        1,
        "one session, resumed each time: {summary:?}"
    );
    let session = sessions[0];
    let records: Vec<_> = journal.records(session).map(Result::unwrap).collect();
    assert_eq!(journal.verify(session), Ok(records.len() as u64));
    assert_eq!(records.last().unwrap().kind, RecordKind::SessionEnded);

    // Every step once: one model response per turn, each call answered once.
    let payload =
        |r: &longrun_host::journal::Record| serde_json::from_slice::<Value>(&r.payload).unwrap();
    let responses: Vec<Value> = records
        .iter()
        .filter(|r| r.kind == RecordKind::ModelResponse)
        .map(payload)
        .collect();
    assert_eq!(responses.len(), STEPS + 1);
    let mut intents: HashMap<String, usize> = HashMap::new();
    let mut results: HashMap<String, Value> = HashMap::new();
    for record in &records {
        let p = payload(record);
        match record.kind {
            RecordKind::ToolIntent => {
                *intents
                    .entry(p["call_id"].as_str().unwrap().to_owned())
                    .or_default() += 1
            }
            RecordKind::ToolResult => {
                let id = p["call_id"].as_str().unwrap().to_owned();
                assert!(
                    results.insert(id.clone(), p).is_none(),
                    "{id} answered twice"
                );
            }
            _ => {}
        }
    }
    let mut unknown = 0;
    for step in 0..STEPS {
        let id = format!("call_{step}_0");
        assert_eq!(intents.get(&id), Some(&1), "{id}: intents");
        let result = &results[&id];
        let file = ws.join(format!("step-{step}.txt"));
        let content = std::fs::read_to_string(&file).unwrap_or_default();
        match result["error"].as_str() {
            None => assert_eq!(content, "x", "{id} ran once"),
            Some(e) => {
                assert!(e.starts_with("outcome unknown"), "{id}: {e}");
                assert!(
                    content.is_empty() || content == "x",
                    "{id} never ran twice: {content:?}"
                );
                unknown += 1;
            }
        }
    }
    println!(
        "{KILLS} kills; {unknown} calls reported as outcome unknown; {} records",
        records.len()
    );
}
