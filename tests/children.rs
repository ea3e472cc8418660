//! Child sessions with the scripted model, the real sandbox and the real
//! journal: a planner starts workers on a "cheaper" model in parallel and
//! collects their answers; a child runs only under a narrowing of its
//! parent's policy; the parent's budgets count the whole tree.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use longrun_host::agent::{AgentConfig, Session, SessionStatus};
use longrun_host::children::Workers;
use longrun_host::journal::payload::{ChildEnded, ChildStarted, Payload, ToolResult};
use longrun_host::journal::{Journal, RecordKind, SessionId, SessionState, Status, Unpriced};
use longrun_host::model::{Model, ScriptedModel};
use longrun_host::policy::Policy;

struct World {
    dir: tempfile::TempDir,
    journal: Arc<Journal>,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("ws")).unwrap();
        std::fs::write(dir.path().join("ws/in.txt"), "input").unwrap();
        let journal = Journal::open(&dir.path().join("journal")).unwrap();
        World { dir, journal }
    }

    /// `[tools]` allows `fs_*`; `/workspace` is mounted with `access`.
    fn policy(&self, session: &str, access: &str) -> Policy {
        common::policy(&format!(
            "[session]\n{session}\n[tools]\nallow = [\"fs_*\"]\n\
             [children]\nmodels = [\"worker\"]\nmax_concurrent = 3\n\
             [[filesystem]]\nhost = \"{}/ws\"\nguest = \"/workspace\"\naccess = \"{access}\"\n",
            self.dir.path().display()
        ))
    }

    async fn workers(&self, worker_script: &str) -> Arc<Workers> {
        let worker: Arc<dyn Model> = Arc::new(
            ScriptedModel::parse(worker_script, "worker")
                .unwrap()
                .named("worker"),
        );
        Arc::new(Workers {
            journal: self.journal.clone(),
            toolbox: Arc::new(common::toolbox(false).await),
            models: BTreeMap::from([("worker".to_owned(), worker)]),
            config: config(),
        })
    }

    /// Run a planner with `script` under `policy` to where it stops.
    async fn plan(
        &self,
        policy: &Policy,
        script: &str,
        workers: Arc<Workers>,
    ) -> (SessionId, SessionStatus) {
        let planner = ScriptedModel::parse(script, "planner")
            .unwrap()
            .named("planner");
        let toolbox = workers.toolbox.clone();
        let mut session = Session::start(
            &self.journal,
            &toolbox,
            policy,
            &planner,
            config(),
            "plan the work",
        )
        .await
        .unwrap();
        session.with_workers(workers);
        let status = session.run().await.unwrap();
        (session.id(), status)
    }

    fn payloads(&self, session: SessionId) -> Vec<(u64, Payload)> {
        self.journal
            .records(session)
            .map(|r| {
                let r = r.unwrap();
                (r.seq, Payload::decode(r.kind, &r.payload).unwrap())
            })
            .collect()
    }

    /// What `pick` takes from the records of `session`, with their numbers.
    fn pick<T>(&self, session: SessionId, pick: impl Fn(Payload) -> Option<T>) -> Vec<(u64, T)> {
        self.payloads(session)
            .into_iter()
            .filter_map(|(seq, p)| pick(p).map(|t| (seq, t)))
            .collect()
    }

    fn started(&self, session: SessionId) -> Vec<(u64, ChildStarted)> {
        self.pick(session, |p| match p {
            Payload::ChildStarted(s) => Some(s),
            _ => None,
        })
    }

    fn ended(&self, session: SessionId) -> Vec<ChildEnded> {
        let ended = self.pick(session, |p| match p {
            Payload::ChildEnded(e) => Some(e),
            _ => None,
        });
        ended.into_iter().map(|(_, e)| e).collect()
    }

    fn results(&self, session: SessionId) -> Vec<ToolResult> {
        let results = self.pick(session, |p| match p {
            Payload::ToolResult(r) => Some(r),
            _ => None,
        });
        results.into_iter().map(|(_, r)| r).collect()
    }

    fn replay_verify_all(&self) {
        let journal = self.dir.path().join("journal");
        common::replay_verify_all(&["--journal".as_ref(), journal.as_os_str()]);
    }
}

