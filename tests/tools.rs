//! The built-in tools do their jobs inside the sandbox, under a policy.

mod common;

use longrun_host::policy::Policy;
use longrun_host::sandbox::{CallError, Toolbox};
use serde_json::{Value, json};

async fn host() -> &'static Toolbox {
    common::shared_toolbox(false).await
}

struct Workspace {
    dir: tempfile::TempDir,
    policy: Policy,
    server: std::net::SocketAddr,
}

async fn workspace() -> Workspace {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("ws/src")).unwrap();
    std::fs::create_dir_all(dir.path().join("notes")).unwrap();
    std::fs::write(
        dir.path().join("ws/src/main.rs"),
        "fn main() {\n    println!(\"Hello\");\n}\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("ws/src/lib.rs"), "pub fn hello() {}\n").unwrap();
    std::fs::write(dir.path().join("ws/README.md"), "Say hello.\n").unwrap();
    std::fs::write(
        dir.path().join("ws/data.json"),
        r#"{"items":[{"name":"a","price":5},{"name":"b","price":50}]}"#,
    )
    .unwrap();
    let server = common::http_server().await;
    let policy = common::policy(&format!(
        r#"
[[filesystem]]
host = "{root}/ws"
guest = "/workspace"
access = "read-write"

[[filesystem]]
host = "{root}/notes"
guest = "/notes"
access = "read-write"

[network]
allow = ["127.0.0.1:{port}"]

[tools]
allow = ["*"]
"#,
        root = dir.path().display(),
        port = server.port()
    ));
    Workspace {
        dir,
        policy,
        server,
    }
}

impl Workspace {
    async fn ok(&self, tool: &str, args: Value) -> Value {
        let report = common::call(host().await, &self.policy, tool, &args.to_string()).await;
        match report.outcome {
            Ok(out) => serde_json::from_str(&out).unwrap(),
            Err(e) => panic!("{tool}({args}) failed: {e}\nstderr: {}", report.log.stderr),
        }
    }

