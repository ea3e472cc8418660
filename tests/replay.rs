//! `longrun replay` as an auditor uses it, on journals written by real
//! sessions (`longrun run` with the scripted model, the real tools in the
//! real sandbox): the export round-trips, verification catches each kind
//! of tampering and names the record, re-execution finds exactly the calls
//! a changed tool answers differently, and a fork starts where its parent
//! was and goes its own way.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use longrun_host::agent::SessionCreated;
use longrun_host::journal::{Journal, JournalOptions, Record, RecordKind, SessionId};
use longrun_replay::export::parse_line;
use serde_json::Value;

mod common;
use common::tamper::{key, rewrite, tamper};

/// What the session is asked to do: write a file, read it and a file that
/// was there before, count words (one text with a hyphen, one without),
/// echo, list, write and read back a file long enough for a blob, answer.
const SCRIPT: &str = r#"
{"reasoning_content": "Write the notes first.", "tool_calls": [{"name": "fs_write", "arguments": {"path": "/workspace/notes.txt", "content": "alpha beta-gamma"}}]}
{"tool_calls": [{"name": "fs_read", "arguments": {"path": "/workspace/notes.txt"}}, {"name": "word_count", "arguments": {"text": "alpha beta-gamma"}}]}
{"tool_calls": [{"name": "echo", "arguments": {"text": "plain words"}}, {"name": "word_count", "arguments": {"text": "no hyphen here"}}, {"name": "fs_read", "arguments": {"path": "/workspace/seed.txt"}}]}
{"tool_calls": [{"name": "fs_list", "arguments": {"path": "/workspace"}}, {"name": "fs_write", "arguments": {"path": "/workspace/long.txt", "content": "LONG"}}]}
{"tool_calls": [{"name": "fs_read", "arguments": {"path": "/workspace/long.txt"}}]}
{"content": "The notes are written and counted."}
"#;

const POLICY: &str = r#"
[session]
max_steps = 50
max_tool_calls = 50

[[filesystem]]
host = "workspace"
guest = "/workspace"
access = "read-write"

