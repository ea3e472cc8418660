//! The agent loop with the scripted model, the real sandbox and the real
//! journal: what runs, what is refused, what is journaled, where budgets stop.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use longrun_host::agent::{ANSWER_NOW, AgentConfig, Resumed, Session, SessionStatus};
use longrun_host::budget::BudgetKind;
use longrun_host::journal::{Journal, RecordKind, SessionId};
use longrun_host::model::{
    Message, Model, ModelFuture, ModelRequest, Purpose, Role, ScriptedModel,
};
use longrun_host::policy::Policy;
use longrun_host::steer::{Steering, Wanted};

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
    assert_eq!(count(&kinds, RecordKind::ToolIntent), 1);
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
    assert_eq!(count(&kinds, RecordKind::ModelResponse), 1);
}

/// The scripted model, and how many tools each step's request offered.
struct OfferedTools<'m> {
    script: &'m ScriptedModel,
    offered: Mutex<Vec<usize>>,
}

impl Model for OfferedTools<'_> {
    fn name(&self) -> &str {
        self.script.name()
    }

    fn complete<'a>(&'a self, request: &'a ModelRequest) -> ModelFuture<'a> {
        if request.purpose == Purpose::Step {
            self.offered.lock().unwrap().push(request.tools.len());
        }
        self.script.complete(request)
    }
}

