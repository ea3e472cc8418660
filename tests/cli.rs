//! The `longrun` binary as operators and tool authors use it.

use std::path::Path;
use std::process::{Command, Output, Stdio};

fn longrun(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_longrun"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .output()
        .expect("longrun runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A scripted session that lists `/workspace` three times and then answers
/// "listed three times", with a read-only `ws` directory mounted there;
/// policies differ only in their step budget.
struct Listing {
    dir: tempfile::TempDir,
    script: std::path::PathBuf,
}

impl Listing {
    fn new() -> Listing {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("script.jsonl");
        std::fs::write(
            &script,
            r#"{"tool_calls": [{"name": "fs_list", "arguments": {"path": "/workspace"}}], "repeat": 3}
{"content": "listed three times"}"#,
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("ws")).unwrap();
        Listing { dir, script }
    }

    /// A policy allowing `max_steps` steps.
    fn policy(&self, max_steps: u64) -> std::path::PathBuf {
        let path = self.dir.path().join(format!("policy-{max_steps}.toml"));
        std::fs::write(
            &path,
            format!(
                "[session]\nmax_steps = {max_steps}\n\n[tools]\nallow = [\"fs_list\"]\n\n[[filesystem]]\nhost = \"ws\"\nguest = \"/workspace\"\naccess = \"read-only\"\n"
            ),
        )
        .unwrap();
        path
    }

    /// `longrun ARGS --policy POLICY --model scripted:SCRIPT`; the caller
    /// names the journal.
    fn command(&self, args: &[&str], policy: &Path) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_longrun"));
        command
            .args(args)
            .arg("--policy")
            .arg(policy)
            .arg("--model")
            .arg(format!("scripted:{}", self.script.display()));
        command
    }
}

#[test]
fn policy_check_accepts_every_example_policy() {
    for policy in [
        "policies/workspace-coding.toml",
        "policies/research-readonly.toml",
        "policies/locked-down.toml",
    ] {
        let out = longrun(&["policy", "check", policy]);
        assert!(out.status.success(), "{policy}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), format!("{policy}: ok\n"));
    }
}

#[test]
fn policy_check_rejects_a_bad_policy_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[tools]\nallow = [\"echo\"]\n\n[limits]\ntimeout = \"forever\"\n",
    )
    .unwrap();
    let out = longrun(&["policy", "check", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert_eq!(
        text(&out.stderr).lines().next().unwrap(),
        format!(
            "error: {}:5:11: `limits.timeout`: invalid duration \"forever\": write a whole number and a unit (ms, s, m, h, d), e.g. \"30s\"",
            file.display()
        )
    );
}

#[test]
fn policy_explain_says_what_each_tool_may_touch() {
    let out = longrun(&["policy", "explain", "policies/research-readonly.toml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(s.contains("files: /workspace = "), "{s}");
    assert!(
        s.contains("(read-only; links it makes must stay inside)"),
        "{s}"
    );
    assert!(s.contains("network: *.wikipedia.org:443"), "{s}");
    assert!(
        s.lines()
            .any(|l| l.starts_with("  http_get") && l.ends_with("allowed")),
        "{s}"
    );
    assert!(
        s.lines()
            .any(|l| l.starts_with("  fs_write") && l.ends_with("denied")),
        "{s}"
    );
    assert!(
        s.contains("timeout 45s"),
        "the http_get override shows: {s}"
    );
}

#[test]
fn tool_list_json_gives_every_tool_with_its_schema() {
    let out = longrun(&["tool", "list", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let tools: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let fs_read = tools
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "fs_read")
        .unwrap();
    assert_eq!(fs_read["effects"], "reads");
    assert_eq!(fs_read["idempotent"], true);
    assert_eq!(
        fs_read["parameters"]["required"],
        serde_json::json!(["path"])
    );
}

#[test]
fn tool_call_prints_the_result_as_json() {
    let out = longrun(&[
        "tool",
        "call",
        "word_count",
        r#"{"text":"one two three"}"#,
        "--policy",
        "policies/locked-down.toml",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["words"], 3);
}

#[test]
fn tool_call_reads_the_workspace_through_the_policy_mount() {
    let out = longrun(&[
        "tool",
        "call",
        "fs_read",
        r#"{"path":"/workspace/hello.txt"}"#,
        "--policy",
        "policies/workspace-coding.toml",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let on_disk =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("workspace/hello.txt"))
            .unwrap();
    assert_eq!(result["content"], on_disk);
}

#[test]
fn tool_call_refuses_a_call_that_needs_approval_unless_approved() {
    let args = r#"{"url":"https://example.com/","body":"{}"}"#;
    let out = longrun(&[
        "tool",
        "call",
        "http_post",
        args,
        "--policy",
        "policies/locked-down.toml",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("needs a person's approval"),
        "{}",
        text(&out.stderr)
    );
    // Approved, it runs, and the network gate refuses the host instead.
    let out = longrun(&[
        "tool",
        "call",
        "http_post",
        args,
        "--policy",
        "policies/locked-down.toml",
        "--approve",
    ]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("HttpRequestDenied"), "{err}");
    assert!(
        err.contains("[http_post network refused] example.com:443 is not in"),
        "{err}"
    );
}

#[test]
fn tool_call_with_schema_violating_arguments_explains_the_violation() {
    let out = longrun(&[
        "tool",
        "call",
        "echo",
        r#"{"text":5}"#,
        "--policy",
        "policies/locked-down.toml",
    ]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains(
            "arguments do not match the schema of \"echo\": at /text: 5 is not of type \"string\""
        ),
        "{err}"
    );
}

#[test]
fn tool_call_of_an_unknown_tool_says_so() {
    let out = longrun(&[
        "tool",
        "call",
        "no_such_tool",
        "{}",
        "--policy",
        "policies/locked-down.toml",
    ]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("no tool named \"no_such_tool\""));
}

#[test]
fn run_refuses_an_unknown_model_spec_and_an_unknown_profile_without_a_base_url() {
    let out = longrun(&[
        "run",
        "goal",
        "--policy",
        "policies/locked-down.toml",
        "--model",
        "gpt:whatever",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("unknown kind \"gpt\" (local, openai-compatible or scripted)"),
        "{}",
        text(&out.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let out = longrun(&[
        "run",
        "goal",
        "--policy",
        "policies/locked-down.toml",
        "--model",
        "openai-compatible:some-model",
        "--journal",
        journal.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no built-in profile for \"some-model\": pass --base-url"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn model_fetch_uses_the_cached_file_and_never_downloads_again() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    std::fs::write(&file, b"GGUF").unwrap();
    // With no Python to download with, only the cache can answer.
    let out = Command::new(env!("CARGO_BIN_EXE_longrun"))
        .args(["model", "fetch"])
        .env("LONGRUN_MODELS_DIR", dir.path())
        .env("PYTHON", "/nonexistent/python")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), file.display().to_string());

    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_longrun"))
        .args(["model", "fetch"])
        .env("LONGRUN_MODELS_DIR", empty.path())
        .env("PYTHON", "/nonexistent/python")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("/nonexistent/python"),
        "{}",
        text(&out.stderr)
    );
    let out = longrun(&["model", "fetch", "llama-70b"]);
    assert!(text(&out.stderr).contains("unknown local model \"llama-70b\""));
}

/// `scripts/demo`'s commands, through the same script, with a scripted
/// model in place of the local one: they must keep working.
#[test]
fn the_demos_commands_run_the_session_then_list_and_verify_its_journal() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("script.jsonl");
    std::fs::write(
        &script,
        r#"{"tool_calls": [{"name": "fs_list", "arguments": {"path": "/workspace"}}]}
{"tool_calls": [{"name": "fs_read", "arguments": {"path": "/workspace/hello.txt"}}]}
{"content": "hello.txt says: This folder is the workspace that the example policies mount at /workspace."}"#,
    )
    .unwrap();
    let out = Command::new("scripts/demo-session")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("LONGRUN", env!("CARGO_BIN_EXE_longrun"))
        .env(
            "LONGRUN_DEMO_MODEL",
            format!("scripted:{}", script.display()),
        )
        .env("LONGRUN_DEMO_JOURNAL", dir.path().join("journal"))
        .output()
        .unwrap();
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{said}");
    assert!(said.contains("call fs_read"), "{said}");
    assert!(
        said.contains("This folder is the workspace that the example policies mount"),
        "the answer: {said}"
    );
    assert!(said.contains("completed"), "listed as completed: {said}");
    assert!(said.contains("ok"), "verified: {said}");
}

/// A reader that stops early (`longrun replay show ... | head`) ends the
/// command quietly: no panic about a broken pipe.
#[test]
fn a_closed_output_pipe_ends_replay_quietly() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("script.jsonl");
    std::fs::write(
        &script,
        r#"{"tool_calls": [{"name": "fs_list", "arguments": {"path": "/workspace"}}], "repeat": 300}
{"content": "listed"}"#,
    )
    .unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::create_dir(dir.path().join("ws")).unwrap();
    std::fs::write(
        &policy,
        "[tools]\nallow = [\"fs_list\"]\n\n[[filesystem]]\nhost = \"ws\"\nguest = \"/workspace\"\naccess = \"read-only\"\n",
    )
    .unwrap();
    let journal = dir.path().join("journal");
    let ran = Command::new(env!("CARGO_BIN_EXE_longrun"))
        .args(["run", "list it", "--policy"])
        .arg(&policy)
        .arg("--model")
        .arg(format!("scripted:{}", script.display()))
        .arg("--journal")
        .arg(&journal)
        .output()
        .unwrap();
    assert!(ran.status.success(), "{}", text(&ran.stderr));
    let mut child = Command::new(env!("CARGO_BIN_EXE_longrun"))
        .args(["replay", "show", "0", "--no-pager", "--journal"])
        .arg(&journal)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 16];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    // The pipe is closed here, with most of the timeline unwritten.
    let out = child.wait_with_output().unwrap();
    let said = text(&out.stderr);
    assert!(!said.contains("panicked"), "{said}");
    assert!(!said.contains("Broken pipe"), "{said}");
}

/// `run GOAL` is always a new session, whatever the journal holds; going on
/// with an unfinished one takes `resume`, and the output says which.
#[test]
fn run_never_resumes_a_session_and_resume_goes_on_with_the_one_asked_for() {
    let listing = Listing::new();
    let dir = listing.dir.path();
    let policy = |max_steps| listing.policy(max_steps);
    let journal = dir.join("journal");
    let longrun = |args: &[&str], policy: &Path| {
        listing
            .command(args, policy)
            .arg("--journal")
            .arg(&journal)
            .output()
            .unwrap()
    };
    let sessions = || {
        longrun_host::journal::Journal::open_read_only(&journal, Default::default())
            .unwrap()
            .sessions()
            .unwrap()
    };

    // A budget of 2 steps stops the first session unfinished.
    let first = longrun(&["run", "list three times"], &policy(2));
    assert!(
        text(&first.stderr).contains("new session 0"),
        "{}",
        text(&first.stderr)
    );
    assert_eq!(sessions(), vec![0]);

    // `run` again: a second session, not the first resumed.
    let second = longrun(&["run", "list three times"], &policy(2));
    let said = text(&second.stderr);
    assert!(said.contains("new session 1"), "{said}");
    assert!(!said.contains("resuming"), "{said}");
    assert!(
        said.contains("longrun resume"),
        "it says how to go on: {said}"
    );
    assert_eq!(sessions(), vec![0, 1]);

    // `resume 0` with the budget raised finishes session 0 and only it.
    let resumed = longrun(&["resume", "0"], &policy(10));
    let said = text(&resumed.stderr);
    assert!(resumed.status.success(), "{said}");
    assert!(said.contains("resuming session 0"), "{said}");
    assert!(text(&resumed.stdout).contains("listed three times"));
    assert_eq!(sessions(), vec![0, 1]);

    // Nothing to resume is an error that says what to do instead.
    let ended = longrun(&["resume", "0"], &policy(10));
    assert!(!ended.status.success());
    assert!(
        text(&ended.stderr).contains("has ended"),
        "{}",
        text(&ended.stderr)
    );
    let none = listing
        .command(&["resume"], &policy(10))
        .arg("--journal")
        .arg(dir.join("empty"))
        .output()
        .unwrap();
    assert!(!none.status.success());
    assert!(
        text(&none.stderr).contains("no unfinished session"),
        "{}",
        text(&none.stderr)
    );
}

#[test]
fn run_resume_and_replay_take_a_postgres_store_instead_of_a_directory() {
    let cluster = longrun_test_postgres::Cluster::start().unwrap();
    let url = cluster.create_database("journal").unwrap();
    let listing = Listing::new();
    let dir = listing.dir.path();
    let policy = |max_steps| listing.policy(max_steps);
    let session = |args: &[&str], policy: &Path| {
        listing
            .command(args, policy)
            .args(["--store", &url])
            .current_dir(dir)
            .output()
            .unwrap()
    };
    let first = session(&["run", "list three times"], &policy(2));
    assert!(
        text(&first.stderr).contains("new session 0"),
        "{}",
        text(&first.stderr)
    );
    let resumed = session(&["resume", "0"], &policy(10));
    assert!(resumed.status.success(), "{}", text(&resumed.stderr));
    assert!(text(&resumed.stdout).contains("listed three times"));
    // Nothing went to a directory.
    assert!(!dir.join(".longrun").exists());

    let replay = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_longrun"))
            .arg("replay")
            .args(args)
            .args(["--store", &url])
            .output()
            .unwrap()
    };
    let verified = replay(&["verify", "--all"]);
    assert!(verified.status.success(), "{}", text(&verified.stderr));
    assert!(
        text(&verified.stdout).contains("session 0: ok"),
        "{}",
        text(&verified.stdout)
    );
    let listed = replay(&["list"]);
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    assert!(
        text(&listed.stdout).contains("completed"),
        "{}",
        text(&listed.stdout)
    );

    // `journal copy` takes the database's journal into a directory, and
    // the copy verifies through the same commands.
    let back = dir.join("back");
    let copied = longrun(&[
        "journal",
        "copy",
        "--from",
        &url,
        "--to",
        back.to_str().unwrap(),
    ]);
    assert!(copied.status.success(), "{}", text(&copied.stderr));
    assert!(
        text(&copied.stdout).contains("copied 1 sessions"),
        "{}",
        text(&copied.stdout)
    );
    let verified_copy = longrun(&[
        "replay",
        "verify",
        "--all",
        "--journal",
        back.to_str().unwrap(),
    ]);
    assert!(
        text(&verified_copy.stdout).contains("session 0: ok"),
        "{}{}",
        text(&verified_copy.stdout),
        text(&verified_copy.stderr)
    );
    // Into a journal that already holds the session: refused.
    let again = longrun(&[
        "journal",
        "copy",
        "--from",
        &url,
        "--to",
        back.to_str().unwrap(),
    ]);
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("already in the target"),
        "{}",
        text(&again.stderr)
    );

    // A changed row is caught through the same command.
    cluster
        .psql(
            "journal",
            "UPDATE longrun_records SET bytes = set_byte(bytes, length(bytes) - 3, get_byte(bytes, length(bytes) - 3) # 1) WHERE session = 0 AND seq = 3",
        )
        .unwrap();
    let tampered = replay(&["verify", "--all"]);
    assert!(!tampered.status.success());
    assert!(
        text(&tampered.stdout).contains("record 3"),
        "{}{}",
        text(&tampered.stdout),
        text(&tampered.stderr)
    );

    // One journal at a time, and --store is for databases.
    let both = longrun(&["replay", "list", "--journal", "j", "--store", &url]);
    assert!(!both.status.success());
    assert!(
        text(&both.stderr).contains("cannot be used with"),
        "{}",
        text(&both.stderr)
    );
    let not_a_database = longrun(&["replay", "list", "--store", "sled:/tmp/x"]);
    assert!(!not_a_database.status.success());
    assert!(
        text(&not_a_database.stderr).contains("postgres://"),
        "{}",
        text(&not_a_database.stderr)
    );
}
