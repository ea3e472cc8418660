//! Containment against tools that race, swap and flood, and against hosts
//! that are flooded: each class of escape found by trying the host as an
//! attacker would, with the hostile tool (built with the SDK) doing the
//! attacking. Each test asserts the specific refusal, and that the host is
//! healthy after.
//!
//! - mounts are handles: a nested mount swapped for a link is still the
//!   directory it was, and a policy that nests a mount inside a read-write
//!   one is refused with its line and column;
//! - host-side walks (the session-start snapshot) never follow a link, not
//!   even one swapped in while they walk;
//! - a tool cannot make a link that points out of its mount, unless the
//!   policy says it may;
//! - re-execution never repeats an effect on the world by default;
//! - bad components are refused one by one, never all together;
//! - the server keeps answering `/healthz` under a connection flood, and
//!   tool calls wait for a sandbox slot instead of failing.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use longrun_host::journal::{Journal, JournalOptions, RecordKind};
use longrun_host::policy::{Access, Mount, Policy, Symlinks};
use longrun_host::sandbox::{CallError, CallReport, Sandbox, SandboxConfig, Toolbox};

const SECRET: &str = "TOP-SECRET-HOST-DATA";

async fn host() -> &'static Toolbox {
    common::shared_toolbox(true).await
}

async fn call(policy: &Policy, tool: &str, args: serde_json::Value) -> CallReport {
    common::call(host().await, policy, tool, &args.to_string()).await
}

/// The same host runs a well-behaved tool right after the attack.
async fn assert_healthy(policy: &Policy) {
    let report = call(policy, "echo", serde_json::json!({"text": "still here"})).await;
    assert_eq!(report.outcome, Ok(r#"{"text":"still here"}"#.to_owned()));
}

/// The hostile tool makes a link to `target` at the guest path `link`.
async fn make_link(policy: &Policy, target: &str, link: &str) -> CallReport {
    call(
        policy,
        "evil_symlink",
        serde_json::json!({"target": target, "link": link}),
    )
    .await
}

fn output(report: &CallReport) -> &str {
    match &report.outcome {
        Ok(output) => output,
        Err(e) => panic!("the call failed: {e} {:?}", report.log.fs_denials),
    }
}

fn error(report: &CallReport) -> String {
    match &report.outcome {
        Ok(output) => panic!("the call succeeded: {output}"),
        Err(e) => e.to_string(),
    }
}

/// A temporary root with `workspace/` (mounted read-write) and a secret
/// beside it, outside every mount.
fn root_with_secret() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("workspace")).unwrap();
    std::fs::write(dir.path().join("secret.txt"), SECRET).unwrap();
    dir
}

fn workspace_policy(root: &Path, symlinks: &str) -> Policy {
    common::policy(&format!(
        r#"
[limits]
timeout = "10s"

[[filesystem]]
host = "{}/workspace"
guest = "/workspace"
access = "read-write"
symlinks = "{symlinks}"

[tools]
allow = ["evil_*", "fs_*", "echo"]
"#,
        root.display()
    ))
}

// ---- Mounts are handles ----------------------------------------------------

/// The old shipped `workspace-coding` layout: notes inside the workspace.
const NESTED_POLICY: &str = r#"[[filesystem]]
host = "../workspace"
guest = "/workspace"
access = "read-write"

[[filesystem]]
host = "../workspace/.notes"
guest = "/notes"
access = "read-write"
"#;

#[test]
fn a_mount_inside_a_read_write_mount_is_refused_with_its_line_and_column() {
    let refused = Policy::parse(NESTED_POLICY, "nested.toml", Path::new("/srv/policies"))
        .expect_err("a nested mount must be refused");
    let message = refused.to_string();
    assert!(
        message.starts_with("nested.toml:7:8: `filesystem[1].host`: /srv/workspace/.notes (mounted at /notes) lies inside /srv/workspace, which is mounted read-write at /workspace"),
        "{message}"
    );
}

#[test]
fn a_mount_inside_a_read_only_mount_is_allowed() {
    let text = NESTED_POLICY.replacen("read-write", "read-only", 1);
    Policy::parse(&text, "nested.toml", Path::new("/srv/policies")).unwrap();
}

