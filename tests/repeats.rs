//! Stuck-loop detection: a call that fails exactly as it failed before is
//! pointed out to the model (journaled as `repeated_failure`), and past the
//! policy's `max_repeated_failures` the session ends as stuck. Scripted
//! models, the real sandbox, the real journal, and the auditor's check.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use longrun_host::agent::{
    AgentConfig, RepeatedFailure, Resumed, Session, SessionCreated, SessionStatus,
};
use longrun_host::journal::payload::Payload;
use longrun_host::journal::{Journal, RecordKind, SessionId, SessionState, Status, Unpriced};
use longrun_host::model::{Model, ModelFuture, ModelRequest, ScriptedModel};
use longrun_host::policy::Policy;

use common::tamper::rewrite;

struct World {
    dir: tempfile::TempDir,
    journal: Arc<Journal>,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("ws")).unwrap();
    std::fs::write(dir.path().join("ws/hello.txt"), "hi").unwrap();
    let journal = Journal::open(&dir.path().join("journal")).unwrap();
    World { dir, journal }
}

impl World {
    fn policy(&self, session: &str) -> Policy {
        common::policy(&format!(
            "[session]\n{session}\n[tools]\nallow = [\"fs_*\"]\n\
             [[filesystem]]\nhost = \"{}/ws\"\nguest = \"/workspace\"\naccess = \"read-only\"\n",
            self.dir.path().display()
        ))
    }

    fn repeats(&self, session: SessionId) -> Vec<RepeatedFailure> {
        self.journal
            .records(session)
            .map(|r| r.unwrap())
            .filter(|r| r.kind == RecordKind::RepeatedFailure)
            .map(|r| serde_json::from_slice(&r.payload).unwrap())
            .collect()
    }

    fn status(&self, session: SessionId) -> Status {
        SessionState::fold(&self.journal, session, &mut Unpriced)
            .unwrap()
            .status
    }