    async fn err(&self, tool: &str, args: Value) -> CallError {
        let report = common::call(host().await, &self.policy, tool, &args.to_string()).await;
        report.outcome.expect_err("expected an error")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_built_in_tools_are_all_there_with_valid_names_and_schemas() {
    let names: Vec<&str> = host().await.tools().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "echo",
            "fs_list",
            "fs_read",
            "fs_search",
            "fs_write",
            "http_get",
            "http_post",
            "json_query",
            "notes_delete",
            "notes_get",
            "notes_list",
            "notes_put",
            "word_count"
        ]
    );
    for tool in host().await.tools() {
        assert_eq!(tool.parameters["type"], "object", "{}", tool.name);
        assert!(!tool.description.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_write_then_fs_read_round_trips_and_lands_on_the_host() {
    let w = workspace().await;
    let out = w
        .ok(
            "fs_write",
            json!({"path": "/workspace/out/new.txt", "content": "héllo", "create_dirs": true}),
        )
        .await;
    assert_eq!(out, json!({"bytes_written": 6}));
    assert_eq!(
        std::fs::read_to_string(w.dir.path().join("ws/out/new.txt")).unwrap(),
        "héllo"
    );
    w.ok(
        "fs_write",
        json!({"path": "/workspace/out/new.txt", "content": "!", "append": true}),
    )
    .await;
    let read = w
        .ok("fs_read", json!({"path": "/workspace/out/new.txt"}))
        .await;
    assert_eq!(
        read,
        json!({"content": "héllo!", "size": 7, "truncated": false})
    );
    let part = w
        .ok(
            "fs_read",
            json!({"path": "/workspace/out/new.txt", "max_bytes": 1}),
        )
        .await;
    assert_eq!(part, json!({"content": "h", "size": 7, "truncated": true}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_list_lists_in_name_order_and_recurses_on_request() {
    let w = workspace().await;
    let flat = w.ok("fs_list", json!({"path": "/workspace"})).await;
    let paths: Vec<&str> = flat["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "/workspace/README.md",
            "/workspace/data.json",
            "/workspace/src"
        ]
    );
    let deep = w
        .ok(
            "fs_list",
            json!({"path": "/workspace", "recursive": true, "max_entries": 4}),
        )
        .await;
    assert_eq!(deep["entries"].as_array().unwrap().len(), 4);
    assert_eq!(deep["truncated"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_search_matches_a_regex_within_a_glob() {
    let w = workspace().await;
    let all = w
        .ok(
            "fs_search",
            json!({"path": "/workspace", "pattern": "(?i)hello"}),
        )
        .await;
    assert_eq!(all["matches"].as_array().unwrap().len(), 3);
    let rust = w
        .ok("fs_search", json!({"path": "/workspace", "pattern": "hello", "glob": "**/*.rs", "ignore_case": true}))
        .await;
    let hits: Vec<(String, u64)> = rust["matches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["path"].as_str().unwrap().to_owned(),
                m["line"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        hits,
        [
            ("/workspace/src/lib.rs".to_owned(), 1),
            ("/workspace/src/main.rs".to_owned(), 2)
        ]
    );
    let bad = w
        .err("fs_search", json!({"path": "/workspace", "pattern": "("}))
        .await;
    assert!(matches!(bad, CallError::ToolInvalidArgs(_)), "{bad}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_query_runs_jsonpath_over_inline_documents_and_mounted_files() {
    let w = workspace().await;
    let inline = w
        .ok(
            "json_query",
            json!({"query": "$.a[*].b", "document": {"a": [{"b": 1}, {"b": 2}]}}),
        )
        .await;
    assert_eq!(inline, json!({"results": [1, 2]}));
    let file = w
        .ok(
            "json_query",
            json!({"query": "$.items[?@.price < 10].name", "file": "/workspace/data.json"}),
        )
        .await;
    assert_eq!(file, json!({"results": ["a"]}));
    let neither = w.err("json_query", json!({"query": "$"})).await;
    assert!(matches!(neither, CallError::ToolInvalidArgs(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notes_persist_across_calls_in_the_mounted_directory() {
    let w = workspace().await;
    assert_eq!(
        w.ok("notes_put", json!({"key": "plan", "value": "step 1"}))
            .await["existed"],
        false
    );
    assert_eq!(
        w.ok("notes_put", json!({"key": "plan.v2", "value": "step 2"}))
            .await["existed"],
        false
    );
    assert_eq!(
        w.ok("notes_get", json!({"key": "plan"})).await,
        json!({"key": "plan", "value": "step 1"})
    );
    assert_eq!(
        w.ok("notes_list", json!({"prefix": "plan"})).await,
        json!({"keys": ["plan", "plan.v2"]})
    );
    assert_eq!(
        std::fs::read_to_string(w.dir.path().join("notes/plan.v2")).unwrap(),
        "step 2"
    );
    assert_eq!(
        w.ok("notes_delete", json!({"key": "plan"})).await["existed"],
        true
    );
    assert_eq!(
        w.ok("notes_get", json!({"key": "plan"})).await["value"],
        Value::Null
    );
    let bad = w
        .err("notes_put", json!({"key": "../escape", "value": "x"}))
        .await;
    assert!(matches!(bad, CallError::ToolInvalidArgs(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notes_without_a_notes_mount_are_denied_clearly() {
    let w = workspace().await;
    let policy = common::policy("[tools]\nallow = [\"notes_*\"]\n");
    let report = common::call(host().await, &policy, "notes_list", "{}").await;
    assert_eq!(
        report.outcome,
        Err(CallError::ToolDenied(
            "the policy mounts no /notes directory".into()
        ))
    );
    drop(w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_get_follows_an_allowed_redirect_and_http_post_sends_its_body() {
    let w = workspace().await;
    let port = w.server.port();
    let got = w
        .ok(
            "http_get",
            json!({"url": format!("http://127.0.0.1:{port}/redirect?to=/ok")}),
        )
        .await;
    assert_eq!(got["status"], 200);
    assert_eq!(got["body"], "fine");
    assert_eq!(got["url"], format!("http://127.0.0.1:{port}/ok"));
    let posted = w
        .ok(
            "http_post",
            json!({"url": format!("http://127.0.0.1:{port}/echo"), "body": "{\"a\":1}"}),
        )
        .await;
    assert_eq!(posted["body"], "POST {\"a\":1}");
    let cut = w
        .ok(
            "http_get",
            json!({"url": format!("http://127.0.0.1:{port}/ok"), "max_bytes": 2}),
        )
        .await;
    assert_eq!(
        (cut["body"].as_str(), cut["truncated"].as_bool()),
        (Some("fi"), Some(true))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_tool_override_applies_to_that_tool_only() {
    let w = workspace().await;
    let policy = common::policy(&format!(
        "[[filesystem]]\nhost = \"{}/ws\"\nguest = \"/workspace\"\naccess = \"read-only\"\n\
         [tools]\nallow = [\"fs_read\", \"echo\"]\n[overrides.fs_read]\nmax_output = \"16B\"\n",
        w.dir.path().display()
    ));
    let report = common::call(
        host().await,
        &policy,
        "fs_read",
        r#"{"path":"/workspace/README.md"}"#,
    )
    .await;
    assert!(
        matches!(
            report.outcome,
            Err(CallError::OutputTooLarge { limit: 16, .. })
        ),
        "{:?}",
        report.outcome
    );
    let echo = common::call(
        host().await,
        &policy,
        "echo",
        r#"{"text":"longer than sixteen bytes"}"#,
    )
    .await;
    assert!(echo.outcome.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_mount_lets_fs_write_fail_as_denied() {
    let w = workspace().await;
    let policy = common::policy(&format!(
        "[[filesystem]]\nhost = \"{}/ws\"\nguest = \"/workspace\"\naccess = \"read-only\"\n[tools]\nallow = [\"fs_*\"]\n",
        w.dir.path().display()
    ));
    let report = common::call(
        host().await,
        &policy,
        "fs_write",
        r#"{"path":"/workspace/x","content":"x"}"#,
    )
    .await;
    assert!(
        matches!(report.outcome, Err(CallError::ToolDenied(_))),
        "{:?}",
        report.outcome
    );
    assert!(!w.dir.path().join("ws/x").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_mount_directory_is_a_setup_error_naming_it() {
    let policy = common::policy(
        "[[filesystem]]\nhost = \"/nonexistent/longrun-ws\"\nguest = \"/workspace\"\naccess = \"read-only\"\n[tools]\nallow = [\"echo\"]\n",
    );
    let report = common::call(host().await, &policy, "echo", r#"{"text":"x"}"#).await;
    match report.outcome {
        Err(CallError::Setup(why)) => assert!(why.contains("/nonexistent/longrun-ws"), "{why}"),
        other => panic!("expected a setup error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_path_says_in_plain_words_what_exists_next_to_it() {
    let w = workspace().await;
    for (tool, args) in [
        ("fs_list", json!({"path": "/workspace/README.txt"})),
        ("fs_read", json!({"path": "/workspace/README.txt"})),
        ("fs_read", json!({"path": "/workspace/docs/guide.md"})),
    ] {
        let said = w.err(tool, args.clone()).await.to_string();
        assert!(
            said.contains("No such file or directory"),
            "{tool} {args}: {said}"
        );
        assert!(
            said.contains("/workspace holds: README.md, data.json, src/"),
            "{tool} {args}: the real names: {said}"
        );
        assert!(!said.contains("os error"), "no errno numbers: {said}");
    }
    let said = w
        .err("fs_list", json!({"path": "/workspace/src/nope/deeper"}))
        .await
        .to_string();
    assert!(
        said.contains("/workspace/src holds: lib.rs, main.rs"),
        "the nearest existing directory: {said}"
    );
    let said = w
        .err("fs_list", json!({"path": "/workspace/README.md"}))
        .await
        .to_string();
    assert!(
        said.contains("fs_read reads it"),
        "a file is not listed: {said}"
    );
    let said = w
        .err("fs_read", json!({"path": "/workspace/src"}))
        .await
        .to_string();
    assert!(said.contains("fs_list lists it"), "{said}");
}