#[test]
fn a_mount_nested_through_a_link_is_refused_too() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("workspace/inner")).unwrap();
    std::os::unix::fs::symlink("workspace/inner", dir.path().join("alias")).unwrap();
    let text = NESTED_POLICY.replace("../workspace/.notes", "../alias");
    let refused = Policy::parse(&text, "linked.toml", &dir.path().join("policies"));
    assert!(
        refused.is_err_and(|e| e.to_string().contains("lies inside")),
        "a link must not hide the nesting"
    );
}

#[test]
fn policy_check_names_the_line_and_column_of_a_nested_mount() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("nested.toml"), NESTED_POLICY).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_longrun"))
        .args(["policy", "check"])
        .arg(dir.path().join("nested.toml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("nested.toml:7:8:"), "{stderr}");
    assert!(stderr.contains("lies inside"), "{stderr}");
}

#[test]
fn every_shipped_policy_loads_and_none_nests_a_mount() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Policy::load(&path).unwrap_or_else(|e| panic!("{e}"));
            checked += 1;
        }
    }
    assert!(checked >= 4, "only {checked} policies found");
}

/// A policy that invites the swap (built past the parser, which refuses
/// it): notes nested in a read-write workspace where any link may be made.
/// The tool renames the notes directory away and puts a link to the
/// secret's directory in its place. The next calls still see the notes
/// directory, wherever it went, and never the secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nested_mount_swapped_for_a_link_still_names_the_directory_it_was() {
    let root = root_with_secret();
    let r = root.path();
    std::fs::create_dir(r.join("workspace/.notes")).unwrap();
    std::fs::write(r.join("workspace/.notes/mine.txt"), "my note").unwrap();
    let mut policy = workspace_policy(r, "any");
    policy.filesystem.push(Mount::new(
        r.join("workspace/.notes"),
        "/notes".into(),
        Access::ReadWrite,
    ));
    assert_eq!(
        output(
            &call(
                &policy,
                "evil_read",
                serde_json::json!({"path": "/notes/mine.txt"})
            )
            .await
        ),
        r#"{"text":"my note"}"#
    );

    let renamed = call(
        &policy,
        "evil_rename",
        serde_json::json!({"from": "/workspace/.notes", "to": "/workspace/moved"}),
    )
    .await;
    output(&renamed);
    let linked = make_link(&policy, "..", "/workspace/.notes").await;
    output(&linked);
    assert!(
        std::fs::symlink_metadata(r.join("workspace/.notes"))
            .unwrap()
            .file_type()
            .is_symlink(),
        "the swap happened on the host"
    );

    for tool in ["evil_read", "fs_read"] {
        let report = call(
            &policy,
            tool,
            serde_json::json!({"path": "/notes/secret.txt"}),
        )
        .await;
        if let Ok(text) = &report.outcome {
            panic!("{tool} read through the swapped mount: {text}");
        }
        assert!(!error(&report).contains(SECRET));
    }
    assert_eq!(
        output(
            &call(
                &policy,
                "evil_read",
                serde_json::json!({"path": "/notes/mine.txt"})
            )
            .await
        ),
        r#"{"text":"my note"}"#
    );
    output(
        &call(
            &policy,
            "evil_write",
            serde_json::json!({"path": "/notes/after.txt", "content": "still in the notes"}),
        )
        .await,
    );
    assert_eq!(
        std::fs::read_to_string(r.join("workspace/moved/after.txt")).unwrap(),
        "still in the notes"
    );
    assert!(!r.join("after.txt").exists(), "nothing was written outside");
    assert_healthy(&policy).await;
}