    fn audit(&self, session: SessionId) -> Result<(), String> {
        longrun_replay::audit::verify(&self.journal, session, None)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

fn config() -> AgentConfig {
    AgentConfig {
        first_backoff: Duration::from_millis(1),
        ..AgentConfig::default()
    }
}

/// A model script: each line a response.
fn script(lines: &[&str]) -> ScriptedModel {
    ScriptedModel::parse(&lines.join("\n"), "script").unwrap()
}

const READ_MISSING: &str =
    r#"{"tool_calls": [{"name": "fs_read", "arguments": {"path": "/workspace/missing.txt"}}]}"#;
const LIST: &str = r#"{"tool_calls": [{"name": "fs_list", "arguments": {"path": "/workspace"}}]}"#;
const ANSWER: &str = r#"{"content": "hello.txt says hi"}"#;

/// The scripted model, keeping the last message of each request it gets.
struct Recording(ScriptedModel, Mutex<Vec<String>>);

impl Model for Recording {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn complete<'a>(&'a self, request: &'a ModelRequest) -> ModelFuture<'a> {
        let last = request.messages.last().and_then(|m| m.content.clone());
        self.1.lock().unwrap().push(last.unwrap_or_default());
        self.0.complete(request)
    }
}

async fn run(w: &World, policy: &Policy, model: &dyn Model) -> (SessionId, SessionStatus) {
    let toolbox = common::shared_toolbox(false).await;
    let mut session = Session::start(&w.journal, toolbox, policy, model, config(), "read it")
        .await
        .unwrap();
    let status = session.run().await.unwrap();
    (session.id(), status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_failure_is_pointed_out_and_past_the_limit_ends_the_session_as_stuck() {
    let w = world();
    let policy = w.policy("max_repeated_failures = 2");
    let model = Recording(
        script(&[
            READ_MISSING,
            READ_MISSING,
            READ_MISSING,
            READ_MISSING,
            ANSWER,
        ]),
        Mutex::default(),
    );

    let (id, status) = run(&w, &policy, &model).await;

    let SessionStatus::Stuck { call, error, count } = status else {
        panic!("expected the session to end as stuck, got {status:?}");
    };
    assert_eq!((call.name.as_str(), count), ("fs_read", 3));
    assert!(error.contains("/workspace/missing.txt"), "{error}");
    let seen = model.1.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "the third failure ended it: {seen:?}");
    assert!(
        !seen[1].contains("Note:"),
        "the first failure is not a repeat"
    );
    assert!(
        seen[2].contains("has now failed 2 times with the same error")
            && seen[2].contains("The next identical failure ends the session."),
        "{}",
        seen[2]
    );
    let repeats = w.repeats(id);
    assert_eq!(
        repeats
            .iter()
            .map(|r| (r.count, r.limit))
            .collect::<Vec<_>>(),
        [(2, 2), (3, 2)]
    );
    assert_eq!(w.status(id), Status::Stuck);
    let last = w.journal.records(id).last().unwrap().unwrap();
    assert_eq!(last.kind, RecordKind::SessionEnded);
    assert_eq!(w.audit(id), Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_changes_its_call_after_the_note_goes_on_to_its_answer() {
    let w = world();
    let policy = w.policy("max_repeated_failures = 2");
    let model = script(&[READ_MISSING, READ_MISSING, LIST, ANSWER]);

    let (id, status) = run(&w, &policy, &model).await;

    assert_eq!(
        status,
        SessionStatus::Completed {
            answer: "hello.txt says hi".into()
        }
    );
    assert_eq!(w.repeats(id).len(), 1);
    assert_eq!(w.audit(id), Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_field_three_identical_failures_are_allowed_and_the_fourth_ends_it() {
    let w = world();
    let policy = w.policy("");
    let three = script(&[READ_MISSING, READ_MISSING, READ_MISSING, ANSWER]);
    let four = script(&[
        READ_MISSING,
        READ_MISSING,
        READ_MISSING,
        READ_MISSING,
        ANSWER,
    ]);

    let (_, after_three) = run(&w, &policy, &three).await;
    let (id, after_four) = run(&w, &policy, &four).await;

    assert!(matches!(after_three, SessionStatus::Completed { .. }));
    assert!(
        matches!(after_four, SessionStatus::Stuck { count: 4, .. }),
        "{after_four:?}"
    );
    assert_eq!(w.repeats(id).last().map(|r| r.limit), Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_repeated_counts_like_any_failure() {
    let w = world();
    let policy = w.policy("max_repeated_failures = 1");
    let denied =
        r#"{"tool_calls": [{"name": "http_get", "arguments": {"url": "https://example.com/"}}]}"#;
    let model = script(&[denied, denied, ANSWER]);

    let (id, status) = run(&w, &policy, &model).await;

    let SessionStatus::Stuck { call, error, count } = status else {
        panic!("expected stuck, got {status:?}");
    };
    assert_eq!((call.name.as_str(), count), ("http_get", 2));
    assert!(error.contains("allow list"), "{error}");
    assert_eq!(w.audit(id), Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_count_goes_on_across_a_resume() {
    let w = world();
    let toolbox = common::shared_toolbox(false).await;
    let policy = w.policy("max_repeated_failures = 2");
    // The first model has two steps and fails for good at the third.
    let first = script(&[READ_MISSING, READ_MISSING]);
    let mut session = Session::start(&w.journal, toolbox, &policy, &first, config(), "read it")
        .await
        .unwrap();
    let id = session.id();
    assert!(session.run().await.is_err());
    drop(session);
    assert_eq!(w.repeats(id).len(), 1);

    let model = script(&[READ_MISSING, READ_MISSING, READ_MISSING, ANSWER]);
    let Resumed::Session(mut resumed) =
        Session::resume(&w.journal, id, toolbox, &policy, &model, config())
            .await
            .unwrap()
    else {
        panic!("the session had not ended");
    };
    let status = resumed.run().await.unwrap();

    assert!(
        matches!(status, SessionStatus::Stuck { count: 3, .. }),
        "the two failures before the resume count: {status:?}"
    );
    assert_eq!(w.audit(id), Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auditor_names_a_session_that_went_on_past_its_recorded_limit() {
    let w = world();
    let policy = w.policy("max_repeated_failures = 5");
    let model = script(&[READ_MISSING, READ_MISSING, READ_MISSING, ANSWER]);
    let (id, status) = run(&w, &policy, &model).await;
    assert!(matches!(status, SessionStatus::Completed { .. }));
    let records: Vec<_> = w.journal.records(id).map(|r| r.unwrap()).collect();
    let World { dir, journal } = w;
    drop(journal);

    // A consistent chain that says the limit was 2: first as the records
    // were (each repeat says 5), then with the repeats edited to say 2 too.
    let forge = |repeat_limit: u64| {
        move |record: &longrun_host::journal::Record| match record.kind {
            RecordKind::SessionCreated => {
                let mut created: SessionCreated = serde_json::from_slice(&record.payload).unwrap();
                created.policy_text = created
                    .policy_text
                    .replace("max_repeated_failures = 5", "max_repeated_failures = 2");
                created.policy_hash = blake3::hash(created.policy_text.as_bytes())
                    .to_hex()
                    .to_string();
                Payload::SessionCreated(Box::new(created)).encode()
            }
            RecordKind::RepeatedFailure => {
                let mut repeat: RepeatedFailure = serde_json::from_slice(&record.payload).unwrap();
                repeat.limit = repeat_limit;
                Payload::RepeatedFailure(repeat).encode()
            }
            _ => record.payload.clone(),
        }
    };
    let source = dir.path().join("journal");
    let said_five = dir.path().join("said-five");
    let said_two = dir.path().join("said-two");
    let five = rewrite(&records, &source, &said_five, forge(5));
    let two = rewrite(&records, &source, &said_two, forge(2));

    let audit = |dir: &std::path::Path, session| {
        let journal = Journal::open(dir).unwrap();
        longrun_replay::audit::verify(&journal, session, None)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let five = audit(&said_five, five).unwrap_err();
    let two = audit(&said_two, two).unwrap_err();
    assert!(
        five.contains("it says the limit was 5, but the policy in force allowed 2"),
        "{five}"
    );
    assert!(
        two.contains("the session went on after a call failed the same way more than max_repeated_failures (2) times"),
        "{two}"
    );
}
