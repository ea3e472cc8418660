//! The agent loop with the scripted model, the real sandbox and the real
//! journal: what runs, what is refused, what is journaled, where budgets stop.

mod common;

use std::sync::Arc;
use std::time::Duration;

use longrun_host::agent::{AgentConfig, Resumed, Session, SessionStatus};
use longrun_host::budget::BudgetKind;
use longrun_host::journal::{Journal, RecordKind, SessionId};
use longrun_host::model::ScriptedModel;
use longrun_host::policy::Policy;

struct World {
    dir: tempfile::TempDir,
    journal: Arc<Journal>,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("ws")).unwrap();
    let journal = Journal::open(&dir.path().join("journal")).unwrap();
    World { dir, journal }
}

impl World {
    fn policy(&self, extra: &str) -> Policy {
        common::policy(&format!(
            "{extra}\n[[filesystem]]\nhost = \"{}/ws\"\nguest = \"/workspace\"\naccess = \"read-write\"\n",
            self.dir.path().display()
        ))
    }

    fn kinds(&self, session: SessionId) -> Vec<RecordKind> {
        self.journal
            .records(session)
            .map(|r| r.unwrap().kind)
            .collect()
    }
}

fn config() -> AgentConfig {
    AgentConfig {
        first_backoff: Duration::from_millis(1),
        ..AgentConfig::default()
    }
}