/// Under the shipped `workspace-coding` policy, laid out as in the
/// repository, the same attack fails at its first step: the notes are not
/// inside the workspace, and no link out of the workspace can be made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_the_shipped_policy_the_swap_attack_finds_nothing_to_swap() {
    let root = root_with_secret();
    let r = root.path();
    std::fs::create_dir_all(r.join("policies")).unwrap();
    std::fs::create_dir(r.join("notes")).unwrap();
    std::fs::write(r.join("notes/mine.txt"), "my note").unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/workspace-coding.toml");
    let text = std::fs::read_to_string(shipped)
        .unwrap()
        .replace(r#"allow = ["fs_*""#, r#"allow = ["evil_*", "fs_*""#);
    let policy = Policy::parse(&text, "workspace-coding.toml", &r.join("policies")).unwrap();

    let renamed = call(
        &policy,
        "evil_rename",
        serde_json::json!({"from": "/notes", "to": "/workspace/notes"}),
    )
    .await;
    assert!(renamed.outcome.is_err(), "a mount's root cannot be renamed");
    let linked = make_link(&policy, "../notes/..", "/workspace/up").await;
    assert!(
        error(&linked).contains("not-permitted"),
        "{}",
        error(&linked)
    );
    assert!(!r.join("workspace/up").exists());
    assert_eq!(
        output(
            &call(
                &policy,
                "evil_read",
                serde_json::json!({"path": "/notes/mine.txt"})
            )
            .await
        ),
        r#"{"text":"my note"}"#
    );
    assert_healthy(&policy).await;
}

// ---- Host-side walks never follow links ------------------------------------

/// Two flips run in the sandbox (a file and a directory, each turned into
/// a link to a secret outside the mount and back, as fast as they can)
/// while sessions start on the same mount and snapshot it. No snapshot
/// ever holds a byte from outside, and some of them met the links.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_racing_links_against_session_starts_never_gets_an_outside_byte_into_a_snapshot() {
    let root = root_with_secret();
    let r = root.path().to_owned();
    std::fs::create_dir(r.join("outside")).unwrap();
    std::fs::write(r.join("outside/inside.txt"), SECRET).unwrap();
    std::fs::write(r.join("workspace/keep.txt"), "kept").unwrap();
    let policy = workspace_policy(&r, "any");
    let flip = |path: &str, target: &str, dir: bool| {
        let policy = policy.clone();
        let args = serde_json::json!({"path": path, "target": target, "dir": dir, "ms": 4000});
        tokio::spawn(async move { call(&policy, "evil_flip", args).await })
    };
    let flips = [
        flip("/workspace/flip.txt", "../secret.txt", false),
        flip("/workspace/flipdir", "../outside", true),
    ];

    let journal = Journal::open(&r.join("journal")).unwrap();
    let mounts = policy.filesystem.clone();
    let (starts, links_met) = tokio::task::spawn_blocking(move || {
        let (mut starts, mut links_met) = (0, 0);
        let until = Instant::now() + Duration::from_millis(3500);
        while Instant::now() < until || starts < 200 {
            let taken = longrun_host::snapshot::take(&journal, &mounts, 1 << 20).unwrap();
            for blob in &taken.blobs {
                let bytes = journal.blob(blob).unwrap();
                assert!(
                    !String::from_utf8_lossy(&bytes).contains(SECRET),
                    "snapshot {starts} holds a byte from outside the mount"
                );
            }
            let manifest = longrun_host::snapshot::manifest(&journal, &taken.manifest).unwrap();
            assert!(
                manifest.mounts[0]
                    .files
                    .iter()
                    .any(|f| f.path == "keep.txt")
            );
            links_met += manifest.mounts[0]
                .left_out
                .iter()
                .filter(|l| l.why.contains("symbolic link"))
                .count();
            starts += 1;
        }
        (starts, links_met)
    })
    .await
    .unwrap();
    for flip in flips {
        let flip = flip.await.unwrap();
        assert!(flip.log.fs_denials.is_empty(), "{:?}", flip.log.fs_denials);
        let flipped: u64 =
            serde_json::from_str::<serde_json::Value>(output(&flip)).unwrap()["text"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap();
        assert!(flipped > 10, "the tool flipped only {flipped} times");
    }
    println!("{starts} snapshots, {links_met} links met and left out");
    assert!(starts >= 200);
    assert!(links_met > 0, "the race never met a link");
    assert_healthy(&policy).await;
}

