//! The binary on its own: installed with `cargo install`, it carries its
//! built-in tools and runs from a directory that has nothing of the
//! repository; a tools directory adds tools or replaces built-in ones.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The cargo target directory this test was built in.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors()
        .find(|dir| dir.join("CACHEDIR.TAG").is_file())
        .expect("the test runs from a cargo target directory")
        .to_owned()
}

/// `longrun` as `binary`, run in `dir` with nothing from this process's
/// environment that could point it at the repository.
fn run_in(binary: &Path, dir: &Path, args: &[&str]) -> Output {
    Command::new(binary)
        .args(args)
        .current_dir(dir)
        .env_remove("LONGRUN_TOOLS_DIR")
        .env("HOME", dir)
        .stdin(Stdio::null())
        .output()
        .expect("longrun runs")
}

/// The variables `cargo test` sets for a test process, which a user's
/// `cargo install` would not see.
fn cargo_test_env() -> Vec<String> {
    std::env::vars()
        .map(|(key, _)| key)
        .filter(|key| (key.starts_with("CARGO_") && key != "CARGO_HOME") || key == "OUT_DIR")
        .collect()
}

#[test]
fn the_installed_binary_runs_a_tool_call_and_a_session_from_an_empty_directory() {
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path().join("root");
    // The same target directory as this build: the install links what the
    // tests were built from instead of building mistral.rs again.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut install = Command::new(cargo);
    // As from a user's shell: none of what `cargo test` sets for a test (a
    // build script that watches one of these would see a change and build
    // its crate again).
    for key in cargo_test_env() {
        install.env_remove(key);
    }
    let install = install
        .args([
            "install",
            "--path",
            env!("CARGO_MANIFEST_DIR"),
            "--locked",
            "--offline",
        ])
        .args(["--quiet", "--root"])
        .arg(&root)
        .arg("--target-dir")
        .arg(target_dir())
        .env_remove("CARGO_TARGET_DIR")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(install.status.success(), "{}", text(&install.stderr));
    let binary = root.join("bin/longrun");
    let work = scratch.path().join("work");
    std::fs::create_dir(&work).unwrap();
    std::fs::write(work.join("notes.txt"), "the meeting is at noon").unwrap();

    let call = run_in(
        &binary,
        &work,
        &[
            "tool",
            "call",
            "fs_read",
            r#"{"path": "/workspace/notes.txt"}"#,
        ],
    );
    assert!(call.status.success(), "{}", text(&call.stderr));
    assert!(text(&call.stdout).contains("the meeting is at noon"));

    // A session with no --policy: the built-in one mounts this directory.
    let script = scratch.path().join("script.jsonl");
    std::fs::write(
        &script,
        concat!(
            r#"{"tool_calls": [{"name": "fs_read", "arguments": {"path": "/workspace/notes.txt"}}]}"#,
            "\n",
            r#"{"content": "At noon."}"#,
            "\n"
        ),
    )
    .unwrap();
    let model = format!("scripted:{}", script.display());
    let session = run_in(
        &binary,
        &work,
        &["run", "When is the meeting?", "--model", &model],
    );
    assert!(session.status.success(), "{}", text(&session.stderr));
    assert_eq!(text(&session.stdout).trim_end(), "At noon.");
    assert!(work.join(".longrun/journal").is_dir());
}

#[test]
fn a_tools_directory_adds_tools_and_replaces_the_built_in_ones_it_names() {
    let work = tempfile::tempdir().unwrap();
    let binary = Path::new(env!("CARGO_BIN_EXE_longrun"));
    let altered = target_dir().join("longrun-altered-tools");
    let hostile = target_dir().join("longrun-test-tools");
    let hyphenated = r#"{"text": "long-running agents"}"#;

    let built_in = run_in(
        binary,
        work.path(),
        &["tool", "call", "word_count", hyphenated],
    );
    let replaced = run_in(
        binary,
        work.path(),
        &[
            "tool",
            "call",
            "word_count",
            hyphenated,
            "--tools-dir",
            &altered.display().to_string(),
        ],
    );
    let listed = Command::new(binary)
        .args(["tool", "list"])
        .current_dir(work.path())
        .env("LONGRUN_TOOLS_DIR", &hostile)
        .output()
        .unwrap();

    assert!(
        text(&built_in.stdout).contains(r#""words": 2"#),
        "{}",
        text(&built_in.stdout)
    );
    assert!(
        text(&replaced.stdout).contains(r#""words": 3"#),
        "{}",
        text(&replaced.stderr)
    );
    let listed = text(&listed.stdout);
    assert!(
        listed.contains("fs_read") && listed.contains("evil_read"),
        "{listed}"
    );
}
