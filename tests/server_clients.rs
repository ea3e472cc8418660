//! `longrun serve` as its own process, against clients from outside the
//! project: schemathesis (property-based, from the OpenAPI document),
//! headless Chromium driving the viewer, and a load of 200 sessions and 500
//! readers from this process. Needs `scripts/test-deps` (the test script
//! runs it): the Python clients and Chromium.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use serde_json::{Value, json};

use common::{ServerProcess, TOKEN};

fn serve(script: &str) -> ServerProcess {
    // 700 clients, all from one loopback address.
    common::serve_scripted(
        script,
        "request_timeout = \"30s\"\nmax_connections_per_peer = 1000\nmax_connections = 2000",
        "",
        None,
    )
}

/// The Python of the test clients' virtual environment.
/// The JSON report a Python driver in `tests/external/` printed, once it
/// exited with success (its output in the message otherwise).
fn driver_report(output: &std::process::Output) -> Value {
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the driver prints a JSON report")
}

fn python() -> PathBuf {
    let python = std::env::var_os("LONGRUN_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/longrun/test/venv/bin/python")
        });
    assert!(
        python.exists(),
        "{} not found: run scripts/test-deps (or set LONGRUN_TEST_PYTHON)",
        python.display()
    );
    python
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// One request on a kept-alive connection: status, JSON body, time taken.
async fn call(
    sender: &mut Sender,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value, Duration) {
    let started = Instant::now();
    sender.ready().await.unwrap();
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("authorization", format!("Bearer {TOKEN}"));
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
    let response = sender
        .send_request(request.body(Full::new(body)).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, json, started.elapsed())
}

const QUICK: &str = r#"
{"tool_calls": [{"name": "fs_read", "arguments": {"path": "/workspace/hello.txt"}}]}
{"content": "It says hello."}
"#;