#[test]
fn a_snapshot_leaves_out_links_fifos_and_files_past_its_budget_and_reads_none() {
    let root = root_with_secret();
    let r = root.path();
    let ws = r.join("workspace");
    std::fs::write(ws.join("small.txt"), "small").unwrap();
    std::os::unix::fs::symlink(r.join("secret.txt"), ws.join("abs_link")).unwrap();
    std::os::unix::fs::symlink("../secret.txt", ws.join("rel_link")).unwrap();
    std::os::unix::fs::symlink(r, ws.join("dir_link")).unwrap();
    assert!(
        Command::new("mkfifo")
            .arg(ws.join("fifo"))
            .status()
            .unwrap()
            .success()
    );
    let journal = Journal::open(&r.join("journal")).unwrap();
    let policy = workspace_policy(r, "within-mount");

    let taken = longrun_host::snapshot::take(&journal, &policy.filesystem, 1 << 20).unwrap();

    let manifest = longrun_host::snapshot::manifest(&journal, &taken.manifest).unwrap();
    let files: Vec<&str> = manifest.mounts[0]
        .files
        .iter()
        .map(|f| f.path.as_str())
        .collect();
    assert_eq!(files, ["small.txt"]);
    let left: Vec<(&str, &str)> = manifest.mounts[0]
        .left_out
        .iter()
        .map(|l| (l.path.as_str(), l.why.as_str()))
        .collect();
    assert_eq!(
        left,
        [
            ("abs_link", "a symbolic link (never followed)"),
            ("dir_link", "a symbolic link (never followed)"),
            ("fifo", "a FIFO (never read)"),
            ("rel_link", "a symbolic link (never followed)"),
        ]
    );
}

