//! Heavy mode (`run --trajectories N`): N trajectories on one goal, each a
//! child session on the session's model with its own copy of the read-write
//! mounts, a comparison step in which the model names the best answer, and
//! the chosen trajectory's changes applied to the real mounts (or only
//! proposed, as the policy says). With the scripted model, the real
//! sandbox and the real journal; and once end to end on the default local
//! model.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use longrun_host::agent::{AgentConfig, AgentError, Session, SessionStatus};
use longrun_host::children::Workers;
use longrun_host::journal::payload::{
    ChangesApplied, ChildStarted, ChosenBy, FileChange, Payload, TrajectoryChosen,
};
use longrun_host::journal::{Journal, SessionId, SessionState, Status, Unpriced};
use longrun_host::model::{Model, ScriptedModel};
use longrun_host::policy::Policy;

/// Each trajectory writes `out.txt` and answers; comparisons are scripted
/// apart (`"purpose": "compare"`).
const TRAJECTORY: &str = r#"
{"tool_calls": [{"name": "fs_write", "arguments": {"path": "/workspace/out.txt", "content": "from a trajectory"}}]}
{"content": "I wrote out.txt"}
"#;

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

    fn ws(&self) -> PathBuf {
        self.dir.path().join("ws")
    }

    /// `/workspace` read-write, `[children]` with `children` (a line or
    /// two of its settings).
    fn policy(&self, children: &str) -> Policy {
        common::policy(&format!(
            "[session]\nmax_steps = 40\nmax_tool_calls = 40\n[tools]\nallow = [\"fs_*\"]\n\
             [children]\nmodels = []\n{children}\n\
             [[filesystem]]\nhost = \"{}\"\nguest = \"/workspace\"\naccess = \"read-write\"\n",
            self.ws().display()
        ))
    }

    fn config(&self) -> AgentConfig {
        AgentConfig {
            first_backoff: Duration::from_millis(1),
            scratch_dir: Some(self.dir.path().join("scratch")),
            ..AgentConfig::default()
        }
    }

    /// Run `n` trajectories of `script` under `policy` to where they stop.
    async fn run(
        &self,
        policy: &Policy,
        script: &str,
        n: u32,
    ) -> (SessionId, Result<SessionStatus, AgentError>) {
        let model: Arc<dyn Model> = Arc::new(ScriptedModel::parse(script, "script").unwrap());
        let toolbox = Arc::new(common::toolbox(false).await);
        let workers = Arc::new(Workers {
            journal: self.journal.clone(),
            toolbox: toolbox.clone(),
            models: BTreeMap::from([("scripted".to_owned(), model.clone())]),
            config: self.config(),
        });
        let mut session = Session::start_labelled(
            &self.journal,
            &toolbox,
            policy,
            &*model,
            self.config(),
            "write out.txt",
            Default::default(),
            Some(n),
        )
        .await
        .unwrap();
        session.with_workers(workers);
        let status = session.run().await;
        (session.id(), status)
    }

    fn payloads(&self, session: SessionId) -> Vec<Payload> {
        self.journal
            .records(session)
            .map(|r| {
                let r = r.unwrap();
                Payload::decode(r.kind, &r.payload).unwrap()
            })
            .collect()
    }

    fn started(&self, session: SessionId) -> Vec<ChildStarted> {
        let payloads = self.payloads(session).into_iter();
        payloads
            .filter_map(|p| match p {
                Payload::ChildStarted(s) => Some(s),
                _ => None,
            })
            .collect()
    }

    fn chosen(&self, session: SessionId) -> TrajectoryChosen {
        let payloads = self.payloads(session).into_iter();
        let mut chosen = payloads.filter_map(|p| match p {
            Payload::TrajectoryChosen(c) => Some(c),
            _ => None,
        });
        let first = chosen.next().expect("a trajectory_chosen record");
        assert!(chosen.next().is_none(), "one choice");
        first
    }

    fn applied(&self, session: SessionId) -> Vec<ChangesApplied> {
        let payloads = self.payloads(session).into_iter();
        payloads
            .filter_map(|p| match p {
                Payload::ChangesApplied(a) => Some(a),
                _ => None,
            })
            .collect()
    }

    fn comparisons(&self, session: SessionId) -> usize {
        let payloads = self.payloads(session).into_iter();
        payloads
            .filter(|p| matches!(p, Payload::ModelResponse(_)))
            .count()
    }

    fn replay_verify_all(&self) {
        let journal = self.dir.path().join("journal");
        common::replay_verify_all(&["--journal".as_ref(), journal.as_os_str()]);
    }
}