[tools]
allow = ["fs_*", "echo", "word_count"]
"#;

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        std::fs::create_dir_all(root.join("workspace")).unwrap();
        std::fs::write(
            root.join("workspace/seed.txt"),
            "seed from before the session",
        )
        .unwrap();
        std::fs::write(root.join("policy.toml"), POLICY).unwrap();
        Fixture { _dir: dir, root }
    }

    fn journal(&self) -> PathBuf {
        self.root.join("journal")
    }

    /// Run `longrun` with `--journal` pointing at the fixture's journal.
    fn longrun(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_longrun"))
            .args(args)
            .arg("--journal")
            .arg(self.journal())
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .output()
            .expect("longrun runs")
    }

    /// A session with the scripted model, to its end; its id.
    fn run_session(&self) -> SessionId {
        let script = self.root.join("script.jsonl");
        let long = "0123456789".repeat(300);
        std::fs::write(&script, SCRIPT.replace("LONG", &long)).unwrap();
        let out = self.longrun(&[
            "run",
            "Write and count the notes",
            "--policy",
            "policy.toml",
            "--model",
            &format!("scripted:{}", script.display()),
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        self.sessions().last().copied().unwrap()
    }

    fn sessions(&self) -> Vec<SessionId> {
        let out = self.longrun(&["replay", "list", "--json"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["session"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    }

    /// The records of a session, read straight from the journal.
    fn records(&self, session: SessionId) -> Vec<Record> {
        let journal = Journal::open_with(&self.journal(), JournalOptions::AUDIT).unwrap();
        journal.records(session).map(Result::unwrap).collect()
    }

    /// `replay verify` of one session: whether it passed, and what it said.
    fn verify(&self, session: SessionId, extra: &[&str]) -> (bool, String) {
        let mut args = vec!["replay", "verify"];
        let id = session.to_string();
        args.push(&id);
        args.extend_from_slice(extra);
        let out = self.longrun(&args);
        (out.status.success(), text(&out.stdout) + &text(&out.stderr))
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The sequence numbers of the records of `kind` whose payload mentions
/// `needle`.
fn seqs_of(records: &[Record], kind: RecordKind, needle: &str) -> Vec<u64> {
    records
        .iter()
        .filter(|r| r.kind == kind && String::from_utf8_lossy(&r.payload).contains(needle))
        .map(|r| r.seq)
        .collect()
}

/// The hash of every file under a directory, by path, to show nothing was
/// written.
fn contents(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(contents(&path));
        } else {
            let hash = blake3::hash(&std::fs::read(&path).unwrap())
                .to_hex()
                .to_string();
            out.push((path, hash));
        }
    }
    out.sort();
    out
}

#[test]
fn show_jsonl_round_trips_every_record_of_a_real_session() {
    let f = Fixture::new();
    let session = f.run_session();
    let records = f.records(session);
    assert!(
        records.iter().any(|r| !r.blobs.is_empty()),
        "some record has a blob"
    );

    for extra in [&[][..], &["--blobs"][..]] {
        let mut args = vec!["replay", "show", "--jsonl"];
        let id = session.to_string();
        args.push(&id);
        args.extend_from_slice(extra);
        let out = f.longrun(&args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let parsed: Vec<Record> = text(&out.stdout)
            .lines()
            .map(|l| parse_line(l).unwrap())
            .collect();
        assert_eq!(parsed, records, "with {extra:?}");
    }

    let out = f.longrun(&[
        "replay",
        "show",
        &session.to_string(),
        "--jsonl",
        "--from",
        "3",
        "--to",
        "5",
    ]);
    let seqs: Vec<u64> = text(&out.stdout)
        .lines()
        .map(|l| parse_line(l).unwrap().seq)
        .collect();
    assert_eq!(seqs, [3, 4, 5]);
}

#[test]
fn show_writes_a_readable_timeline_and_list_and_stats_sum_the_session_up() {
    let f = Fixture::new();
    let session = f.run_session();

    let shown = text(&f.longrun(&["replay", "show", &session.to_string()]).stdout);
    assert!(
        shown.contains("reasoning  Write the notes first."),
        "{shown}"
    );
    assert!(
        shown.contains("calls      word_count {\"text\":\"alpha beta-gamma\"}"),
        "{shown}"
    );
    assert!(shown.contains("(--blobs shows it)"), "{shown}");
    assert!(
        shown.contains("answer     The notes are written and counted."),
        "{shown}"
    );
    assert!(!shown.contains('\x1b'), "no colour when not on a terminal");

    let listed: Value =
        serde_json::from_str(text(&f.longrun(&["replay", "list", "--json"]).stdout).trim())
            .unwrap();
    assert_eq!(listed["status"], "completed");
    assert_eq!(listed["steps"], 6);
    assert_eq!(listed["tool_calls"], 9);

    let out = f.longrun(&["replay", "stats", &session.to_string(), "--json"]);
    let stats: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["tools"]["word_count"]["calls"], 2);
    assert_eq!(stats["tools"]["fs_read"]["calls"], 3);
    assert_eq!(stats["over_time"].as_array().unwrap().len(), 6);
}

#[test]
fn verify_passes_on_an_untouched_journal_and_never_writes_to_it() {
    let f = Fixture::new();
    let session = f.run_session();
    let records = f.records(session).len();
    let before = contents(&f.journal());

    let (ok, said) = f.verify(session, &[]);

    assert!(ok, "{said}");
    assert!(
        said.contains(&format!(
            "ok ({records} records, 9 tool calls checked against the recorded policy)"
        )),
        "{said}"
    );
    assert_eq!(
        contents(&f.journal()),
        before,
        "the journal's files are unchanged"
    );
    let out = f.longrun(&["replay", "verify", "--all"]);
    assert!(out.status.success(), "{}", text(&out.stdout));
}

#[test]
fn verify_names_a_record_with_a_changed_byte() {
    let f = Fixture::new();
    let session = f.run_session();
    let target = seqs_of(&f.records(session), RecordKind::ToolResult, "bytes_written")[0];
    tamper(&f.journal(), |records, _| {
        let mut bytes = records.get(key(session, target)).unwrap().to_vec();
        let at = bytes.len() - 40;
        bytes[at] ^= 0x01;
        records.insert(key(session, target), bytes);
    });

    let (ok, said) = f.verify(session, &[]);

    assert!(!ok);
    assert!(
        said.contains(&format!(
            "record {target} is bad: its contents do not match its hash"
        )),
        "{said}"
    );
}

#[test]
fn verify_names_a_deleted_record_and_a_deleted_last_one() {
    let f = Fixture::new();
    let session = f.run_session();
    let records = f.records(session);
    let last = records.last().unwrap();
    let anchor = format!("{}:{}", last.seq, longrun_host::journal::hex(&last.hash));

    tamper(&f.journal(), |raw, _| {
        raw.remove(key(session, last.seq));
    });
    // A shorter chain is whole, but the head the host acknowledged, kept
    // outside the store, names what is gone (and so does an anchor).
    let (ok, said) = f.verify(session, &[]);
    assert!(!ok);
    assert!(
        said.contains(&format!(
            "record {} of session {session} is missing",
            last.seq
        )),
        "{said}"
    );
    let (ok, said) = f.verify(session, &["--anchor", &anchor]);
    assert!(!ok);
    assert!(
        said.contains(&format!("record {} is bad", last.seq)),
        "{said}"
    );

    tamper(&f.journal(), |raw, _| {
        raw.remove(key(session, 7));
    });
    let (ok, said) = f.verify(session, &[]);
    assert!(!ok);
    assert!(
        said.contains("record 7 is bad: missing: the next record stored is 8"),
        "{said}"
    );
}

#[test]
fn verify_names_a_reordered_pair_of_records() {
    let f = Fixture::new();
    let session = f.run_session();
    tamper(&f.journal(), |raw, _| {
        let a = raw.get(key(session, 5)).unwrap();
        let b = raw.get(key(session, 6)).unwrap();
        raw.insert(key(session, 5), b);
        raw.insert(key(session, 6), a);
    });

    let (ok, said) = f.verify(session, &[]);

    assert!(!ok);
    assert!(
        said.contains("record 5 is bad: out of place: it says it is record 6"),
        "{said}"
    );
}

#[test]
fn verify_names_the_record_whose_blob_was_swapped() {
    let f = Fixture::new();
    let session = f.run_session();
    let records = f.records(session);
    let long_read = records
        .iter()
        .find(|r| r.kind == RecordKind::ToolResult && !r.blobs.is_empty())
        .unwrap();
    let other_blob = records[0].blobs[0];
    tamper(&f.journal(), |_, blobs| {
        let swapped = blobs.get(other_blob);
        blobs.replace(long_read.blobs[0], &swapped);
    });

    let (ok, said) = f.verify(session, &[]);

    assert!(!ok);
    assert!(
        said.contains(&format!(
            "record {} is bad: blob {} does not match its hash",
            long_read.seq,
            longrun_host::journal::hex(&long_read.blobs[0])
        )),
        "{said}"
    );
}

/// `replay verify` of the session rewritten with a forged first record:
/// `forge` edits what the start recorded, and the policy hash is made to
/// match. Whether it passed, and what it said.
fn verify_forged(
    f: &Fixture,
    records: &[Record],
    name: &str,
    forge: impl Fn(&mut SessionCreated),
) -> (bool, String) {
    let journal = f.root.join(format!("forged-{name}"));
    let forged = rewrite(records, &f.journal(), &journal, |record| {
        if record.kind != RecordKind::SessionCreated {
            return record.payload.clone();
        }
        let mut created: SessionCreated = serde_json::from_slice(&record.payload).unwrap();
        forge(&mut created);
        created.policy_hash = blake3::hash(created.policy_text.as_bytes())
            .to_hex()
            .to_string();
        serde_json::to_vec(&created).unwrap()
    });
    let out = Command::new(env!("CARGO_BIN_EXE_longrun"))
        .args(["replay", "verify", &forged.to_string(), "--journal"])
        .arg(&journal)
        .output()
        .unwrap();
    (out.status.success(), text(&out.stdout))
}

#[test]
fn verify_names_a_tool_call_outside_the_recorded_policy_in_a_chain_that_is_otherwise_whole() {
    let f = Fixture::new();
    let session = f.run_session();
    let records = f.records(session);
    let first_count = seqs_of(&records, RecordKind::ToolIntent, "word_count")[0];

    // The record says word_count was never allowed; the calls stay.
    let (ok, said) = verify_forged(&f, &records, "outside", |created| {
        created.policy_text = created.policy_text.replace(r#", "word_count""#, "");
    });

    assert!(!ok, "{said}");
    assert!(
        said.contains(&format!("record {first_count} is bad: tool call call_1_1 is outside the recorded policy: tool \"word_count\" is not in the policy's [tools] allow list")),
        "{said}"
    );
}

#[test]
fn reexecute_finds_no_difference_in_a_deterministic_session_even_after_its_files_changed() {
    let f = Fixture::new();
    let session = f.run_session();
    // The real workspace moves on; the re-execution runs on the snapshot.
    std::fs::remove_file(f.root.join("workspace/seed.txt")).unwrap();
    std::fs::write(f.root.join("workspace/notes.txt"), "changed since").unwrap();
    let before = contents(&f.root.join("workspace"));

    let out = f.longrun(&["replay", "reexecute", &session.to_string(), "--json"]);

    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["compared"], 9);
    assert_eq!(report["differences"], serde_json::json!([]));
    assert_eq!(
        contents(&f.root.join("workspace")),
        before,
        "the real files are not touched"
    );
}

#[test]
fn reexecute_reports_exactly_the_calls_a_replaced_component_answers_differently() {
    let f = Fixture::new();
    let session = f.run_session();
    let records = f.records(session);
    // The example tool replaced by its altered twin (same tools, same
    // schemas; word_count now splits at hyphens).
    let tools = f.root.join("tools");
    std::fs::create_dir_all(&tools).unwrap();
    for entry in std::fs::read_dir(common::builtin_tools_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap() != "longrun_tool_example.wasm" {
            std::fs::copy(&path, tools.join(path.file_name().unwrap())).unwrap();
        }
    }
    let altered = common::builtin_tools_dir()
        .parent()
        .unwrap()
        .join("longrun-altered-tools/longrun_tool_altered.wasm");
    std::fs::copy(&altered, tools.join("longrun_tool_altered.wasm")).unwrap();

    let out = f.longrun(&[
        "replay",
        "reexecute",
        &session.to_string(),
        "--json",
        "--tools-dir",
        tools.to_str().unwrap(),
    ]);

    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let hyphenated = seqs_of(&records, RecordKind::ToolResult, r#"\"words\":2"#);
    let differing: Vec<u64> = report["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(differing, hyphenated, "{report:#}");
    assert_eq!(report["differences"][0]["tool"], "word_count");
    assert!(
        report["differences"][0]["now"]["output"]
            .as_str()
            .unwrap()
            .contains(r#""words":3"#)
    );
    assert!(
        report["warnings"].as_array().unwrap().iter().any(|w| w
            .as_str()
            .unwrap()
            .contains("tool word_count now comes from component longrun_tool_altered.wasm")),
        "{report:#}"
    );
}

#[test]
fn a_fork_starts_from_its_parents_state_at_a_record_then_runs_on_its_own_and_both_verify() {
    let f = Fixture::new();
    let parent = f.run_session();
    let parent_records = f.records(parent);
    // Fork once the second step's calls have their results: the notes are
    // written, and the fork's own model reads them back and answers.
    let at = seqs_of(&parent_records, RecordKind::ToolResult, r#"\"words\":2"#)[0];
    let fork_script = f.root.join("fork.jsonl");
    std::fs::write(
        &fork_script,
        [
            r#"{"content": "never asked"}"#,
            r#"{"content": "never asked"}"#,
            r#"{"tool_calls": [{"name": "fs_read", "arguments": {"path": "/workspace/notes.txt"}}]}"#,
            r#"{"content": "The fork read the notes."}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let workspace_before = contents(&f.root.join("workspace"));

    let out = f.longrun(&[
        "replay",
        "fork",
        &parent.to_string(),
        "--at",
        &at.to_string(),
        "--model",
        &format!("scripted:{}", fork_script.display()),
        "--workspace",
        "fork-workspace",
    ]);

    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "The fork read the notes.");
    let child = *f.sessions().last().unwrap();
    assert_ne!(child, parent);
    let child_records = f.records(child);
    let parent_records = f.records(parent);
    let created = |r: &Record| serde_json::from_slice::<SessionCreated>(&r.payload).unwrap();
    let mut child_created = created(&child_records[0]);
    let link = child_created.parent.take().unwrap();
    assert_eq!((link.session, link.at), (parent, at));
    assert_eq!(
        child_created,
        created(&parent_records[0]),
        "the first record is the parent's, with the link"
    );
    for seq in 1..=at as usize {
        let (c, p) = (&child_records[seq], &parent_records[seq]);
        assert_eq!(
            (c.kind, &c.payload, &c.blobs),
            (p.kind, &p.payload, &p.blobs),
            "record {seq}"
        );
    }
    let own: Vec<&Record> = child_records[at as usize + 1..].iter().collect();
    assert!(
        own.iter().any(|r| r.kind == RecordKind::ToolResult
            && String::from_utf8_lossy(&r.payload).contains("alpha beta-gamma")),
        "the fork read the notes its rebuilt workspace holds"
    );
    assert_eq!(own.last().unwrap().kind, RecordKind::SessionEnded);
    let forked = parent_records.last().unwrap();
    assert_eq!(forked.kind, RecordKind::Forked);
    assert_eq!(
        serde_json::from_slice::<Value>(&forked.payload).unwrap(),
        serde_json::json!({"child": child, "at": at})
    );
    assert_eq!(
        contents(&f.root.join("workspace")),
        workspace_before,
        "the parent's files are not touched"
    );
    assert_eq!(
        std::fs::read_to_string(f.root.join("fork-workspace/mount-0/notes.txt")).unwrap(),
        "alpha beta-gamma"
    );

    let out = f.longrun(&["replay", "verify", "--all"]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert_eq!(
        text(&out.stdout).matches(": ok (").count(),
        2,
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn a_journal_that_is_not_there_is_a_clear_error() {
    let f = Fixture::new();
    let out = f.longrun(&["replay", "list"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no journal there"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn verify_rechecks_approvals_budgets_and_schemas_against_what_was_recorded() {
    let f = Fixture::new();
    let session = f.run_session();
    let records = f.records(session);
    let intents = |tool: &str| {
        seqs_of(
            &records,
            RecordKind::ToolIntent,
            &format!(r#""tool":"{tool}""#),
        )
    };
    // Each forgery records a stricter session start than the one that ran.
    type Forgery = Box<dyn Fn(&mut SessionCreated)>;
    let cases: Vec<(&str, Forgery, u64, &str)> = vec![
        (
            "approval",
            Box::new(|c| c.policy_text.push_str("approve = [\"echo\"]\n")),
            intents("echo")[0],
            "tool call call_2_0 (echo) needs a person's approval (pattern \"echo\") and ran without it",
        ),
        (
            "budget",
            Box::new(|c| {
                c.policy_text = c
                    .policy_text
                    .replace("max_tool_calls = 50", "max_tool_calls = 3")
            }),
            records
                .iter()
                .filter(|r| r.kind == RecordKind::ToolIntent)
                .nth(3)
                .unwrap()
                .seq,
            "the tool calls budget is exceeded: 4 used of 3",
        ),
        (
            "schema",
            Box::new(|c| {
                let echo = c.tools.iter_mut().find(|t| t.name == "echo").unwrap();
                echo.parameters["properties"]["text"]["maxLength"] = 5.into();
            }),
            intents("echo")[0],
            "the arguments of call call_2_0 do not match the recorded schema of echo",
        ),
    ];
    for (name, forge, seq, why) in cases {
        let (ok, said) = verify_forged(&f, &records, name, forge);
        assert!(!ok, "{name}: {said}");
        assert!(
            said.contains(&format!("record {seq} is bad: {why}")),
            "{name}: {said}"
        );
    }
}

#[test]
fn list_names_an_unreadable_session_and_goes_on_with_the_others() {
    let f = Fixture::new();
    let first = f.run_session();
    let second = f.run_session();
    tamper(&f.journal(), |raw, _| {
        let mut bytes = raw.get(key(first, 0)).unwrap().to_vec();
        bytes[60] ^= 0xff;
        raw.insert(key(first, 0), bytes);
    });

    let out = f.longrun(&["replay", "list"]);

    assert_eq!(out.status.code(), Some(1));
    let listed = text(&out.stdout);
    assert!(
        listed.contains(&format!("{first:<9}  unreadable: ")),
        "{listed}"
    );
    assert!(
        listed
            .lines()
            .any(|l| l.trim_start().starts_with(&format!("{second} ")) && l.contains("completed")),
        "{listed}"
    );
}