// ---- Links a tool makes ------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_cannot_make_a_link_that_points_out_of_its_mount() {
    let root = root_with_secret();
    let r = root.path();
    let policy = workspace_policy(r, "within-mount");
    for (target, link) in [
        ("../secret.txt", "/workspace/rel_out"),
        ("/etc/passwd", "/workspace/abs_out"),
        ("..", "/workspace/up"),
        ("../../x", "/workspace/sub/deep_out"),
    ] {
        if link.contains("/sub/") {
            std::fs::create_dir_all(r.join("workspace/sub")).unwrap();
        }
        let report = make_link(&policy, target, link).await;
        assert!(
            error(&report).contains("not-permitted"),
            "{}",
            error(&report)
        );
        assert_eq!(report.log.fs_denials.len(), 1);
        assert!(
            report.log.fs_denials[0].contains("would point out of the mount /workspace"),
            "{:?}",
            report.log.fs_denials
        );
        let on_host = r
            .join("workspace")
            .join(link.trim_start_matches("/workspace/"));
        assert!(
            std::fs::symlink_metadata(on_host).is_err(),
            "no link was made"
        );
    }
    assert_healthy(&policy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_may_make_links_that_stay_inside_its_mount() {
    let root = root_with_secret();
    let r = root.path();
    std::fs::create_dir_all(r.join("workspace/sub")).unwrap();
    std::fs::write(r.join("workspace/top.txt"), "top").unwrap();
    let policy = workspace_policy(r, "within-mount");
    for (target, link) in [
        ("top.txt", "/workspace/same"),
        ("../top.txt", "/workspace/sub/up"),
    ] {
        let report = make_link(&policy, target, link).await;
        assert_eq!(output(&report), r#"{"text":"linked"}"#);
    }
    assert_eq!(
        std::fs::read_link(r.join("workspace/sub/up")).unwrap(),
        Path::new("../top.txt")
    );
    assert_eq!(
        output(
            &call(
                &policy,
                "evil_read",
                serde_json::json!({"path": "/workspace/sub/up"})
            )
            .await
        ),
        r#"{"text":"top"}"#
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_that_allows_any_link_lets_a_tool_point_one_outside() {
    let root = root_with_secret();
    let r = root.path();
    let policy = workspace_policy(r, "any");
    assert_eq!(policy.filesystem[0].symlinks, Symlinks::Any);
    let report = make_link(&policy, "../secret.txt", "/workspace/out").await;
    assert_eq!(output(&report), r#"{"text":"linked"}"#);
    // The sandbox still never follows it.
    let read = call(
        &policy,
        "evil_read",
        serde_json::json!({"path": "/workspace/out"}),
    )
    .await;
    assert!(!error(&read).contains(SECRET));
}

#[test]
fn an_unknown_symlinks_rule_is_refused_with_line_and_column() {
    let text = "[[filesystem]]\nhost = \"/tmp\"\nguest = \"/w\"\naccess = \"read-only\"\nsymlinks = \"sometimes\"\n";
    let message = Policy::parse(text, "p.toml", Path::new("/"))
        .unwrap_err()
        .to_string();
    assert!(message.starts_with("p.toml:5:12:"), "{message}");
}

// ---- Re-execution never repeats an effect on the world ----------------------

/// A loopback server that counts the requests it is sent.
async fn counting_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    let addr = common::serve(move |request: hyper::Request<hyper::body::Incoming>| {
        let seen = seen.clone();
        async move {
            use http_body_util::BodyExt;
            let _ = request.into_body().collect().await;
            seen.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                bytes::Bytes::from_static(b"posted"),
            )))
        }
    })
    .await;
    (addr, count)
}

fn longrun(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_longrun"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("longrun runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reexecute_never_posts_again_unless_the_auditor_says_so_and_names_the_address() {
    let (server, posts) = counting_server().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();
    std::fs::write(
        d.join("policy.toml"),
        format!(
            "[network]\nallow = [\"127.0.0.1:{}\"]\n[tools]\nallow = [\"http_post\", \"echo\"]\n",
            server.port()
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("script.jsonl"),
        format!(
            "{{\"tool_calls\": [{{\"name\": \"http_post\", \"arguments\": {{\"url\": \"http://127.0.0.1:{}/order\", \"body\": \"one pizza\"}}}}, {{\"name\": \"echo\", \"arguments\": {{\"text\": \"ordered\"}}}}]}}\n{{\"content\": \"Ordered.\"}}\n",
            server.port()
        ),
    )
    .unwrap();
    let run = {
        let d = d.clone();
        move |args: Vec<String>| {
            let d = d.clone();
            tokio::task::spawn_blocking(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                longrun(&d, &args)
            })
        }
    };
    let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    let session = run(args(&[
        "run",
        "Order a pizza",
        "--policy",
        "policy.toml",
        "--model",
        "scripted:script.jsonl",
        "--journal",
        "journal",
    ]))
    .await
    .unwrap();
    assert!(
        session.status.success(),
        "{}",
        String::from_utf8_lossy(&session.stderr)
    );
    assert_eq!(posts.load(Ordering::SeqCst), 1, "the session posted once");

    let replayed = run(args(&["replay", "reexecute", "0", "--journal", "journal"]))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&replayed.stdout);
    assert!(
        replayed.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&replayed.stderr)
    );
    assert!(
        stdout.contains("not repeated: record")
            && stdout.contains("http_post acts outside the sandbox"),
        "{stdout}"
    );
    assert!(
        stdout.contains("1 calls run again and compared"),
        "{stdout}"
    );
    assert_eq!(posts.load(Ordering::SeqCst), 1, "re-execution posted again");

    let live = run(args(&[
        "replay",
        "reexecute",
        "0",
        "--live-effects",
        "--journal",
        "journal",
    ]))
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&live.stdout);
    assert!(
        !live.status.success(),
        "the refused post differs from the record: {stdout}"
    );
    assert!(stdout.contains("http_post"), "{stdout}");
    assert_eq!(
        posts.load(Ordering::SeqCst),
        1,
        "a loopback address the auditor did not name was reached"
    );

    let named = format!("127.0.0.1:{}", server.port());
    let allowed = run(args(&[
        "replay",
        "reexecute",
        "0",
        "--live-effects",
        "--allow-net",
        &named,
        "--journal",
        "journal",
    ]))
    .await
    .unwrap();
    assert!(
        allowed.status.success(),
        "{}",
        String::from_utf8_lossy(&allowed.stdout)
    );
    assert_eq!(
        posts.load(Ordering::SeqCst),
        2,
        "named by the auditor, it is sent"
    );
}

// ---- Bad components are refused one by one ---------------------------------