/// The session's goal and the messages the loop added, in the order sent.
fn sent_messages(w: &World, session: SessionId) -> Vec<Message> {
    w.journal
        .records(session)
        .map(|r| r.unwrap())
        .filter(|r| r.kind == RecordKind::ModelRequest)
        .flat_map(|r| serde_json::from_slice::<Vec<Message>>(&r.payload).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_step_of_the_step_budget_offers_no_tools_and_asks_for_the_answer() {
    let w = world();
    let toolbox = common::shared_toolbox(false).await;
    let policy = w.policy("[session]\nmax_steps = 3\n[tools]\nallow = [\"fs_*\"]\n");
    let script = ScriptedModel::parse(SCRIPT, "script").unwrap();
    let model = OfferedTools {
        script: &script,
        offered: Mutex::default(),
    };
    let mut session = Session::start(&w.journal, toolbox, &policy, &model, config(), "goal")
        .await
        .unwrap();
    assert_eq!(
        session.run().await.unwrap(),
        SessionStatus::Completed {
            answer: "I wrote out.txt.".into()
        }
    );
    let offered = model.offered.lock().unwrap().clone();
    assert_eq!(offered.len(), 3);
    assert!(offered[0] > 0 && offered[1] > 0, "tools in steps 1 and 2");
    assert_eq!(offered[2], 0, "no tools in the last step");
    let sent = sent_messages(&w, session.id());
    let asked: Vec<_> = sent
        .iter()
        .filter(|m| m.content.as_deref() == Some(ANSWER_NOW))
        .collect();
    assert_eq!(asked.len(), 1, "asked once, and journaled");
    assert_eq!(asked[0].role, Role::User);
    assert_eq!(
        sent.last().and_then(|m| m.content.as_deref()),
        Some(ANSWER_NOW),
        "just before the last step"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_the_tool_calls_are_spent_the_next_step_offers_no_tools() {
    let w = world();
    let toolbox = common::shared_toolbox(false).await;
    let policy = w.policy("[session]\nmax_tool_calls = 1\n[tools]\nallow = [\"fs_*\"]\n");
    let script = ScriptedModel::parse(
        r#"
{"tool_calls": [{"name": "fs_list", "arguments": {"path": "/workspace"}}]}
{"content": "The workspace is empty."}
"#,
        "script",
    )
    .unwrap();
    let model = OfferedTools {
        script: &script,
        offered: Mutex::default(),
    };
    let mut session = Session::start(&w.journal, toolbox, &policy, &model, config(), "goal")
        .await
        .unwrap();
    assert_eq!(
        session.run().await.unwrap(),
        SessionStatus::Completed {
            answer: "The workspace is empty.".into()
        }
    );
    let offered = model.offered.lock().unwrap().clone();
    assert!(offered[0] > 0);
    assert_eq!(offered[1], 0);
    let sent = sent_messages(&w, session.id());
    assert_eq!(
        sent.last().and_then(|m| m.content.as_deref()),
        Some(ANSWER_NOW)
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
    assert_eq!(count(&kinds, RecordKind::Error), 2);
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
        count(&kinds, RecordKind::ModelResponse),
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
    assert_eq!(count(&kinds, RecordKind::ModelResponse), 1);
    // 4900 of 5000 is past 80%: a warning event came first, then the pause.
    assert_eq!(count(&kinds, RecordKind::BudgetEvent), 2);
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

/// A session, resumed from the journal of `id`.
async fn resume<'a>(
    w: &World,
    id: SessionId,
    toolbox: &'a longrun_host::Toolbox,
    policy: &'a Policy,
    model: &'a ScriptedModel,
    config: AgentConfig,
) -> Box<Session<'a>> {
    match Session::resume(&w.journal, id, toolbox, policy, model, config)
        .await
        .unwrap()
    {
        Resumed::Session(session) => session,
        Resumed::Ended => panic!("the session had not ended"),
    }
}

fn count(kinds: &[RecordKind], kind: RecordKind) -> usize {
    kinds.iter().filter(|k| **k == kind).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cost_budget_stops_before_a_call_that_could_cost_too_much_and_resumes_when_raised() {
    let w = world();
    let toolbox = common::shared_toolbox(false).await;
    // $1000 per million tokens: a tenth of a cent a token.
    let prices = "[prices.scripted]\ninput_per_million = 1000.0\noutput_per_million = 1000.0\n";
    let tight = w.policy(&format!(
        "[session]\nmax_cost_usd = 3.2\n[tools]\nallow = [\"fs_*\"]\n{prices}"
    ));
    let script = concat!(
        r#"{"tool_calls": [{"name": "fs_list", "arguments": {"path": "/workspace"}}], "usage": {"input_tokens": 3000, "output_tokens": 8}}"#,
        "\n",
        r#"{"content": "done", "usage": {"input_tokens": 3100, "output_tokens": 2}}"#
    );
    let model = ScriptedModel::parse(script, "s").unwrap();
    let config = AgentConfig {
        max_output_tokens: 8,
        ..config()
    };
    let mut session = Session::start(&w.journal, toolbox, &tight, &model, config.clone(), "goal")
        .await
        .unwrap();
    // The first call costs $3.008; the second could cost its prompt (the
    // goal, history and tool definitions: hundreds of tokens) and 8 more.
    match session.run().await.unwrap() {
        SessionStatus::BudgetExhausted(e) => assert_eq!(e.kind, BudgetKind::Cost),
        other => panic!("expected a pause, got {other:?}"),
    }
    let spent = session.ledger().used.cost_usd;
    assert!((spent - 3.008).abs() < 1e-9, "{spent}");
    let id = session.id();
    assert_eq!(count(&w.kinds(id), RecordKind::ModelResponse), 1);
    drop(session);

    let raised = w.policy(&format!(
        "[session]\nmax_cost_usd = 10.0\n[tools]\nallow = [\"fs_*\"]\n{prices}"
    ));
    let mut session = resume(&w, id, toolbox, &raised, &model, config).await;
    assert!((session.ledger().used.cost_usd - 3.008).abs() < 1e-9);
    assert_eq!(
        session.run().await.unwrap(),
        SessionStatus::Completed {
            answer: "done".into()
        }
    );
    assert!((session.ledger().used.cost_usd - 6.110).abs() < 1e-9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_input_tokens_are_charged_at_the_cached_price() {
    let w = world();
    let toolbox = common::shared_toolbox(false).await;
    let policy = w.policy(
        "[prices.scripted]\ninput_per_million = 2.0\noutput_per_million = 10.0\ncached_input_per_million = 0.5\n",
    );
    let model = ScriptedModel::parse(
        r#"{"content": "x", "usage": {"input_tokens": 1000000, "cached_input_tokens": 600000, "output_tokens": 100000}}"#,
        "s",
    )
    .unwrap();
    let mut session = Session::start(&w.journal, toolbox, &policy, &model, config(), "goal")
        .await
        .unwrap();
    session.run().await.unwrap();
    // 400k at $2, 600k at $0.5, 100k at $10.
    assert!((session.ledger().used.cost_usd - (0.8 + 0.3 + 1.0)).abs() < 1e-9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cost_budget_for_a_model_without_a_price_is_refused_at_the_start() {
    let w = world();
    let toolbox = common::shared_toolbox(false).await;
    let policy = w.policy("[session]\nmax_cost_usd = 1.0\n[prices.\"other-model\"]\ninput_per_million = 1.0\noutput_per_million = 1.0\n");
    struct Unpriced(ScriptedModel);
    impl longrun_host::model::Model for Unpriced {
        fn name(&self) -> &str {
            "remote:unknown"
        }
        fn complete<'a>(
            &'a self,
            request: &'a longrun_host::model::ModelRequest,
        ) -> longrun_host::model::ModelFuture<'a> {
            self.0.complete(request)
        }
    }
    let model = Unpriced(ScriptedModel::parse(r#"{"content": "x"}"#, "s").unwrap());
    let err = Session::start(&w.journal, toolbox, &policy, &model, config(), "goal")
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("no price for model \"remote:unknown\""),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wall_time_budget_cuts_a_slow_model_call_at_the_limit_and_resumes_when_raised() {
    let w = world();
    let toolbox = common::shared_toolbox(false).await;
    let tight = w.policy("[session]\nmax_wall_time = \"400ms\"\n[tools]\nallow = [\"fs_*\"]\n");
    let script = concat!(
        r#"{"tool_calls": [{"name": "fs_list", "arguments": {"path": "/workspace"}}]}"#,
        "\n",
        r#"{"content": "slow answer", "delay_ms": 2000}"#
    );
    let model = ScriptedModel::parse(script, "s").unwrap();
    let started = std::time::Instant::now();
    let mut session = Session::start(&w.journal, toolbox, &tight, &model, config(), "goal")
        .await
        .unwrap();
    match session.run().await.unwrap() {
        SessionStatus::BudgetExhausted(e) => assert_eq!(e.kind, BudgetKind::WallTime),
        other => panic!("expected a pause, got {other:?}"),
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1500),
        "the 2 s call was cut at the 400 ms limit, not waited for ({took:?})"
    );
    let id = session.id();
    let kinds = w.kinds(id);
    assert_eq!(count(&kinds, RecordKind::ModelResponse), 1);
    assert_eq!(kinds.last(), Some(&RecordKind::BudgetEvent));
    drop(session);

    let raised = w.policy("[session]\nmax_wall_time = \"1h\"\n[tools]\nallow = [\"fs_*\"]\n");
    let mut session = resume(&w, id, toolbox, &raised, &model, config()).await;
    assert!(
        session.elapsed() >= Duration::from_millis(400),
        "wall time counts from the session's creation"
    );
    assert_eq!(
        session.run().await.unwrap(),
        SessionStatus::Completed {
            answer: "slow answer".into()
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_output_reaches_the_model_cut_and_read_output_pages_through_the_journaled_whole() {
    let w = world();
    let toolbox = common::shared_toolbox(false).await;
    let policy = w.policy("[tools]\nallow = [\"fs_*\"]\n");
    let text: String = (0..400).map(|i| format!("line {i:04}\n")).collect(); // 4000 bytes
    std::fs::write(w.dir.path().join("ws/big.txt"), &text).unwrap();
    let script = concat!(
        r#"{"tool_calls": [{"name": "fs_read", "arguments": {"path": "/workspace/big.txt"}}]}"#,
        "\n",
        r#"{"tool_calls": [{"name": "read_output", "arguments": {"handle": "out_4", "offset": 1000, "length": 50}}]}"#,
        "\n",
        r#"{"tool_calls": [{"name": "read_output", "arguments": {"handle": "out_999"}}]}"#,
        "\n",
        r#"{"content": "read it"}"#
    );
    let model = ScriptedModel::parse(script, "s").unwrap();
    let config = AgentConfig {
        output_view_bytes: 1000,
        ..config()
    };
    let mut session = Session::start(&w.journal, toolbox, &policy, &model, config.clone(), "goal")
        .await
        .unwrap();
    let mut contexts = Vec::new();
    session.run().await.unwrap();
    let id = session.id();
    let records: Vec<_> = w.journal.records(id).map(|r| r.unwrap()).collect();
    // The fs_read result is record 4 (created, request, response, intent, result).
    assert_eq!(records[4].kind, RecordKind::ToolResult);
    // The journal holds the whole output (in a blob); the model got a view.
    let whole = w.journal.blob(&records[4].blobs[0]).unwrap();
    assert!(String::from_utf8_lossy(&whole).contains("line 0399"));
    for r in &records {
        if r.kind == RecordKind::ModelRequest {
            contexts.push(String::from_utf8_lossy(&r.payload).into_owned());
        }
    }
    let second_request = &contexts[1];
    assert!(second_request.contains("output truncated: showing 1000 of"));
    assert!(second_request.contains(r#"\"handle\": \"out_4\", \"offset\": 1000"#));
    assert!(!second_request.contains("line 0399"));
    // The page: 50 bytes from offset 1000 of the whole output, and where
    // to go next.
    let third_request = &contexts[2];
    let page = serde_json::to_string(&String::from_utf8_lossy(&whole[1000..1050])).unwrap();
    assert!(
        third_request.contains(page.trim_matches('"')),
        "{third_request}"
    );
    assert!(third_request.contains("next offset 1050"));
    // An unknown handle is a tool error, and the session goes on.
    let fourth_request = &contexts[3];
    assert!(fourth_request.contains("no output with handle \\\"out_999\\\" in this session"));
    assert_eq!(w.journal.verify(id), Ok(records.len() as u64));
}

#[tokio::test]
async fn read_output_is_offered_only_once_an_output_has_reached_the_model_cut() {
    let w = world();
    let toolbox = common::shared_toolbox(false).await;
    let policy = w.policy("[tools]\nallow = [\"fs_*\"]\n");
    std::fs::write(w.dir.path().join("ws/small.txt"), "short").unwrap();
    std::fs::write(w.dir.path().join("ws/big.txt"), "x".repeat(4000)).unwrap();
    /// The scripted model, noting the tools each request offered.
    struct Recording(ScriptedModel, std::sync::Mutex<Vec<Vec<String>>>);
    impl longrun_host::model::Model for Recording {
        fn name(&self) -> &str {
            self.0.name()
        }
        fn complete<'a>(
            &'a self,
            request: &'a longrun_host::model::ModelRequest,
        ) -> longrun_host::model::ModelFuture<'a> {
            let names = request.tools.iter().map(|t| t.name.clone()).collect();
            self.1.lock().unwrap().push(names);
            self.0.complete(request)
        }
    }
    let script = concat!(
        r#"{"tool_calls": [{"name": "fs_read", "arguments": {"path": "/workspace/small.txt"}}]}"#,
        "\n",
        r#"{"tool_calls": [{"name": "fs_read", "arguments": {"path": "/workspace/big.txt"}}]}"#,
        "\n",
        r#"{"content": "done"}"#
    );
    let model = Recording(
        ScriptedModel::parse(script, "s").unwrap(),
        Default::default(),
    );
    let config = AgentConfig {
        output_view_bytes: 1000,
        ..config()
    };
    let mut session = Session::start(&w.journal, toolbox, &policy, &model, config, "goal")
        .await
        .unwrap();
    session.run().await.unwrap();
    let offered = model.1.lock().unwrap().clone();
    let read_output = |step: usize| offered[step].iter().any(|t| t == "read_output");
    assert!(offered[0].iter().any(|t| t == "fs_read"));
    assert!(!read_output(0), "nothing cut yet: {:?}", offered[0]);
    assert!(!read_output(1), "a short output is whole: {:?}", offered[1]);
    assert!(
        read_output(2),
        "after the 4000-byte output: {:?}",
        offered[2]
    );
}

/// A script of `steps` steps that each read a 4 KB file, then a final answer.
fn reading_script(steps: u64) -> String {
    format!(
        "{}\n{}",
        format_args!(
            r#"{{"tool_calls": [{{"name": "fs_read", "arguments": {{"path": "/workspace/page.txt"}}}}], "repeat": {steps}}}"#
        ),
        r#"{"content": "finished"}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_context_stays_under_its_limit_by_summaries_that_are_journaled() {
    let w = world();
    let toolbox = common::shared_toolbox(false).await;
    std::fs::write(w.dir.path().join("ws/page.txt"), "p".repeat(4000)).unwrap();
    let policy = w.policy("[tools]\nallow = [\"fs_*\"]\n");
    let model = ScriptedModel::parse(&reading_script(40), "s").unwrap();
    let config = AgentConfig {
        context_tokens: 8000,
        ..config()
    };
    let mut session = Session::start(&w.journal, toolbox, &policy, &model, config.clone(), "goal")
        .await
        .unwrap();
    assert_eq!(
        session.run().await.unwrap(),
        SessionStatus::Completed {
            answer: "finished".into()
        }
    );
    let id = session.id();
    let records: Vec<_> = w.journal.records(id).map(|r| r.unwrap()).collect();
    let compactions: Vec<serde_json::Value> = records
        .iter()
        .filter(|r| r.kind == RecordKind::Compaction)
        .map(|r| serde_json::from_slice(&r.payload).unwrap())
        .collect();
    assert!(compactions.len() >= 2, "{}", compactions.len());
    for c in &compactions {
        assert_eq!(c["method"], "summary");
        assert!(c["tokens_before"].as_u64().unwrap() > 8000);
        assert!(c["tokens_after"].as_u64().unwrap() <= 4000);
        assert!(
            c["replacement"]["content"]
                .as_str()
                .unwrap()
                .contains("Summary of")
        );
    }
    // Every step is still in the journal: 40 reads and their results.
    assert_eq!(count(&w.kinds(id), RecordKind::ToolResult), 40);
    assert_eq!(w.journal.verify(id), Ok(records.len() as u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_model_cannot_summarise_old_steps_are_trimmed_and_the_session_goes_on() {
    let w = world();
    let toolbox = common::shared_toolbox(false).await;
    std::fs::write(w.dir.path().join("ws/page.txt"), "p".repeat(4000)).unwrap();
    let policy = w.policy("[tools]\nallow = [\"fs_*\"]\n");
    let model = ScriptedModel::parse(&reading_script(20), "s")
        .unwrap()
        .failing_summaries();
    let config = AgentConfig {
        context_tokens: 8000,
        ..config()
    };
    let mut session = Session::start(&w.journal, toolbox, &policy, &model, config, "goal")
        .await
        .unwrap();
    assert!(matches!(
        session.run().await.unwrap(),
        SessionStatus::Completed { .. }
    ));
    let compaction: serde_json::Value = w
        .journal
        .records(session.id())
        .map(|r| r.unwrap())
        .find(|r| r.kind == RecordKind::Compaction)
        .map(|r| serde_json::from_slice(&r.payload).unwrap())
        .expect("a compaction");
    assert_eq!(compaction["method"], "trim");
    assert!(
        compaction["error"]
            .as_str()
            .unwrap()
            .contains("cannot summarise")
    );
    assert!(
        compaction["replacement"]["content"]
            .as_str()
            .unwrap()
            .contains("were removed to fit the context")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_session_rebuilds_the_compacted_context_the_model_last_saw() {
    let w = world();
    let toolbox = common::shared_toolbox(false).await;
    std::fs::write(w.dir.path().join("ws/page.txt"), "p".repeat(4000)).unwrap();
    let model = ScriptedModel::parse(&reading_script(30), "s").unwrap();
    let config = AgentConfig {
        context_tokens: 8000,
        ..config()
    };
    // Pause after 20 tool calls (some compactions in), then resume.
    let tight = w.policy("[session]\nmax_tool_calls = 20\n[tools]\nallow = [\"fs_*\"]\n");
    let id = {
        let mut session =
            Session::start(&w.journal, toolbox, &tight, &model, config.clone(), "goal")
                .await
                .unwrap();
        assert!(matches!(
            session.run().await.unwrap(),
            SessionStatus::BudgetExhausted(_)
        ));
        session.id()
    };
    assert!(count(&w.kinds(id), RecordKind::Compaction) >= 1);
    let raised = w.policy("[tools]\nallow = [\"fs_*\"]\n");
    let mut session = resume(&w, id, toolbox, &raised, &model, config).await;
    assert!(matches!(
        session.run().await.unwrap(),
        SessionStatus::Completed { .. }
    ));
    // Had the resumed context been the full history (20 steps of 4 KB),
    // the first compaction after the resume would have started far over
    // the limit; it starts just over it, from the compacted context.
    let records: Vec<_> = w.journal.records(id).map(|r| r.unwrap()).collect();
    assert_eq!(
        count(&w.kinds(id), RecordKind::ModelRequest),
        31,
        "none twice"
    );
    for r in records.iter().filter(|r| r.kind == RecordKind::Compaction) {
        let c: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
        assert!(c["tokens_before"].as_u64().unwrap() < 8000 + 2000, "{c}");
    }
    assert_eq!(count(&w.kinds(id), RecordKind::ToolResult), 30);
}

/// A model that takes a minute to answer, so that only an interruption
/// ends its call.
const SLOW_ANSWER: &str = r#"{"content": "too late", "delay_ms": 60000}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_cuts_a_model_call_short_and_ends_the_session_in_the_journal() {
    let w = world();
    let toolbox = common::shared_toolbox(false).await;
    let policy = w.policy("[tools]\nallow = [\"fs_*\"]\n");
    let model = ScriptedModel::parse(SLOW_ANSWER, "script").unwrap();
    let mut session = Session::start(&w.journal, toolbox, &policy, &model, config(), "wait")
        .await
        .unwrap();
    let steering = Steering::new();
    session.steer_by(steering.clone());
    tokio::spawn({
        let steering = steering.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            steering.want(Wanted::Cancel);
        }
    });
    assert_eq!(session.run().await.unwrap(), SessionStatus::Cancelled);
    let kinds = w.kinds(session.id());
    assert!(!kinds.contains(&RecordKind::ModelResponse), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&RecordKind::SessionEnded));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_halted_session_stops_without_ending_and_a_resume_goes_on_from_there() {
    let w = world();
    let toolbox = common::shared_toolbox(false).await;
    let policy = w.policy("[tools]\nallow = [\"fs_*\"]\n");
    let slow = ScriptedModel::parse(SLOW_ANSWER, "script").unwrap();
    let mut session = Session::start(&w.journal, toolbox, &policy, &slow, config(), "wait")
        .await
        .unwrap();
    let id = session.id();
    let steering = Steering::new();
    session.steer_by(steering.clone());
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        steering.halt();
    });
    assert_eq!(session.run().await.unwrap(), SessionStatus::Halted);
    drop(session);
    assert!(!w.kinds(id).contains(&RecordKind::SessionEnded));

    let quick = ScriptedModel::parse(r#"{"content": "in time"}"#, "script").unwrap();
    let Resumed::Session(mut resumed) =
        Session::resume(&w.journal, id, toolbox, &policy, &quick, config())
            .await
            .unwrap()
    else {
        panic!("the halted session had ended");
    };
    assert_eq!(
        resumed.run().await.unwrap(),
        SessionStatus::Completed {
            answer: "in time".into()
        }
    );
}