#[test]
fn schemathesis_finds_no_server_error_and_no_response_that_breaks_the_document() {
    let server = serve(QUICK);
    let python = python();
    let schemathesis = python.with_file_name("schemathesis");
    let output = Command::new(schemathesis)
        .arg("run")
        .arg(format!("http://{}/openapi.json", server.addr))
        .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
        .args([
            "--checks",
            "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance",
            "--max-examples",
            "25",
            "--seed",
            "20261124",
            "--no-color",
        ])
        .current_dir(server.dir.path())
        .output()
        .expect("schemathesis runs");
    let report = String::from_utf8_lossy(&output.stdout);
    let summary: Vec<&str> = report
        .lines()
        .skip_while(|l| !l.contains("SUMMARY"))
        .collect();
    println!("{}", summary.join("\n"));
    assert!(
        output.status.success(),
        "schemathesis found failures:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(report.contains("passed"), "{report}");
}

#[test]
fn the_viewer_in_headless_chromium_shows_a_sessions_steps_as_they_happen() {
    // Thirty steps of 150 ms: the page must see steps arrive while it runs.
    let server = serve(
        r#"
{"reasoning_content": "Look again.", "tool_calls": [{"name": "fs_read", "arguments": {"path": "/workspace/hello.txt"}}], "delay_ms": 150, "repeat": 30}
{"content": "It said hello thirty times."}
"#,
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let id = runtime.block_on(async {
        let mut sender = common::connect(server.addr).await;
        let (status, session, _) = call(
            &mut sender,
            Method::POST,
            "/v1/sessions",
            Some(json!({"goal": "Read hello.txt, thirty times."})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
        session["id"].as_u64().unwrap()
    });
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let shot = shots.join("viewer.png");
    let output = Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/external/viewer.py"
        ))
        .arg(format!("http://{}", server.addr))
        .arg(TOKEN)
        .arg(id.to_string())
        .arg(&shot)
        .output()
        .expect("the viewer driver runs");
    let seen = driver_report(&output);
    println!("viewer saw: {seen}\nscreenshot: {}", shot.display());
    assert_eq!(
        seen["ended_at_first"], false,
        "the session ended before the page opened"
    );
    assert!(seen["later"].as_u64() > seen["first"].as_u64());
    // Each step shows its response and its call's intent and result.
    assert!(seen["final"].as_u64().unwrap() >= 90, "{seen}");
    for kind in [
        "session_created",
        "model_response",
        "tool_intent",
        "tool_result",
        "session_ended",
    ] {
        assert!(
            seen["kinds"].as_array().unwrap().contains(&json!(kind)),
            "{kind}: {seen}"
        );
    }
    assert!(seen["header"].as_str().unwrap().contains("completed"));
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);
}

/// The `p`-th percentile of sorted durations.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 * p / 100.0).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

#[test]
fn two_hundred_sessions_and_five_hundred_readers_see_no_error() {
    const SESSIONS: usize = 200;
    const READERS: usize = 500;
    let server = serve(
        r#"
{"tool_calls": [{"name": "fs_list", "arguments": {"path": "/workspace"}}], "delay_ms": 50, "repeat": 10}
{"content": "Listed it ten times."}
"#,
    );
    let addr = server.addr;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let (creates, reads, streams) = runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(300), async {
            let creators: Vec<_> = (0..SESSIONS)
                .map(|i| {
                    let errors = errors.clone();
                    tokio::spawn(async move {
                        let mut sender = common::connect(addr).await;
                        let (status, session, took) = call(
                            &mut sender,
                            Method::POST,
                            "/v1/sessions",
                            Some(json!({"goal": format!("list the workspace ({i})")})),
                        )
                        .await;
                        if status != StatusCode::CREATED {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                        (session["id"].as_u64().unwrap_or(u64::MAX), took)
                    })
                })
                .collect();
            let mut ids = Vec::new();
            let mut creates = Vec::new();
            for creator in creators {
                let (id, took) = creator.await.unwrap();
                ids.push(id);
                creates.push(took);
            }
            // Half the readers poll a session until it completes; half
            // follow its event stream to the end.
            let readers: Vec<_> = (0..READERS)
                .map(|i| {
                    let id = ids[i % SESSIONS];
                    let errors = errors.clone();
                    tokio::spawn(async move {
                        let mut sender = common::connect(addr).await;
                        let mut latencies = Vec::new();
                        if i % 2 == 0 {
                            loop {
                                let (status, session, took) = call(
                                    &mut sender,
                                    Method::GET,
                                    &format!("/v1/sessions/{id}"),
                                    None,
                                )
                                .await;
                                latencies.push(took);
                                if status != StatusCode::OK {
                                    errors.fetch_add(1, Ordering::Relaxed);
                                    break;
                                }
                                if session["status"] == "completed" {
                                    break;
                                }
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            (latencies, None)
                        } else {
                            let (status, text, took) = stream(&mut sender, id).await;
                            latencies.push(took);
                            let seqs: Vec<u64> = text
                                .lines()
                                .filter_map(|l| l.strip_prefix("id: "))
                                .map(|s| s.parse().unwrap())
                                .collect();
                            let whole = status == StatusCode::OK
                                && seqs == (0..seqs.len() as u64).collect::<Vec<_>>()
                                && text.contains("\"kind\":\"session_ended\"");
                            if !whole {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                            (latencies, Some(seqs.len()))
                        }
                    })
                })
                .collect();
            let mut reads = Vec::new();
            let mut streams = Vec::new();
            for reader in readers {
                let (latencies, events) = reader.await.unwrap();
                match events {
                    None => reads.extend(latencies),
                    Some(events) => streams.push((latencies[0], events)),
                }
            }
            (creates, reads, streams)
        })
        .await
        .expect("the load finished within its time bound")
    });
    let elapsed = started.elapsed();
    let mut creates = creates;
    let mut reads = reads;
    creates.sort();
    reads.sort();
    let mut whole_streams: Vec<Duration> = streams.iter().map(|(took, _)| *took).collect();
    whole_streams.sort();
    let events: usize = streams.iter().map(|(_, n)| n).sum();
    println!(
        "load: {SESSIONS} sessions, {READERS} readers, {:.1?} in all; errors {}\n  create: p50 {:.1?} p99 {:.1?} max {:.1?}\n  GET /v1/sessions/{{id}}: {} requests, p50 {:.1?} p99 {:.1?} max {:.1?}\n  event streams: {} streams, {events} events, whole stream p50 {:.1?} p99 {:.1?}",
        elapsed,
        errors.load(Ordering::Relaxed),
        percentile(&creates, 50.0),
        percentile(&creates, 99.0),
        creates.last().unwrap(),
        reads.len(),
        percentile(&reads, 50.0),
        percentile(&reads, 99.0),
        reads.last().unwrap(),
        streams.len(),
        percentile(&whole_streams, 50.0),
        percentile(&whole_streams, 99.0),
    );
    assert_eq!(errors.load(Ordering::Relaxed), 0);
    assert_eq!(streams.len(), READERS / 2);
}

/// A whole event stream of a session: status, text, time to its end.
async fn stream(sender: &mut Sender, id: u64) -> (StatusCode, String, Duration) {
    let started = Instant::now();
    sender.ready().await.unwrap();
    let request = Request::builder()
        .uri(format!("/v1/sessions/{id}/events"))
        .header("host", "localhost")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        String::from_utf8_lossy(&bytes).into_owned(),
        started.elapsed(),
    )
}

