//! The local backend with the real default model (SmolLM2-135M-Instruct,
//! Q4_1), on the CPU, through the agent loop, the sandbox and the journal:
//! every step is either a final answer or a schema-valid call of an offered
//! tool, which the sandbox runs, and the session ends with the model's
//! answer; all of it is journaled.
//!
//! Needs the model in the cache (`longrun model fetch`) and the built-in
//! tools (`scripts/build-tools`, or `LONGRUN_TOOLS_DIR`).

use std::sync::Arc;

use longrun_host::agent::{AgentConfig, Session, SessionStatus};
use longrun_host::journal::{Journal, RecordKind};
use longrun_host::model::ModelResponse;
use longrun_host::{Policy, Sandbox, SandboxConfig, Toolbox};
use longrun_model_local::LocalModel;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_constrained_session_on_smollm2_calls_a_tool_and_answers() {
    // SAFETY: this binary's only test sets it before mistral.rs starts any
    // thread that could read the environment.
    unsafe { std::env::set_var("HF_HUB_OFFLINE", "1") };
    let path = longrun_host::fetch::cached(longrun_host::fetch::DEFAULT_MODEL)
        .unwrap()
        .expect("the default model is cached: run `longrun model fetch`");
    let model = LocalModel::load("local:smollm2-135m", &path).await.unwrap();

    let tools_dir = longrun_host::tooldir::builtin_tools_dir().expect("built-in tools");
    let sandbox = Arc::new(Sandbox::new(SandboxConfig::default()).unwrap());
    let toolbox = Toolbox::load_dir(sandbox, &tools_dir).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("ws")).unwrap();
    std::fs::write(
        dir.path().join("ws/hello.txt"),
        "Hello from the workspace.\n",
    )
    .unwrap();
    let policy = Policy::parse(
        &format!(
            "[session]\nmax_steps = 4\n[tools]\nallow = [\"fs_list\", \"fs_read\"]\n[[filesystem]]\nhost = \"{}/ws\"\nguest = \"/workspace\"\naccess = \"read-only\"\n",
            dir.path().display()
        ),
        "test-policy",
        dir.path(),
    )
    .unwrap();
    let journal = Journal::open(&dir.path().join("journal")).unwrap();
    let config = AgentConfig {
        max_output_tokens: 128,
        context_tokens: 6000,
        ..AgentConfig::default()
    };
    let mut session = Session::start(
        &journal,
        &toolbox,
        &policy,
        &model,
        config,
        "List the files in /workspace with fs_list, then answer with their names.",
    )
    .await
    .unwrap();
    let status = session.run().await.unwrap();
    eprintln!("status: {status:?}");
    let records: Vec<_> = journal.records(session.id()).map(|r| r.unwrap()).collect();
    let responses: Vec<ModelResponse> = records
        .iter()
        .filter(|r| r.kind == RecordKind::ModelResponse)
        .map(|r| serde_json::from_slice(&r.payload).unwrap())
        .collect();
    for r in &responses {
        eprintln!("{}", serde_json::to_string(&r.message).unwrap());
    }
    let calls = records
        .iter()
        .filter(|r| r.kind == RecordKind::ToolResult)
        .count();
    assert!(calls >= 1, "at least one tool call ran in the sandbox");
    let refused = records
        .iter()
        .filter(|r| r.kind == RecordKind::PolicyDecision)
        .count();
    assert_eq!(
        refused, 0,
        "every call named an offered tool with valid arguments"
    );
    assert_eq!(journal.verify(session.id()), Ok(records.len() as u64));

    // The final answer comes from the session itself: at the latest in its
    // last step, which offers no tools, so the constraint allows only an
    // answer. It is journaled as the session's end.
    let SessionStatus::Completed { answer } = status else {
        panic!("the session ends with an answer, not {status:?}")
    };
    assert!(!answer.trim().is_empty(), "a non-empty answer");
    let last = records.last().unwrap();
    assert_eq!(last.kind, RecordKind::SessionEnded);
    let ended: serde_json::Value = serde_json::from_slice(&last.payload).unwrap();
    assert_eq!(ended["answer"], answer.as_str());
}