/// The files a session's mounts held when it started, from its snapshot.
fn files_at_start(journal: &Journal, session: SessionId) -> Vec<String> {
    let first = journal.records(session).next().unwrap().unwrap();
    let Payload::SessionCreated(created) = Payload::decode(first.kind, &first.payload).unwrap()
    else {
        panic!("session {session} starts with {:?}", first.kind)
    };
    let manifest =
        longrun_host::snapshot::manifest_by_hex(journal, created.snapshot.as_ref().unwrap())
            .unwrap();
    manifest.mounts[0]
        .files
        .iter()
        .map(|f| f.path.clone())
        .collect()
}

fn added(path: &str) -> impl Fn(&FileChange) -> bool + '_ {
    move |c| c.guest == "/workspace" && c.path == path && c.before.is_none() && c.after.is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_trajectory_works_in_its_own_copy_and_the_chosen_ones_changes_reach_the_real_mount() {
    let w = World::new();
    let policy = w.policy("max_concurrent = 2");
    let script = format!("{TRAJECTORY}\n{{\"purpose\": \"compare\", \"content\": \"2\"}}\n");

    let (id, status) = w.run(&policy, &script, 3).await;

    assert_eq!(
        status.unwrap(),
        SessionStatus::Completed {
            answer: "I wrote out.txt".into()
        }
    );
    let started = w.started(id);
    let indexes: Vec<u32> = started
        .iter()
        .map(|s| s.trajectory.as_ref().unwrap().index)
        .collect();
    assert_eq!(indexes, [0, 1, 2], "three trajectories, one each");
    let mut copies = Vec::new();
    for s in &started {
        assert_eq!(
            (s.goal.as_str(), s.model.as_str()),
            ("write out.txt", "scripted")
        );
        let t = s.trajectory.as_ref().unwrap();
        assert_eq!(t.copies.len(), 1);
        let copy = Path::new(&t.copies[0].host);
        assert!(!copy.starts_with(w.ws()), "a copy is not the real mount");
        // The third started after the first two had written out.txt in
        // theirs: it did not see it.
        assert_eq!(
            files_at_start(&w.journal, s.child),
            ["in.txt"],
            "each trajectory starts from the same files"
        );
        assert!(!copy.exists(), "its copy is removed once the session ends");
        copies.push(copy.to_owned());
        let child = SessionState::fold(&w.journal, s.child, &mut Unpriced).unwrap();
        assert_eq!(child.status, Status::Completed);
    }
    copies.dedup();
    assert_eq!(copies.len(), 3, "three copies");
    let chosen = w.chosen(id);
    assert_eq!((chosen.index, chosen.child), (1, started[1].child));
    assert!(
        matches!(chosen.by, ChosenBy::Model { .. }),
        "{:?}",
        chosen.by
    );
    assert!(chosen.apply);
    assert_eq!(chosen.changes.len(), 1, "{:?}", chosen.changes);
    assert!(added("out.txt")(&chosen.changes[0]));
    assert_eq!(
        w.applied(id),
        [ChangesApplied {
            applied: 1,
            conflicts: vec![]
        }]
    );
    assert_eq!(
        std::fs::read_to_string(w.ws().join("out.txt")).unwrap(),
        "from a trajectory"
    );
    assert_eq!(
        std::fs::read_to_string(w.ws().join("in.txt")).unwrap(),
        "input"
    );
    assert_eq!(w.comparisons(id), 1);
    w.replay_verify_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_propose_policy_the_chosen_changes_are_recorded_and_the_real_files_left_alone() {
    let w = World::new();
    let policy = w.policy("trajectory_changes = \"propose\"");
    let script = format!("{TRAJECTORY}\n{{\"purpose\": \"compare\", \"content\": \"1\"}}\n");

    let (id, status) = w.run(&policy, &script, 2).await;

    assert!(matches!(status.unwrap(), SessionStatus::Completed { .. }));
    let chosen = w.chosen(id);
    assert!(!chosen.apply, "only proposed");
    assert!(chosen.changes.iter().any(added("out.txt")));
    assert!(w.applied(id).is_empty());
    assert!(
        !w.ws().join("out.txt").exists(),
        "the real mount is untouched"
    );
    // The chosen copy is kept for a person to look at; the other is gone.
    let started = w.started(id);
    let copy = |i: usize| PathBuf::from(&started[i].trajectory.as_ref().unwrap().copies[0].host);
    assert_eq!(
        std::fs::read_to_string(copy(0).join("out.txt")).unwrap(),
        "from a trajectory"
    );
    assert!(!copy(1).exists());
    w.replay_verify_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_that_names_no_trajectory_is_asked_again_once() {
    let w = World::new();
    let policy = w.policy("");
    let script = format!(
        "{TRAJECTORY}\n{{\"purpose\": \"compare\", \"content\": \"1 and 2 are both fine\"}}\n\
         {{\"purpose\": \"compare\", \"content\": \"2\"}}\n"
    );

    let (id, status) = w.run(&policy, &script, 2).await;

    assert!(matches!(status.unwrap(), SessionStatus::Completed { .. }));
    assert_eq!(w.comparisons(id), 2);
    let chosen = w.chosen(id);
    assert_eq!(chosen.index, 1);
    assert!(chosen.apply);
    assert!(w.ws().join("out.txt").exists());
    w.replay_verify_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_model_names_none_twice_the_first_completed_is_taken_and_only_proposed() {
    let w = World::new();
    let policy = w.policy("");
    let script = format!(
        "{TRAJECTORY}\n{{\"purpose\": \"compare\", \"content\": \"both\", \"repeat\": 2}}\n"
    );

    let (id, status) = w.run(&policy, &script, 2).await;

    assert!(matches!(status.unwrap(), SessionStatus::Completed { .. }));
    assert_eq!(w.comparisons(id), 2, "asked once more, and no more");
    let chosen = w.chosen(id);
    assert_eq!(chosen.index, 0);
    match &chosen.by {
        ChosenBy::FirstCompleted { why } => assert!(why.contains("no number"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(
        !chosen.apply,
        "no real file is written on a choice nobody made"
    );
    assert!(!w.ws().join("out.txt").exists());
    w.replay_verify_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_mode_is_refused_before_anything_is_written_when_it_cannot_run() {
    let w = World::new();
    let model = ScriptedModel::parse(TRAJECTORY, "script").unwrap();
    let toolbox = common::toolbox(false).await;
    let no_children = common::policy(&format!(
        "[tools]\nallow = [\"fs_*\"]\n[[filesystem]]\nhost = \"{}\"\nguest = \"/workspace\"\naccess = \"read-write\"\n",
        w.ws().display()
    ));
    let few_children = w.policy("max_children = 3");
    let cases: [(&Policy, u32, AgentConfig, &str); 4] = [
        (&few_children, 1, w.config(), "at least 2"),
        (&no_children, 2, w.config(), "[children]"),
        (&few_children, 4, w.config(), "max_children is 3"),
        (
            &few_children,
            2,
            AgentConfig {
                scratch_dir: None,
                ..w.config()
            },
            "no scratch directory",
        ),
    ];
    for (policy, n, config, why) in cases {
        let refused = Session::start_labelled(
            &w.journal,
            &toolbox,
            policy,
            &model,
            config,
            "write out.txt",
            Default::default(),
            Some(n),
        )
        .await
        .err()
        .unwrap_or_else(|| panic!("{n} trajectories were not refused ({why})"));
        assert!(refused.to_string().contains(why), "{refused}");
    }
    assert!(w.journal.sessions().unwrap().is_empty(), "nothing written");
}

/// `longrun` killed at random moments while a heavy-mode session runs,
/// then resumed to its end: exactly N trajectories, the comparison asked
/// once, the changes applied once, and the journal verifies.
#[test]
fn heavy_mode_killed_at_random_moments_resumes_to_one_choice_and_one_application() {
    use std::process::{Command, Stdio};
    const KILLS: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::create_dir(p.join("ws")).unwrap();
    std::fs::write(p.join("ws/in.txt"), "input").unwrap();
    std::fs::write(
        p.join("policy.toml"),
        "[session]\nmax_steps = 200\nmax_tool_calls = 200\n[tools]\nallow = [\"fs_write\"]\n\
         [children]\nmodels = []\nmax_concurrent = 2\n\
         [[filesystem]]\nhost = \"ws\"\nguest = \"/workspace\"\naccess = \"read-write\"\n",
    )
    .unwrap();
    let mut lines: Vec<String> = (0..40)
        .map(|i| {
            format!(
                r#"{{"delay_ms": 20, "tool_calls": [{{"name": "fs_write", "arguments": {{"path": "/workspace/f{i}.txt", "content": "x", "append": true}}}}]}}"#
            )
        })
        .collect();
    lines.push(r#"{"content": "wrote forty files"}"#.into());
    lines.push(r#"{"purpose": "compare", "delay_ms": 300, "content": "3"}"#.into());
    std::fs::write(p.join("script.jsonl"), lines.join("\n")).unwrap();
    let journal_dir = p.join("journal");
    let mut rng = common::Rng::from_env("LONGRUN_HEAVY_SEED");
    let longrun = |resume: bool, stderr: Stdio| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_longrun"));
        if resume {
            command.arg("resume");
        } else {
            command.args(["run", "write the files", "--trajectories", "3"]);
        }
        command
            .arg("--policy")
            .arg(p.join("policy.toml"))
            .arg("--model")
            .arg(format!("scripted:{}", p.join("script.jsonl").display()))
            .arg("--journal")
            .arg(&journal_dir)
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
    // Where the session was when each kill landed: trajectories started and
    // ended, whether one was chosen, whether it ended.
    let phase = || {
        let j = Journal::open_read_only(&journal_dir, Default::default()).ok()?;
        let parent = *j.sessions().ok()?.first()?;
        let state = SessionState::fold(&j, parent, &mut Unpriced).ok()?;
        let ended = state
            .children
            .values()
            .filter(|c| c.ended.is_some())
            .count();
        Some((
            state.children.len(),
            ended,
            state.chosen.is_some(),
            state.status.ended(),
        ))
    };
    let mut phases = Vec::new();
    for _ in 0..KILLS {
        let mut child = longrun(started(), Stdio::null());
        std::thread::sleep(Duration::from_millis(rng.next() % 400));
        child.kill().unwrap();
        child.wait().unwrap();
        let now = phase();
        phases.push(now);
        if now.is_some_and(|(_, _, _, ended)| ended) {
            break;
        }
    }
    println!("after each kill (started, ended, chosen, session ended): {phases:?}");
    assert!(
        phases
            .iter()
            .any(|p| p.is_some_and(|(started, ended, _, _)| started > ended)),
        "some kill landed while trajectories ran"
    );
    if started() {
        let last = longrun(true, Stdio::piped()).wait_with_output().unwrap();
        let said = String::from_utf8_lossy(&last.stderr);
        // Killed after its end was recorded, there is nothing to resume.
        assert!(
            last.status.success() || said.contains("no unfinished session"),
            "the last run failed: {said}"
        );
    } else {
        let first = longrun(false, Stdio::piped()).wait_with_output().unwrap();
        assert!(
            first.status.success(),
            "{}",
            String::from_utf8_lossy(&first.stderr)
        );
    }

    let journal = Journal::open(&journal_dir).unwrap();
    let parent = journal.sessions().unwrap()[0];
    let state = SessionState::fold(&journal, parent, &mut Unpriced).unwrap();
    assert_eq!(state.status, Status::Completed);
    let mut indexes: Vec<u32> = state
        .children
        .values()
        .map(|c| c.started.trajectory.as_ref().unwrap().index)
        .collect();
    indexes.sort();
    assert_eq!(indexes, [0, 1, 2], "each trajectory started once");
    let chosen = state.chosen.as_ref().expect("chosen");
    assert_eq!(chosen.index, 2);
    assert!(
        state
            .applied
            .as_ref()
            .is_some_and(|a| a.conflicts.is_empty()),
        "{:?}",
        state.applied
    );
    let responses = journal
        .records(parent)
        .filter(|r| r.as_ref().unwrap().kind == longrun_host::journal::RecordKind::ModelResponse)
        .count();
    assert_eq!(responses, 1, "the comparison was asked once");
    // The chosen copy's files, each written once there (or reported as of
    // unknown outcome and absent or written once), are in the real mount.
    for (path, copy) in chosen.changes.iter().map(|c| (&c.path, &c.after)) {
        let real = std::fs::read(p.join("ws").join(path)).unwrap();
        assert_eq!(
            Some(longrun_host::journal::hex(&blake3::hash(&real).into())),
            *copy
        );
        assert!(real.len() <= 1, "{path} written at most once");
    }
    assert_eq!(
        std::fs::read_to_string(p.join("ws/in.txt")).unwrap(),
        "input"
    );
    common::replay_verify_all(&["--journal".as_ref(), journal_dir.as_os_str()]);
}

/// Item 3 of issue 19: four trajectories on the default local model
/// (SmolLM2-135M on the CPU), small budgets, the comparison step on the
/// same model, end to end through `longrun run --trajectories 4`.
#[test]
fn four_trajectories_and_a_comparison_run_end_to_end_on_the_default_model() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::create_dir(p.join("ws")).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("workspace/hello.txt"),
        p.join("ws/hello.txt"),
    )
    .unwrap();
    std::fs::write(
        p.join("policy.toml"),
        "[session]\nmax_steps = 20\nmax_tool_calls = 15\nmax_input_tokens = 400_000\n\
         max_output_tokens = 40_000\nmax_wall_time = \"15m\"\n\
         [tools]\nallow = [\"fs_list\", \"fs_read\"]\n\
         [children]\nmodels = []\nmax_concurrent = 4\n\
         [[filesystem]]\nhost = \"ws\"\nguest = \"/workspace\"\naccess = \"read-write\"\n",
    )
    .unwrap();
    let journal_dir = p.join("journal");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_longrun"))
        .args([
            "run",
            "List the files in /workspace, read hello.txt, and answer with what it says.",
            "--trajectories",
            "4",
            "--model",
            "local:smollm2-135m",
            "--max-output-tokens",
            "256",
        ])
        .arg("--policy")
        .arg(p.join("policy.toml"))
        .arg("--journal")
        .arg(&journal_dir)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");

    let journal = Journal::open(&journal_dir).unwrap();
    let parent = journal.sessions().unwrap()[0];
    let state = SessionState::fold(&journal, parent, &mut Unpriced).unwrap();
    assert_eq!(state.status, Status::Completed, "{said}");
    assert_eq!(state.children.len(), 4, "four trajectories");
    let mut completed = 0;
    for child in state.children.values() {
        let t = child.started.trajectory.as_ref().expect("a trajectory");
        assert_eq!(t.copies.len(), 1, "its own copy of the read-write mount");
        assert_eq!(files_at_start(&journal, child.started.child), ["hello.txt"]);
        assert!(
            !Path::new(&t.copies[0].host).exists(),
            "no changes to keep: the copy is removed"
        );
        let ended = child.ended.as_ref().expect("collected");
        completed += usize::from(ended.status == Status::Completed);
        println!(
            "trajectory {}: {} {:?}",
            t.index,
            ended.status.as_str(),
            ended.answer
        );
    }
    let chosen = state.chosen.as_ref().expect("a trajectory was chosen");
    println!("chosen: trajectory {} ({:?})", chosen.index, chosen.by);
    assert!(completed >= 2, "at least two to compare: {said}");
    let responses = journal
        .records(parent)
        .filter(|r| r.as_ref().unwrap().kind == longrun_host::journal::RecordKind::ModelResponse)
        .count();
    assert!(
        (1..=2).contains(&responses),
        "the comparison step, journaled ({responses} replies)"
    );
    assert!(chosen.changes.is_empty(), "reading changes nothing");
    assert_eq!(
        std::fs::read(p.join("ws/hello.txt")).unwrap(),
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("workspace/hello.txt")).unwrap()
    );
    common::replay_verify_all(&["--journal".as_ref(), journal_dir.as_os_str()]);
}

/// `replay verify` holds heavy mode's records to the policy in force: a
/// journal rewritten (chain and all) to say that changes chosen under a
/// `propose` policy were to be applied, or whose change names contents the
/// record does not reference, fails, naming why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_refuses_changes_applied_against_the_policy_or_not_covered_by_the_chain() {
    let w = World::new();
    let policy = w.policy("trajectory_changes = \"propose\"");
    let script = format!("{TRAJECTORY}\n{{\"purpose\": \"compare\", \"content\": \"1\"}}\n");
    let (id, status) = w.run(&policy, &script, 2).await;
    assert!(matches!(status.unwrap(), SessionStatus::Completed { .. }));
    let records: Vec<_> = w.journal.records(id).map(Result::unwrap).collect();
    // Closed, so that the rewrite can open it.
    let World { dir, journal } = w;
    drop(journal);
    let source = dir.path().join("journal");
    let forge = |edit: fn(&mut TrajectoryChosen)| {
        move |r: &longrun_host::journal::Record| match Payload::decode(r.kind, &r.payload) {
            Ok(Payload::TrajectoryChosen(mut chosen)) => {
                edit(&mut chosen);
                Payload::TrajectoryChosen(chosen).encode()
            }
            _ => r.payload.clone(),
        }
    };
    let audit = |name: &str, edit: fn(&mut TrajectoryChosen)| {
        let into = dir.path().join(name);
        let forged = common::tamper::rewrite(&records, &source, &into, forge(edit));
        let journal = Journal::open(&into).unwrap();
        longrun_replay::audit::verify(&journal, forged, None)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };

    assert_eq!(audit("as-recorded", |_| {}), Ok(()));
    let applied = audit("applied", |c| c.apply = true).unwrap_err();
    assert!(
        applied.contains("are to be applied where the policy in force (propose)"),
        "{applied}"
    );
    let uncovered = audit("uncovered", |c| {
        c.changes[0].after = Some("00".repeat(32));
    })
    .unwrap_err();
    assert!(
        uncovered.contains("names contents the record does not reference"),
        "{uncovered}"
    );
}