fn config() -> AgentConfig {
    AgentConfig {
        first_backoff: Duration::from_millis(1),
        ..AgentConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planner_starts_three_workers_at_once_and_collects_their_answers() {
    let w = World::new();
    let policy = w.policy("max_steps = 40\nmax_tool_calls = 40", "read-only");
    let planner = r#"
{"tool_calls": [{"name": "start_child", "arguments": {"goal": "part 1", "model": "worker", "tools": ["fs_read"], "budgets": {"max_steps": 3, "max_tool_calls": 2}}}, {"name": "start_child", "arguments": {"goal": "part 2", "model": "worker", "tools": ["fs_read"], "budgets": {"max_steps": 3, "max_tool_calls": 2}}}, {"name": "start_child", "arguments": {"goal": "part 3", "model": "worker", "tools": ["fs_read"], "budgets": {"max_steps": 3, "max_tool_calls": 2}}}]}
{"tool_calls": [{"name": "wait_children", "arguments": {}}]}
{"content": "all three parts are done"}
"#;
    let worker = r#"
{"delay_ms": 300, "tool_calls": [{"name": "fs_read", "arguments": {"path": "/workspace/in.txt"}}]}
{"content": "my part is done"}
"#;
    let (parent, status) = w.plan(&policy, planner, w.workers(worker).await).await;
    assert_eq!(
        status,
        SessionStatus::Completed {
            answer: "all three parts are done".into()
        }
    );

    // Three children, linked both ways, each with its own chain.
    let started = w.started(parent);
    assert_eq!(started.len(), 3);
    let mut spans = Vec::new();
    for (seq, child) in &started {
        let created = w.payloads(child.child);
        let Payload::SessionCreated(created) = &created[0].1 else {
            panic!("a child's first record is session_created")
        };
        let link = created
            .spawned_by
            .as_ref()
            .expect("the child names its parent");
        assert_eq!((link.session, link.seq), (parent, *seq));
        assert!(w.journal.verify(child.child).is_ok());
        // Its policy is the narrowing asked for.
        let child_policy =
            Policy::parse(&child.policy_text, "child", std::path::Path::new("/")).unwrap();
        assert_eq!(created.policy_text, child.policy_text);
        assert_eq!(child_policy.session.max_tool_calls, Some(2));
        let records: Vec<_> = w.journal.records(child.child).map(Result::unwrap).collect();
        spans.push((records[0].unix_millis, records.last().unwrap().unix_millis));
    }
    // They ran at once: each started before any of them ended.
    let last_start = spans.iter().map(|s| s.0).max().unwrap();
    let first_end = spans.iter().map(|s| s.1).min().unwrap();
    assert!(last_start < first_end, "{spans:?}");

    // Their answers reached the planner, and what they spent counts as its.
    let ended = w.ended(parent);
    assert_eq!(ended.len(), 3);
    for child in &ended {
        assert_eq!(child.status, Status::Completed);
        assert_eq!(child.answer.as_deref(), Some("my part is done"));
        assert_eq!(child.spent.tool_calls, 1);
    }
    let wait = w.results(parent).pop().unwrap();
    assert!(wait.output.unwrap().contains("my part is done"));
    let state = SessionState::fold(&w.journal, parent, &mut Unpriced).unwrap();
    // Its own four calls, and one of each child's.
    assert_eq!(state.used.tool_calls, 4 + 3);
    assert_eq!(state.children.len(), 3);
    w.replay_verify_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_calling_a_tool_outside_its_narrowed_policy_is_refused() {
    let w = World::new();
    let policy = w.policy("max_steps = 40", "read-write");
    let planner = r#"
{"tool_calls": [{"name": "start_child", "arguments": {"goal": "read only", "model": "worker", "tools": ["fs_read"]}}]}
{"tool_calls": [{"name": "wait_children", "arguments": {}}]}
{"content": "done"}
"#;
    let worker = r#"
{"tool_calls": [{"name": "fs_write", "arguments": {"path": "/workspace/out.txt", "content": "x"}}]}
{"content": "I could not write"}
"#;
    let (parent, status) = w.plan(&policy, planner, w.workers(worker).await).await;
    assert!(matches!(status, SessionStatus::Completed { .. }));
    let child = w.started(parent)[0].1.child;
    let kinds: Vec<RecordKind> = w.journal.records(child).map(|r| r.unwrap().kind).collect();
    assert!(kinds.contains(&RecordKind::PolicyDecision), "{kinds:?}");
    assert!(!kinds.contains(&RecordKind::ToolIntent), "{kinds:?}");
    assert!(!w.dir.path().join("ws/out.txt").exists());
    w.replay_verify_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_asking_for_more_budget_than_is_left_or_a_wider_mount_is_refused_at_start() {
    let w = World::new();
    let policy = w.policy(
        "max_steps = 40\nmax_cost_usd = 1.0\n\
         [prices.planner]\ninput_per_million = 0.0\noutput_per_million = 0.0\n\
         [prices.worker]\ninput_per_million = 0.0\noutput_per_million = 0.0",
        "read-only",
    );
    let planner = r#"
{"tool_calls": [{"name": "start_child", "arguments": {"goal": "greedy", "model": "worker", "budgets": {"max_steps": 100}}}, {"name": "start_child", "arguments": {"goal": "writer", "model": "worker", "mounts": [{"path": "/workspace", "access": "read-write"}]}}, {"name": "start_child", "arguments": {"goal": "elsewhere", "model": "worker", "mounts": [{"path": "/etc", "access": "read-only"}]}}, {"name": "start_child", "arguments": {"goal": "rich", "model": "worker", "budgets": {"max_cost_usd": 2.0}}}, {"name": "start_child", "arguments": {"goal": "other model", "model": "planner"}}]}
{"content": "nothing started"}
"#;
    let (parent, status) = w
        .plan(&policy, planner, w.workers("{\"content\": \"x\"}").await)
        .await;
    assert!(matches!(status, SessionStatus::Completed { .. }));
    let errors: Vec<String> = w
        .results(parent)
        .into_iter()
        .map(|r| r.error.expect("refused"))
        .collect();
    let expected = [
        "max_steps 100 is more than the parent's 39 left",
        "read-write, and the parent's /workspace is read-only",
        "mount /etc is not at or beneath",
        "max_cost_usd 2.0 is more than",
        "model \"planner\" is not one a child may run on",
    ];
    assert_eq!(errors.len(), expected.len());
    for (error, says) in errors.iter().zip(expected) {
        assert!(error.contains(says), "{error}");
    }
    assert!(w.started(parent).is_empty());
    assert_eq!(w.journal.sessions().unwrap(), [parent]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_parents_budget_stops_the_tree_when_the_children_spend_it() {
    let w = World::new();
    let policy = w.policy("max_tool_calls = 6", "read-only");
    let planner = r#"
{"tool_calls": [{"name": "start_child", "arguments": {"goal": "read a lot", "model": "worker", "budgets": {"max_tool_calls": 4}}}]}
{"tool_calls": [{"name": "wait_children", "arguments": {}}]}
{"tool_calls": [{"name": "start_child", "arguments": {"goal": "read more", "model": "worker", "budgets": {"max_tool_calls": 1}}}]}
{"content": "done"}
"#;
    let read =
        r#"{"tool_calls": [{"name": "fs_read", "arguments": {"path": "/workspace/in.txt"}}]}"#;
    let worker = [read; 10].join("\n");
    let (parent, status) = w.plan(&policy, planner, w.workers(&worker).await).await;
    // The child spent the four calls set aside for it; with the planner's
    // own two, the tree has spent the six it had: no further child starts.
    let SessionStatus::BudgetExhausted(exceeded) = status else {
        panic!("the planner stops: {status:?}")
    };
    assert_eq!(exceeded.kind, longrun_host::budget::BudgetKind::ToolCalls);
    let ended = w.ended(parent);
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].spent.tool_calls, 4);
    assert_eq!(ended[0].status, Status::BudgetExhausted);
    assert_eq!(w.started(parent).len(), 1);
    let state = SessionState::fold(&w.journal, parent, &mut Unpriced).unwrap();
    assert_eq!(state.used.tool_calls, 6);
    w.replay_verify_all();
}

#[test]
fn a_tree_killed_at_30_random_moments_completes_with_exactly_the_children_asked_for() {
    use std::process::{Command, Stdio};
    const STEPS: usize = 100;
    const KILLS: usize = 30;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::create_dir(p.join("ws")).unwrap();
    std::fs::write(
        p.join("policy.toml"),
        "[session]\nmax_tool_calls = 500\n[tools]\nallow = [\"fs_write\"]\n\
         [children]\nmodels = [\"a\", \"b\", \"c\"]\nmax_concurrent = 3\n\
         [[filesystem]]\nhost = \"ws\"\nguest = \"/workspace\"\naccess = \"read-write\"\n",
    )
    .unwrap();
    let start = |name: &str| {
        format!(
            r#"{{"name": "start_child", "arguments": {{"goal": "write the {name} files", "model": "{name}", "budgets": {{"max_tool_calls": 150}}}}}}"#
        )
    };
    std::fs::write(
        p.join("planner.jsonl"),
        format!(
            "{{\"tool_calls\": [{}, {}, {}]}}\n{{\"tool_calls\": [{{\"name\": \"wait_children\", \"arguments\": {{}}}}]}}\n{{\"content\": \"all written\"}}\n",
            start("a"),
            start("b"),
            start("c")
        ),
    )
    .unwrap();
    for name in ["a", "b", "c"] {
        let mut lines: Vec<String> = (0..STEPS)
            .map(|i| {
                format!(
                    r#"{{"delay_ms": 30, "tool_calls": [{{"name": "fs_write", "arguments": {{"path": "/workspace/{name}-{i}.txt", "content": "x", "append": true}}}}]}}"#
                )
            })
            .collect();
        lines.push(format!(r#"{{"content": "{name} written"}}"#));
        std::fs::write(p.join(format!("{name}.jsonl")), lines.join("\n")).unwrap();
    }
    let journal_dir = p.join("journal");
    let mut rng = common::Rng::from_env("LONGRUN_CHILDREN_SEED");
    let longrun = |resume: bool, stderr: Stdio| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_longrun"));
        if resume {
            command.arg("resume");
        } else {
            command.args(["run", "plan the writing"]);
        }
        command
            .arg("--policy")
            .arg(p.join("policy.toml"))
            .arg("--model")
            .arg(format!("scripted:{}", p.join("planner.jsonl").display()))
            .arg("--journal")
            .arg(&journal_dir);
        for name in ["a", "b", "c"] {
            command.arg("--worker").arg(format!(
                "{name}=scripted:{}",
                p.join(format!("{name}.jsonl")).display()
            ));
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap()
    };
    let started = || {
        Journal::open_read_only(&journal_dir, Default::default())
            .is_ok_and(|j| !j.sessions().unwrap_or_default().is_empty())
    };
    let ended = || {
        Journal::open_read_only(&journal_dir, Default::default()).is_ok_and(|j| {
            j.sessions()
                .unwrap_or_default()
                .first()
                .is_some_and(|parent| {
                    SessionState::fold(&j, *parent, &mut Unpriced)
                        .is_ok_and(|state| state.status.ended())
                })
        })
    };
    for kill in 0..KILLS {
        let mut child = longrun(started(), Stdio::null());
        std::thread::sleep(Duration::from_millis(rng.next() % 200));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!ended(), "the tree ended after only {} kills", kill + 1);
    }
    let last = longrun(started(), Stdio::piped())
        .wait_with_output()
        .unwrap();
    assert!(
        last.status.success(),
        "the last run failed: {}",
        String::from_utf8_lossy(&last.stderr)
    );

    let journal = Journal::open(&journal_dir).unwrap();
    let sessions = journal.sessions().unwrap();
    let parent = sessions[0];
    let state = SessionState::fold(&journal, parent, &mut Unpriced).unwrap();
    assert_eq!(state.status, Status::Completed);
    // Exactly the three children the planner asked for: one per call.
    assert_eq!(state.children.len(), 3, "{:?}", state.children.keys());
    assert_eq!(sessions.len(), 4, "the parent and its three children");
    let mut unknown = 0;
    for child in state.children.values() {
        let ended = child.ended.as_ref().expect("collected");
        assert_eq!(ended.status, Status::Completed, "{ended:?}");
        let name = &child.started.model;
        let mut intents: BTreeMap<String, usize> = BTreeMap::new();
        let mut results: BTreeMap<String, ToolResult> = BTreeMap::new();
        for record in journal.records(child.started.child) {
            let record = record.unwrap();
            match Payload::decode(record.kind, &record.payload).unwrap() {
                Payload::ToolIntent(intent) => *intents.entry(intent.call_id).or_default() += 1,
                Payload::ToolResult(result) => {
                    let id = result.call_id.clone();
                    assert!(
                        results.insert(id.clone(), result).is_none(),
                        "{id} answered twice"
                    );
                }
                _ => {}
            }
        }
        for step in 0..STEPS {
            let id = format!("call_{step}_0");
            assert_eq!(intents.get(&id), Some(&1), "child {name}: {id}");
            let content = std::fs::read_to_string(p.join(format!("ws/{name}-{step}.txt")))
                .unwrap_or_default();
            match &results[&id].error {
                None => assert_eq!(content, "x", "child {name}: {id} ran once"),
                Some(e) => {
                    assert!(e.starts_with("outcome unknown"), "{e}");
                    assert!(content.len() <= 1, "{id} never ran twice");
                    unknown += 1;
                }
            }
        }
    }
    common::replay_verify_all(&["--journal".as_ref(), journal_dir.as_os_str()]);
    println!("{KILLS} kills; {unknown} child calls reported as outcome unknown");
}

/// `longrun replay` with `args` on the world's journal: its standard output.
fn replay(w: &World, args: &[&str]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_longrun"))
        .arg("replay")
        .args(args)
        .arg("--journal")
        .arg(w.dir.path().join("journal"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "replay {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tree_shows_in_replay_list_show_and_stats_with_each_nodes_and_each_models_cost() {
    let w = World::new();
    let policy = w.policy(
        "max_steps = 40\n[prices.planner]\ninput_per_million = 10.0\noutput_per_million = 30.0\n\
         [prices.worker]\ninput_per_million = 1.0\noutput_per_million = 2.0",
        "read-only",
    );
    let usage = r#""usage": {"input_tokens": 1000, "output_tokens": 100}"#;
    let planner = format!(
        r#"
{{"tool_calls": [{{"name": "start_child", "arguments": {{"goal": "part 1", "model": "worker"}}}}, {{"name": "start_child", "arguments": {{"goal": "part 2", "model": "worker"}}}}], {usage}}}
{{"tool_calls": [{{"name": "wait_children", "arguments": {{}}}}], {usage}}}
{{"content": "both parts done", {usage}}}
"#
    );
    let worker = format!(
        r#"
{{"tool_calls": [{{"name": "fs_read", "arguments": {{"path": "/workspace/in.txt"}}}}], {usage}}}
{{"content": "my part is done", {usage}}}
"#
    );
    let (parent, status) = w.plan(&policy, &planner, w.workers(&worker).await).await;
    assert!(matches!(status, SessionStatus::Completed { .. }));
    let children: Vec<SessionId> = w.started(parent).iter().map(|(_, s)| s.child).collect();
    assert_eq!(children.len(), 2);

    // list --tree: each child on the line after its parent, indented.
    let list = replay(&w, &["list", "--tree"]);
    let firsts: Vec<&str> = list
        .lines()
        .skip(1)
        .map(|l| l.get(..9).unwrap_or(l).trim_end())
        .collect();
    assert_eq!(
        firsts,
        [
            parent.to_string(),
            format!("  {}", children[0]),
            format!("  {}", children[1])
        ],
        "{list}"
    );

    // show --follow: the parent's timeline, then each child's, linked.
    let show = replay(&w, &["show", &parent.to_string(), "--follow", "--no-pager"]);
    for child in &children {
        let header = format!("session {child} (child of session {parent}");
        assert!(show.contains(&header), "{show}");
        assert!(show.contains(&format!("started by session {parent} at record")));
    }
    let sections: Vec<&str> = show.split("── session ").collect();
    assert_eq!(
        sections.len(),
        3,
        "the parent's timeline, then one per child: {show}"
    );
    assert!(
        sections[0].contains("child      session 1 completed"),
        "{show}"
    );
    for section in &sections[1..] {
        assert!(section.contains("answer     my part is done"), "{section}");
    }

    // stats: each node's own use and each model's.
    let stats: serde_json::Value =
        serde_json::from_str(&replay(&w, &["stats", &parent.to_string(), "--json"])).unwrap();
    let tree = stats["tree"].as_array().unwrap();
    assert_eq!(tree.len(), 3);
    assert_eq!(tree[0]["own"]["steps"], 3);
    assert_eq!(tree[0]["own"]["input_tokens"], 3000);
    // 3 planner steps at $10/M in and $30/M out; 2 × 2 worker steps at $1/M and $2/M.
    let planner_cost = 3.0 * (1000.0 * 10.0 + 100.0 * 30.0) / 1e6;
    let workers_cost = 4.0 * (1000.0 * 1.0 + 100.0 * 2.0) / 1e6;
    let close = |v: &serde_json::Value, x: f64| (v.as_f64().unwrap() - x).abs() < 1e-9;
    assert!(
        close(&tree[0]["own"]["cost_usd"], planner_cost),
        "{}",
        tree[0]
    );
    assert!(
        close(&tree[0]["total"]["cost_usd"], planner_cost + workers_cost),
        "{}",
        tree[0]
    );
    for node in &tree[1..] {
        assert_eq!(node["depth"], 1);
        assert_eq!(node["own"]["steps"], 2);
        assert!(
            close(&node["own"]["cost_usd"], workers_cost / 2.0),
            "{node}"
        );
    }
    let by_model = &stats["by_model"];
    assert!(
        close(&by_model["planner"]["cost_usd"], planner_cost),
        "{by_model}"
    );
    assert!(
        close(&by_model["worker"]["cost_usd"], workers_cost),
        "{by_model}"
    );
    assert_eq!(by_model["worker"]["steps"], 4);
    let text = replay(&w, &["stats", &parent.to_string(), "--no-pager"]);
    assert!(text.contains("per model"), "{text}");
}