fn bad_tools_dir() -> PathBuf {
    common::builtin_tools_dir()
        .parent()
        .expect("tools dir has a parent")
        .join("longrun-bad-tools")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_of_bad_component_is_refused_with_its_reason_and_the_good_ones_still_run() {
    let expected = [
        (
            "duplicate.wasm",
            "tool \"echo\" is refused: it is exported by duplicate.wasm and longrun_tool_example.wasm",
        ),
        ("endless.wasm", "listing its tools took longer than 5s"),
        (
            "flood.wasm",
            "it exports 100000 tools, more than the 1000 a component may",
        ),
        (
            "invalid-schema.wasm",
            "tool \"bad_schema\": invalid JSON Schema",
        ),
        (
            "remote-ref.wasm",
            "its schema references \"http://127.0.0.1:9/schema.json\"",
        ),
        ("trap.wasm", "listing its tools failed: tool crashed"),
    ];
    let mut paths: Vec<PathBuf> = std::fs::read_dir(common::builtin_tools_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    for (file, _) in expected {
        paths.push(bad_tools_dir().join(file));
    }
    paths.sort();
    let sandbox = Arc::new(Sandbox::new(SandboxConfig::default()).unwrap());
    let started = Instant::now();
    let toolbox = Toolbox::load(sandbox, &paths).await.unwrap();
    println!("loaded with six bad components in {:?}", started.elapsed());

    let refused: Vec<(String, String)> = toolbox
        .refused()
        .iter()
        .map(|r| (r.file.clone(), r.reason.clone()))
        .collect();
    for (file, reason) in expected {
        assert!(
            refused.iter().any(|(f, r)| f == file && r.contains(reason)),
            "{file}: expected {reason:?} in {refused:#?}"
        );
    }
    assert!(
        refused.iter().any(
            |(f, r)| f == "longrun_tool_example.wasm" && r.contains("tool \"echo\" is refused")
        ),
        "the name is refused for both components: {refused:#?}"
    );
    assert!(
        toolbox.tool("echo").is_none(),
        "a name exported twice is never shadowed"
    );
    assert!(
        toolbox.tool("bad_unique").is_some(),
        "the duplicate's other tools load"
    );
    assert!(toolbox.tool("flood_0").is_none());

    let policy = common::policy("[tools]\nallow = [\"word_count\", \"bad_unique\"]\n");
    let counted = common::call(&toolbox, &policy, "word_count", r#"{"text":"a b c"}"#).await;
    assert!(
        output(&counted).contains("\"words\":3"),
        "{}",
        output(&counted)
    );
    let unique = common::call(&toolbox, &policy, "bad_unique", "{}").await;
    assert_eq!(output(&unique), "\"bad_unique ran\"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_of_only_bad_components_is_an_error_that_names_each() {
    let paths = vec![
        bad_tools_dir().join("trap.wasm"),
        bad_tools_dir().join("flood.wasm"),
    ];
    let sandbox = Arc::new(Sandbox::new(SandboxConfig::default()).unwrap());
    let error = Toolbox::load(sandbox, &paths)
        .await
        .err()
        .expect("nothing loads");
    let message = error.to_string();
    assert!(
        message.contains("trap.wasm: listing its tools failed"),
        "{message}"
    );
    assert!(
        message.contains("flood.wasm: it exports 100000 tools"),
        "{message}"
    );
}

// ---- The instance pool waits instead of failing -----------------------------

/// 200 calls at once on a pool of 4 slots: every one runs, the waits are
/// counted, and a call whose timeout runs out while it waits says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_beyond_the_pool_wait_for_a_slot_and_none_fails() {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(common::builtin_tools_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.extend(
        std::fs::read_dir(common::test_tools_dir())
            .unwrap()
            .map(|e| e.unwrap().path()),
    );
    let sandbox = Arc::new(
        Sandbox::new(SandboxConfig {
            max_concurrent_calls: 4,
            ..SandboxConfig::default()
        })
        .unwrap(),
    );
    let toolbox = Arc::new(Toolbox::load(sandbox, &paths).await.unwrap());
    let policy = common::policy("[limits]\ntimeout = \"30s\"\n[tools]\nallow = [\"evil_sleep\"]\n");
    let calls: Vec<_> = (0..200)
        .map(|_| {
            let (toolbox, policy) = (toolbox.clone(), policy.clone());
            tokio::spawn(async move {
                common::call(&toolbox, &policy, "evil_sleep", r#"{"ms":20}"#).await
            })
        })
        .collect();
    let mut failed = 0;
    for call in calls {
        if call.await.unwrap().outcome.is_err() {
            failed += 1;
        }
    }
    let stats = toolbox.sandbox().pool_stats();
    println!("{stats:?}");
    assert_eq!(failed, 0);
    assert_eq!(stats.size, 4);
    assert!(stats.waits > 100, "{stats:?}");
    assert_eq!((stats.in_use, stats.waiting, stats.timeouts), (0, 0, 0));

    let short = common::policy("[limits]\ntimeout = \"50ms\"\n[tools]\nallow = [\"evil_sleep\"]\n");
    let hogs: Vec<_> = (0..4)
        .map(|_| {
            let (toolbox, policy) = (toolbox.clone(), policy.clone());
            tokio::spawn(async move {
                common::call(&toolbox, &policy, "evil_sleep", r#"{"ms":500}"#).await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let starved = common::call(&toolbox, &short, "evil_sleep", r#"{"ms":1}"#).await;
    assert_eq!(
        starved.outcome,
        Err(CallError::PoolBusy(Duration::from_millis(50)))
    );
    for hog in hogs {
        assert!(hog.await.unwrap().outcome.is_ok());
    }
    assert_eq!(toolbox.sandbox().pool_stats().timeouts, 1);
}

// ---- The server under a connection flood ------------------------------------

use common::{ServerProcess, TOKEN};

/// `longrun serve` with `http` and `sandbox` settings added to its
/// configuration, under an open-file limit of `nofile`.
fn serve(http: &str, sandbox: &str, nofile: u64, script: &str) -> ServerProcess {
    common::serve_scripted(script, http, sandbox, Some(nofile))
}

/// A connection to `server` from the loopback address `from`.
async fn connect_from(from: IpAddr, server: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(server).await
}

/// One request on a fresh connection from `from`: the status and body.
async fn request(from: IpAddr, server: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = connect_from(from, server).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\nconnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await?;
    let reply = String::from_utf8_lossy(&reply).into_owned();
    let status = reply
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, reply))
}

fn loopback(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, n])
}

/// 2,000 idle connections from 40 loopback addresses against a server
/// whose open-file limit is 1,024: `/healthz` is still answered within a
/// second, every time, and the floods are counted as shed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_idle_connections_do_not_starve_healthz() {
    assert!(longrun_host::process::raise_open_file_limit().unwrap_or(0) >= 4096);
    let server = serve("", "", 1024, "{\"content\": \"done\"}\n");
    let mut idle = Vec::new();
    for i in 0..2000 {
        match connect_from(loopback(2 + (i % 40) as u8), server.addr).await {
            Ok(stream) => idle.push(stream),
            Err(e) => panic!("connection {i}: {e}"),
        }
    }
    // A probe counts from its first try until a 200: a connection closed
    // unanswered (the shed path full of the flood's last connections) is
    // tried again, as a health checker would.
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        let started = Instant::now();
        loop {
            let answer = tokio::time::timeout(
                Duration::from_secs(5),
                request(loopback(1), server.addr, "/healthz"),
            )
            .await
            .expect("healthz answered or closed");
            match answer {
                Ok((200, _)) => break,
                Ok((0, _)) | Err(_) => {}
                Ok((status, body)) => panic!("{status}: {body}"),
            }
            assert!(started.elapsed() < Duration::from_secs(5));
        }
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("slowest /healthz under 2,000 idle connections: {slowest:?}");
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
    let (_, metrics) = request(loopback(1), server.addr, "/metrics").await.unwrap();
    let shed = metric(&metrics, "longrun_http_connections_shed_total")
        + metric(&metrics, "longrun_http_connections_refused_total");
    assert!(shed >= 1000.0, "{metrics}");
    drop(idle);
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_past_its_connection_cap_gets_503_and_healthz_while_others_are_served() {
    let server = serve(
        "max_connections_per_peer = 3",
        "",
        4096,
        "{\"content\": \"done\"}\n",
    );
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect_from(loopback(7), server.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, body) = request(loopback(7), server.addr, "/v1/sessions")
        .await
        .unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("connection limit"), "{body}");
    assert_eq!(
        request(loopback(7), server.addr, "/healthz")
            .await
            .unwrap()
            .0,
        200
    );
    assert_eq!(
        request(loopback(8), server.addr, "/v1/sessions")
            .await
            .unwrap()
            .0,
        200
    );
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_total_connection_cap_requests_get_503_and_healthz() {
    let server = serve("max_connections = 4", "", 4096, "{\"content\": \"done\"}\n");
    let mut held = Vec::new();
    for i in 0..4 {
        held.push(connect_from(loopback(10 + i), server.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, body) = request(loopback(20), server.addr, "/v1/sessions")
        .await
        .unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        request(loopback(20), server.addr, "/healthz")
            .await
            .unwrap()
            .0,
        200
    );
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_after_the_header_timeout() {
    use tokio::io::AsyncReadExt;
    let server = serve(
        "header_timeout = \"1s\"",
        "",
        4096,
        "{\"content\": \"done\"}\n",
    );
    let mut idle = connect_from(loopback(1), server.addr).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf))
        .await
        .expect("the server closes an idle connection");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );
}

/// 200 sessions through the API, each making ten tool calls, on a sandbox
/// of four slots: no call fails, and `/metrics` shows the waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_sessions_make_their_tool_calls_without_one_failing() {
    const SESSIONS: usize = 200;
    let server = serve(
        "",
        "max_concurrent_calls = 4",
        4096,
        "{\"tool_calls\": [{\"name\": \"fs_list\", \"arguments\": {\"path\": \"/workspace\"}}, {\"name\": \"fs_read\", \"arguments\": {\"path\": \"/workspace/hello.txt\"}}], \"repeat\": 5}\n{\"content\": \"Done.\"}\n",
    );
    let creators: Vec<_> = (0..SESSIONS)
        .map(|i| {
            let addr = server.addr;
            tokio::spawn(async move {
                // From many addresses, as many clients would.
                let stream = connect_from(loopback(2 + (i % 50) as u8), addr)
                    .await
                    .unwrap();
                let (mut sender, connection) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                        .await
                        .unwrap();
                tokio::spawn(connection);
                let request = hyper::Request::post("/v1/sessions")
                    .header("authorization", format!("Bearer {TOKEN}"))
                    .header("content-type", "application/json")
                    .body(http_body_util::Full::new(bytes::Bytes::from(
                        serde_json::json!({"goal": format!("list and read ({i})")}).to_string(),
                    )))
                    .unwrap();
                sender.send_request(request).await.unwrap().status()
            })
        })
        .collect();
    for creator in creators {
        assert_eq!(creator.await.unwrap(), hyper::StatusCode::CREATED);
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let (_, metrics) = request(loopback(1), server.addr, "/metrics").await.unwrap();
        let done = metric(&metrics, "longrun_sessions{status=\"completed\"}");
        if done as usize == SESSIONS {
            assert_eq!(metric(&metrics, "longrun_sandbox_slots"), 4.0);
            assert!(
                metric(&metrics, "longrun_sandbox_waits_total") > 0.0,
                "{metrics}"
            );
            assert_eq!(metric(&metrics, "longrun_sandbox_wait_timeouts_total"), 0.0);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sessions did not finish: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut server = server;
    server.stop();
    let journal =
        Journal::open_with(&server.dir.path().join("journal"), JournalOptions::AUDIT).unwrap();
    let (mut results, mut failed) = (0, Vec::new());
    let sessions = journal.sessions().unwrap();
    assert_eq!(sessions.len(), SESSIONS);
    for session in sessions {
        for record in journal.records(session) {
            let record = record.unwrap();
            if record.kind == RecordKind::ToolResult {
                let result: longrun_host::agent::ToolResult =
                    serde_json::from_slice(&record.payload).unwrap();
                results += 1;
                if let Some(error) = result.error {
                    failed.push(error);
                }
            }
        }
    }
    println!("{results} tool calls, {} failed", failed.len());
    assert_eq!(results, SESSIONS * 10);
    assert!(failed.is_empty(), "{failed:?}");
}

#[test]
fn a_recorded_policy_that_nests_mounts_still_parses_for_auditors() {
    let recorded = Policy::parse_recorded(NESTED_POLICY, "recorded", Path::new("/")).unwrap();
    assert_eq!(recorded.filesystem.len(), 2);
}
