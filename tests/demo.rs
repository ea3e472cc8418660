//! The README's first command, on the real default model: `scripts/demo`'s
//! session (run through the same `scripts/demo-session` it uses) reaches its
//! goal on SmolLM2-135M on the CPU — the answer says what `hello.txt` says —
//! then lists and verifies the journal, and the output carries no warning
//! that does not apply to a CPU-only run.
//!
//! Needs the default model in the cache (`longrun model fetch`, which
//! `scripts/test` runs before the tests).

use std::process::Command;

#[test]
fn the_demo_reaches_its_goal_on_the_default_model_and_verifies_its_journal() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("scripts/demo-session")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("LONGRUN", env!("CARGO_BIN_EXE_longrun"))
        .env("LONGRUN_DEMO_MODEL", "local:smollm2-135m")
        .env("LONGRUN_DEMO_JOURNAL", dir.path().join("journal"))
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    let hello = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("workspace/hello.txt"),
    )
    .unwrap();
    let first_sentence = hello.split('.').next().unwrap();
    // The answer is the session's standard output, before the journal's
    // listing.
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(
        answer.contains(first_sentence),
        "the answer says what hello.txt says ({first_sentence:?}): {said}"
    );
    assert!(said.contains("completed"), "listed as completed: {said}");
    assert!(
        !said.contains("mix of GPU and CPU"),
        "no GPU warning on a CPU-only run: {said}"
    );
}