const SCRIPT: &str = r#"
{"reasoning_content": "Write the file.", "tool_calls": [{"name": "fs_write", "arguments": {"path": "/workspace/out.txt", "content": "done"}}]}
{"tool_calls": [{"name": "http_get", "arguments": {"url": "https://example.com/"}}, {"name": "fs_read", "arguments": {"path": "/workspace/out.txt"}}]}
{"content": "I wrote out.txt."}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_runs_allowed_calls_reports_refused_ones_and_completes() {
    let w = world();
    let toolbox = common::shared_toolbox(false).await;
    let policy = w.policy("[tools]\nallow = [\"fs_*\"]\n");
    let model = ScriptedModel::parse(SCRIPT, "script").unwrap();
    let mut session = Session::start(
        &w.journal,
        toolbox,
        &policy,
        &model,
        config(),
        "write out.txt",
    )
    .await
    .unwrap();
    let status = session.run().await.unwrap();

    assert_eq!(
        status,
        SessionStatus::Completed {
            answer: "I wrote out.txt.".into()
        }
    );
    assert_eq!(
        std::fs::read_to_string(w.dir.path().join("ws/out.txt")).unwrap(),
        "done"
    );
    assert_eq!(
        session.ledger().used.tool_calls,
        2,
        "the refused call is not a tool call"
    );
    assert_eq!(session.ledger().used.steps, 3);
    use RecordKind::*;
    assert_eq!(
        w.kinds(session.id()),
        [
            SessionCreated,
            ModelRequest,
            ModelResponse,
            ToolIntent,
            ToolResult,
            ModelRequest,
            ModelResponse,
            PolicyDecision,
            ToolIntent,
            ToolResult,
            ModelRequest,
            ModelResponse,
            SessionEnded
        ]
    );
    let refusal = w.journal.records(session.id()).nth(7).unwrap().unwrap();
    assert!(
        String::from_utf8_lossy(&refusal.payload)
            .contains("not in the policy's [tools] allow list")
    );
    assert_eq!(w.journal.verify(session.id()), Ok(13));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tool_call_budget_stops_the_session_at_the_limit_not_after() {
    let w = world();
    let toolbox = common::shared_toolbox(false).await;
    let policy = w.policy("[session]\nmax_tool_calls = 1\n[tools]\nallow = [\"fs_*\"]\n");
    let model = ScriptedModel::parse(SCRIPT, "script").unwrap();
    let mut session = Session::start(&w.journal, toolbox, &policy, &model, config(), "goal")
        .await
        .unwrap();
    match session.run().await.unwrap() {
        SessionStatus::BudgetExhausted(e) => assert_eq!(e.kind, BudgetKind::ToolCalls),
        other => panic!("expected a pause, got {other:?}"),
    }
    let kinds = w.kinds(session.id());
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == RecordKind::ToolIntent)
            .count(),
        1
    );
    assert_eq!(kinds.last(), Some(&RecordKind::BudgetEvent));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_step_budget_stops_before_the_next_model_call() {
    let w = world();
    let toolbox = common::shared_toolbox(false).await;
    let policy = w.policy("[session]\nmax_steps = 1\n[tools]\nallow = [\"fs_*\"]\n");
    let model = ScriptedModel::parse(SCRIPT, "script").unwrap();
    let mut session = Session::start(&w.journal, toolbox, &policy, &model, config(), "goal")
        .await
        .unwrap();
    match session.run().await.unwrap() {
        SessionStatus::BudgetExhausted(e) => assert_eq!(e.kind, BudgetKind::Steps),
        other => panic!("expected a pause, got {other:?}"),
    }
    let kinds = w.kinds(session.id());
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == RecordKind::ModelResponse)
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_model_failures_are_retried_and_journaled() {
    let w = world();
    let toolbox = common::shared_toolbox(false).await;
    let policy = w.policy("");
    let model = ScriptedModel::parse(r#"{"content": "fine", "fail_times": 2}"#, "script").unwrap();
    let mut session = Session::start(&w.journal, toolbox, &policy, &model, config(), "goal")
        .await
        .unwrap();
    assert_eq!(
        session.run().await.unwrap(),
        SessionStatus::Completed {
            answer: "fine".into()
        }
    );
    let kinds = w.kinds(session.id());
    assert_eq!(kinds.iter().filter(|k| **k == RecordKind::Error).count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_needs_approval_pauses_the_session_before_it_runs() {
    let w = world();
    let toolbox = common::shared_toolbox(false).await;
    let policy = w.policy("[tools]\nallow = [\"fs_*\"]\napprove = [\"fs_write\"]\n");
    let model = ScriptedModel::parse(SCRIPT, "script").unwrap();
    let mut session = Session::start(&w.journal, toolbox, &policy, &model, config(), "goal")
        .await
        .unwrap();
    match session.run().await.unwrap() {
        SessionStatus::AwaitingApproval { call } => assert_eq!(call.name, "fs_write"),
        other => panic!("expected a pause, got {other:?}"),
    }
    assert!(!w.dir.path().join("ws/out.txt").exists());
    assert_eq!(
        w.kinds(session.id()).last(),
        Some(&RecordKind::ApprovalAsked)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_paused_by_a_budget_resumes_once_the_budget_is_raised() {
    let w = world();
    let toolbox = common::shared_toolbox(false).await;
    let tight = w.policy("[session]\nmax_tool_calls = 1\n[tools]\nallow = [\"fs_*\"]\n");
    let model = ScriptedModel::parse(SCRIPT, "script").unwrap();
    let id = {
        let mut session = Session::start(&w.journal, toolbox, &tight, &model, config(), "goal")
            .await
            .unwrap();
        assert!(matches!(
            session.run().await.unwrap(),
            SessionStatus::BudgetExhausted(_)
        ));
        session.id()
    };
    let raised = w.policy("[session]\nmax_tool_calls = 10\n[tools]\nallow = [\"fs_*\"]\n");
    let mut session = match Session::resume(&w.journal, id, toolbox, &raised, &model, config())
        .await
        .unwrap()
    {
        Resumed::Session(session) => session,
        Resumed::Ended => panic!("the session had not ended"),
    };
    assert_eq!(
        session.ledger().used.tool_calls,
        1,
        "usage is rebuilt from the journal"
    );
    assert_eq!(
        session.run().await.unwrap(),
        SessionStatus::Completed {
            answer: "I wrote out.txt.".into()
        }
    );
    assert_eq!(session.ledger().used.tool_calls, 2);
    let kinds = w.kinds(id);
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == RecordKind::ModelResponse)
            .count(),
        3,
        "no response requested twice"
    );
    assert_eq!(w.journal.verify(id), Ok(kinds.len() as u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_input_token_budget_stops_before_a_model_call_that_could_exceed_it() {
    let w = world();
    let toolbox = common::shared_toolbox(false).await;
    // The context (goal and tool definitions) is estimated at well under
    // 5000 tokens; the first call reports 4900 used; a second call (at
    // least the tool definitions again) could exceed 5000, so it is not made.
    let policy = w.policy("[session]\nmax_input_tokens = 5000\n[tools]\nallow = [\"fs_*\"]\n");
    let script = concat!(
        r#"{"tool_calls": [{"name": "fs_list", "arguments": {"path": "/workspace"}}], "usage": {"input_tokens": 4900, "output_tokens": 1}}"#,
        "\n",
        r#"{"content": "x"}"#
    );
    let model = ScriptedModel::parse(script, "s").unwrap();
    let goal = "list the workspace";
    let mut session = Session::start(&w.journal, toolbox, &policy, &model, config(), goal)
        .await
        .unwrap();
    match session.run().await.unwrap() {
        SessionStatus::BudgetExhausted(e) => assert_eq!(e.kind, BudgetKind::InputTokens),
        other => panic!("expected a pause, got {other:?}"),
    }
    assert_eq!(
        session.ledger().used.input_tokens,
        4900,
        "the second call was never made"
    );
    let kinds = w.kinds(session.id());
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == RecordKind::ModelResponse)
            .count(),
        1
    );
    // 4900 of 5000 is past 80%: a warning event came first, then the pause.
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == RecordKind::BudgetEvent)
            .count(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_output_token_budget_counts_the_most_the_next_call_may_produce() {
    let w = world();
    let toolbox = common::shared_toolbox(false).await;
    let policy = w.policy("[session]\nmax_output_tokens = 1000\n");
    let model = ScriptedModel::parse(r#"{"content": "x"}"#, "s").unwrap();
    // The loop asks for up to 4096 output tokens, more than the budget allows.
    let mut session = Session::start(&w.journal, toolbox, &policy, &model, config(), "goal")
        .await
        .unwrap();
    match session.run().await.unwrap() {
        SessionStatus::BudgetExhausted(e) => assert_eq!(e.kind, BudgetKind::OutputTokens),
        other => panic!("expected a pause, got {other:?}"),
    }
}
