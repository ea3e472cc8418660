//! Journals written by earlier releases open and verify: one small session
//! kept on disk in each store's format (`tests/fixtures/`), read in place of
//! a copy. A change that breaks them needs a new format version, not a new
//! fixture.
//!
//! The fixtures were written by `write_fixtures` (ignored; run it only to add
//! a fixture for a new format version): `sled-v1` by the release whose
//! embedded store was sled, `segments-v1` by the first with segment files.

use std::path::{Path, PathBuf};

use longrun_journal::payload::*;
use longrun_journal::{Journal, Location, SessionState, Status, Unpriced};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A completed session: one tool call whose output is a blob.
async fn write_session(journal: &std::sync::Arc<Journal>) {
    let mut writer = journal.create_session().unwrap();
    let call = ToolCall {
        id: "call_0".into(),
        name: "fs_read".into(),
        arguments: r#"{"path":"/workspace/hello.txt"}"#.into(),
    };
    let output = journal.put_blob(b"Hello from the fixture.\n").unwrap();
    let payloads = [
        Payload::SessionCreated(Box::new(SessionCreated {
            goal: "What does hello.txt say?".into(),
            policy_text: "[session]\nmax_steps = 10\n".into(),
            policy_hash: "fixture".into(),
            model: "scripted".into(),
            labels: Default::default(),
            tools: Vec::new(),
            snapshot: None,
            parent: None,
            spawned_by: None,
            policy_base: None,
            driver: Driver::Model,
            trajectories: None,
        })),
        Payload::ModelRequest(NewMessages(vec![Message::text(
            Role::User,
            "What does hello.txt say?",
        )])),
        Payload::ModelResponse(ModelResponse {
            message: Message {
                tool_calls: vec![call.clone()],
                ..Message::text(Role::Assistant, "")
            },
            usage: Usage {
                input_tokens: 120,
                output_tokens: 12,
                ..Usage::default()
            },
        }),
        Payload::ToolIntent(ToolIntent {
            call_id: call.id.clone(),
            tool: call.name.clone(),
            arguments: call.arguments.clone(),
            idempotent: true,
        }),
    ];
    for payload in &payloads {
        writer.append_payload(payload, &[]).unwrap();
    }
    let result = Payload::ToolResult(ToolResult {
        call_id: call.id,
        output: None,
        output_blob: Some(longrun_journal::hex(&output)),
        error: None,
        elapsed_ms: 3,
        view_bytes: None,
    });
    writer.append_payload(&result, &[output]).unwrap();
    let ended = Payload::SessionEnded(SessionEnded {
        status: EndStatus::Completed,
        answer: Some("It says: Hello from the fixture.".into()),
    });
    writer.append_payload_durable(&ended, &[]).await.unwrap();
}

#[tokio::test]
#[ignore = "writes the fixtures; run by hand for a new format version"]
async fn write_fixtures() {
    for (name, location) in [
        ("sled-v1", Location::Sled as fn(PathBuf) -> Location),
        ("segments-v1", Location::Segments),
    ] {
        let dir = fixtures().join(name);
        if dir.exists() {
            continue;
        }
        let journal = Journal::open_location(&location(dir), Default::default()).unwrap();
        write_session(&journal).await;
    }
}

/// The fixture `name`, copied (opening a sled journal for writing may
/// change its files).
fn copy_of(name: &str) -> tempfile::TempDir {
    let copy = tempfile::tempdir().unwrap();
    let from = fixtures().join(name);
    for entry in walk(&from) {
        let to = copy.path().join(entry.strip_prefix(&from).unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&entry, &to).unwrap();
    }
    copy
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn check(journal: &Journal) {
    let sessions = journal.sessions().unwrap();
    assert_eq!(sessions.len(), 1);
    let session = sessions[0];
    assert_eq!(journal.losses(), vec![]);
    assert_eq!(journal.verify(session), Ok(6));
    let state = SessionState::fold(journal, session, &mut Unpriced).unwrap();
    assert_eq!(state.status, Status::Completed);
    assert_eq!(state.used.input_tokens, 120);
    let result = journal.records(session).nth(4).unwrap().unwrap();
    assert_eq!(
        journal.blob(&result.blobs[0]).unwrap(),
        b"Hello from the fixture.\n"
    );
}

#[test]
fn journals_written_by_earlier_releases_open_verify_and_fold() {
    for name in ["sled-v1", "segments-v1"] {
        let copy = copy_of(name);
        check(&Journal::open(copy.path()).unwrap());
        check(
            &Journal::open_read_only(copy.path(), longrun_journal::JournalOptions::AUDIT).unwrap(),
        );
    }
    // Read in place, nothing copied: the segment format is never changed by
    // a reader.
    check(
        &Journal::open_read_only(
            &fixtures().join("segments-v1"),
            longrun_journal::JournalOptions::AUDIT,
        )
        .unwrap(),
    );
}