/// A policy for the MCP tests: reading allowed, writing needs a person.
fn mcp_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("ws")).unwrap();
    std::fs::write(dir.path().join("ws/hello.txt"), "hello").unwrap();
    std::fs::write(
        dir.path().join("policy.toml"),
        "[tools]\nallow = [\"fs_*\"]\napprove = [\"fs_write\"]\n[[filesystem]]\nhost = \"ws\"\nguest = \"/workspace\"\naccess = \"read-write\"\n",
    )
    .unwrap();
    dir
}

/// What the SDK client saw, checked the same for both transports, and the
/// journal the server wrote.
fn check_mcp_run(seen: &Value, dir: &std::path::Path) {
    println!("mcp client saw: {seen}");
    assert_eq!(seen["server"], "longrun");
    let tools = seen["tools"].as_array().unwrap();
    assert!(tools.contains(&json!("fs_read")) && tools.contains(&json!("fs_write")));
    assert!(
        !tools.contains(&json!("http_get")),
        "a tool the policy denies is offered"
    );
    assert_eq!(seen["allowed"]["is_error"], false);
    assert!(seen["allowed"]["text"].as_str().unwrap().contains("hello"));
    assert_eq!(seen["refused"]["is_error"], true);
    assert!(seen["refused"]["text"].as_str().unwrap().contains("approv"));
    assert!(!dir.join("ws/new.txt").exists(), "the refused call ran");

    let journal = longrun_host::journal::Journal::open_with(
        &dir.join("journal"),
        longrun_host::journal::JournalOptions::AUDIT,
    )
    .unwrap();
    let session = journal.sessions().unwrap()[0];
    let kinds: Vec<_> = journal
        .records(session)
        .map(|r| r.unwrap().kind.as_str())
        .collect();
    assert_eq!(
        kinds,
        [
            "session_created",
            "tool_intent",
            "tool_result",
            "policy_decision"
        ]
    );
    journal.verify(session).unwrap();
}

#[test]
fn the_mcp_sdk_lists_the_tools_and_calls_them_over_stdio_one_allowed_one_refused() {
    let dir = mcp_dir();
    let output = Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/external/mcp_client.py"
        ))
        .arg("stdio")
        .arg(env!("CARGO_BIN_EXE_longrun"))
        .args(["mcp", "--policy"])
        .arg(dir.path().join("policy.toml"))
        .arg("--journal")
        .arg(dir.path().join("journal"))
        .arg("--tools-dir")
        .arg(common::builtin_tools_dir())
        .output()
        .expect("the MCP client runs");
    let seen = driver_report(&output);
    check_mcp_run(&seen, dir.path());
}

#[test]
fn the_mcp_sdk_lists_the_tools_and_calls_them_over_streamable_http_one_allowed_one_refused() {
    let dir = mcp_dir();
    let (mut server, url) = common::spawn_listening(
        Command::new(env!("CARGO_BIN_EXE_longrun"))
            .args(["mcp", "--http", "127.0.0.1:0", "--policy"])
            .arg(dir.path().join("policy.toml"))
            .arg("--journal")
            .arg(dir.path().join("journal"))
            .arg("--tools-dir")
            .arg(common::builtin_tools_dir()),
    );
    let output = Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/external/mcp_client.py"
        ))
        .arg("http")
        .arg(&url)
        .output()
        .expect("the MCP client runs");
    let _ = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status();
    let _ = server.wait();
    let seen = driver_report(&output);
    check_mcp_run(&seen, dir.path());
}
