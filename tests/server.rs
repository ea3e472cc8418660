//! The HTTP agent API over a real TCP socket on loopback: real hyper on
//! both sides, the real sandbox and journal, the scripted model.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use longrun_host::agent::AgentConfig;
use longrun_host::journal::Journal;
use longrun_host::model::{Model, ScriptedModel};
use longrun_host::sandbox::Toolbox;
use longrun_server::{Server, ServerConfig};
use serde_json::{Value, json};

const ACME: &str = "acme-token-0123456789";
const GLOBEX: &str = "globex-token-0123456789";

/// A session that writes a file and answers.
const QUICK: &str = r#"
{"tool_calls": [{"name": "fs_write", "arguments": {"path": "/workspace/out.txt", "content": "done"}}]}
{"content": "I wrote out.txt."}
"#;

/// A planner that starts two children on the quick model and collects them.
const PLANNER: &str = r#"
{"tool_calls": [{"name": "start_child", "arguments": {"goal": "write it", "model": "quick"}}, {"name": "start_child", "arguments": {"goal": "write it too", "model": "quick"}}]}
{"tool_calls": [{"name": "wait_children", "arguments": {}}]}
{"content": "Both children wrote it."}
"#;

/// The quick session's steps, and a reply to heavy mode's comparison that
/// names the second trajectory.
const HEAVY: &str = r#"
{"tool_calls": [{"name": "fs_write", "arguments": {"path": "/workspace/out.txt", "content": "done"}}]}
{"content": "I wrote out.txt."}
{"purpose": "compare", "content": "2"}
"#;

/// A session of 30 steps of 100 ms each: long enough to steer.
const SLOW: &str = r#"
{"tool_calls": [{"name": "fs_list", "arguments": {"path": "/workspace"}}], "delay_ms": 100, "repeat": 30}
{"content": "Listed it thirty times."}
"#;

const CONFIG: &str = r#"
listen = "127.0.0.1:0"
journal = "journal"
default_model = "quick"
default_policy = "default"

[models]
quick = "scripted:quick.jsonl"
slow = "scripted:slow.jsonl"
priced = "scripted:priced.jsonl"
planner = "scripted:planner.jsonl"
heavy = "scripted:heavy.jsonl"

[policies]
default = "default.toml"
approve = "approve.toml"
priced = "priced.toml"
tree = "tree.toml"

[tenants.acme]
token = "acme-token-0123456789"

[tenants.globex]
token = "globex-token-0123456789"
inline_policies = true

[http]
max_body = "64KiB"
request_timeout = "10s"
shutdown_grace = "5s"
"#;

const POLICY: &str = r#"
[tools]
allow = ["fs_*"]

[[filesystem]]
host = "ws"
guest = "/workspace"
access = "read-write"
"#;

static TOOLBOX: tokio::sync::OnceCell<Arc<Toolbox>> = tokio::sync::OnceCell::const_new();

async fn toolbox() -> Arc<Toolbox> {
    TOOLBOX
        .get_or_init(|| async { Arc::new(common::toolbox(false).await) })
        .await
        .clone()
}

/// A session whose long steps overflow a small context (so it compacts),
/// on a priced model.
const PRICED: &str = r#"
{"reasoning_content": "PADDING", "tool_calls": [{"name": "fs_list", "arguments": {"path": "/workspace"}}], "usage": {"input_tokens": 900, "output_tokens": 300, "cached_input_tokens": 100}, "repeat": 12}
{"content": "Listed it twelve times.", "usage": {"input_tokens": 700, "output_tokens": 20}}
"#;

/// A server in a directory of its own, with its configuration, policies and
/// scripts; it can be stopped and started again on the same journal.
struct Harness {
    dir: tempfile::TempDir,
    server: Option<Server>,
    agent: AgentConfig,
}

impl Harness {
    async fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::create_dir(p.join("ws")).unwrap();
        std::fs::write(p.join("server.toml"), CONFIG).unwrap();
        std::fs::write(p.join("default.toml"), POLICY).unwrap();
        std::fs::write(
            p.join("approve.toml"),
            POLICY.replace(
                "allow = [\"fs_*\"]",
                "allow = [\"fs_*\"]\napprove = [\"fs_write\"]",
            ),
        )
        .unwrap();
        std::fs::write(p.join("quick.jsonl"), QUICK).unwrap();
        std::fs::write(p.join("slow.jsonl"), SLOW).unwrap();
        std::fs::write(p.join("planner.jsonl"), PLANNER).unwrap();
        std::fs::write(p.join("heavy.jsonl"), HEAVY).unwrap();
        std::fs::write(
            p.join("tree.toml"),
            format!("{POLICY}\n[children]\nmodels = [\"quick\"]\n"),
        )
        .unwrap();
        std::fs::write(
            p.join("priced.jsonl"),
            PRICED.replace("PADDING", &"think ".repeat(150)),
        )
        .unwrap();
        std::fs::write(
            p.join("priced.toml"),
            format!(
                "{POLICY}\n[prices.priced]\ninput_per_million = 3.0\noutput_per_million = 15.0\ncached_input_per_million = 0.3\n"
            ),
        )
        .unwrap();
        let scratch = p.join("scratch");
        let mut harness = Harness {
            dir,
            server: None,
            agent: AgentConfig {
                first_backoff: Duration::from_millis(1),
                scratch_dir: Some(scratch),
                ..AgentConfig::default()
            },
        };
        harness.start().await;
        harness
    }

    async fn start(&mut self) {
        let p = self.dir.path();
        let config = ServerConfig::load(&p.join("server.toml")).unwrap();
        let mut models: BTreeMap<String, Arc<dyn Model>> = BTreeMap::new();
        for name in ["quick", "slow", "priced", "planner", "heavy"] {
            // Each under its own name, as sessions record it and prices key on it.
            let model = ScriptedModel::load(&p.join(format!("{name}.jsonl")))
                .unwrap()
                .named(name);
            models.insert(name.into(), Arc::new(model));
        }
        let journal = Journal::open(&p.join("journal")).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let agent = self.agent.clone();
        let server = Server::start(config, journal, toolbox().await, models, agent, listener)
            .await
            .unwrap();
        self.server = Some(server);
    }

    async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }

    fn addr(&self) -> SocketAddr {
        self.server.as_ref().unwrap().local_addr()
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let body = match body {
            Some(body) => {
                request = request.header("content-type", "application/json");
                Bytes::from(body.to_string())
            }
            None => Bytes::new(),
        };
        send(self.addr(), request.body(Full::new(body)).unwrap()).await
    }

    async fn get(&self, path: &str, token: &str) -> Reply {
        self.call(Method::GET, path, Some(token), None).await
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> Reply {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    async fn create(&self, token: &str, body: Value) -> u64 {
        let reply = self.post("/v1/sessions", token, body).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.json);
        reply.json["id"].as_u64().unwrap()
    }

    /// Poll a session until `done` holds of it (at most 20 s).
    async fn until(&self, id: u64, token: &str, done: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..400 {
            let reply = self.get(&format!("/v1/sessions/{id}"), token).await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
            if done(&reply.json) {
                return reply.json;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("session {id} never got there");
    }

    /// A session on the slow model, once it has taken two steps.
    async fn slow_session_at_step_two(&self) -> u64 {
        let id = self
            .create(ACME, json!({"goal": "list", "model": "slow"}))
            .await;
        self.until(id, ACME, |s| s["step"].as_u64().unwrap() >= 2)
            .await;
        id
    }

    async fn until_status(&self, id: u64, token: &str, status: &str) -> Value {
        self.until(id, token, |s| s["status"] == status).await
    }

    /// Every record of a session, page by page.
    async fn steps(&self, id: u64, token: &str) -> Vec<Value> {
        let mut records = Vec::new();
        let mut path = format!("/v1/sessions/{id}/steps?limit=3");
        loop {
            let reply = self.get(&path, token).await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
            records.extend(reply.json["records"].as_array().unwrap().iter().cloned());
            match reply.json["next_after"].as_u64() {
                Some(after) => path = format!("/v1/sessions/{id}/steps?limit=3&after={after}"),
                None => return records,
            }
        }
    }
}

struct Reply {
    status: StatusCode,
    headers: hyper::HeaderMap,
    text: String,
    json: Value,
}

async fn send(addr: SocketAddr, request: Request<Full<Bytes>>) -> Reply {
    let mut sender = common::connect(addr).await;
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        text,
        json,
    }
}

fn kinds(records: &[Value]) -> Vec<&str> {
    records
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_created_over_http_runs_to_its_answer_and_its_steps_are_its_journal() {
    let h = Harness::new().await;
    let reply = h
        .post("/v1/sessions", ACME, json!({"goal": "write out.txt"}))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.json);
    let id = reply.json["id"].as_u64().unwrap();
    assert_eq!(
        reply.headers["location"],
        format!("/v1/sessions/{id}").as_str()
    );
    assert_eq!(reply.json["goal"], "write out.txt");
    assert_eq!(reply.json["model"], "quick");
    assert_eq!(reply.json["policy"], "default");

    let done = h.until_status(id, ACME, "completed").await;
    assert_eq!(done["answer"], "I wrote out.txt.");
    assert_eq!(done["usage"]["steps"], 2);
    assert_eq!(done["usage"]["tool_calls"], 1);
    assert_eq!(
        std::fs::read_to_string(h.dir().join("ws/out.txt")).unwrap(),
        "done"
    );

    let records = h.steps(id, ACME).await;
    assert_eq!(
        kinds(&records),
        [
            "session_created",
            "model_request",
            "model_response",
            "tool_intent",
            "tool_result",
            "model_request",
            "model_response",
            "session_ended"
        ]
    );
    let seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (0..records.len() as u64).collect::<Vec<_>>());
    assert_eq!(records[0]["payload"]["labels"]["tenant"], "acme");

    let listed = h.get("/v1/sessions?status=completed", ACME).await;
    assert_eq!(listed.json["sessions"][0]["id"], id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_valid_token_are_refused_and_another_tenants_session_is_not_found() {
    let h = Harness::new().await;
    let id = h.create(ACME, json!({"goal": "write out.txt"})).await;

    let missing = h.call(Method::GET, "/v1/sessions", None, None).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.json["type"], "urn:longrun:problem:unauthorized");
    assert_eq!(missing.headers["content-type"], "application/problem+json");
    assert!(missing.headers.contains_key("www-authenticate"));
    let wrong = h.get("/v1/sessions", "not-a-token-of-anyone").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let wrong_scheme = h
        .call(Method::GET, &format!("/v1/sessions/{id}"), None, None)
        .await;
    assert_eq!(wrong_scheme.status, StatusCode::UNAUTHORIZED);

    // Another tenant's session answers exactly as one that does not exist.
    let nonexistent = id + 1_000_000;
    for (path, method) in [
        ("", Method::GET),
        ("/steps", Method::GET),
        ("/events", Method::GET),
        ("/pause", Method::POST),
        ("/resume", Method::POST),
        ("/cancel", Method::POST),
    ] {
        let theirs = h
            .call(
                method.clone(),
                &format!("/v1/sessions/{id}{path}"),
                Some(GLOBEX),
                None,
            )
            .await;
        let nobodys = h
            .call(
                method,
                &format!("/v1/sessions/{nonexistent}{path}"),
                Some(GLOBEX),
                None,
            )
            .await;
        assert_eq!(theirs.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(nobodys.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(
            theirs.json["detail"]
                .as_str()
                .unwrap()
                .replace(&id.to_string(), "N"),
            nobodys.json["detail"]
                .as_str()
                .unwrap()
                .replace(&nonexistent.to_string(), "N"),
        );
    }
    let message = h
        .post(
            &format!("/v1/sessions/{id}/messages"),
            GLOBEX,
            json!({"text": "hi"}),
        )
        .await;
    assert_eq!(message.status, StatusCode::NOT_FOUND);
    let listed = h.get("/v1/sessions", GLOBEX).await;
    assert_eq!(listed.json["sessions"], json!([]));

    // A tenant that may not bring its own policy is forbidden to.
    let inline = h
        .post(
            "/v1/sessions",
            ACME,
            json!({"goal": "g", "policy_inline": POLICY}),
        )
        .await;
    assert_eq!(inline.status, StatusCode::FORBIDDEN, "{}", inline.json);
    assert_eq!(inline.json["type"], "urn:longrun:problem:forbidden");
    // One that may, can.
    let mine = h
        .post(
            "/v1/sessions",
            GLOBEX,
            json!({"goal": "g", "policy_inline": POLICY.replace("\"ws\"", &format!("{:?}", h.dir().join("ws")))}),
        )
        .await;
    assert_eq!(mine.status, StatusCode::CREATED, "{}", mine.json);
    assert_eq!(mine.json["policy"], "inline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_needs_approval_waits_for_a_person_and_runs_once_approved() {
    let h = Harness::new().await;
    let id = h
        .create(ACME, json!({"goal": "write out.txt", "policy": "approve"}))
        .await;
    let waiting = h.until_status(id, ACME, "awaiting_approval").await;
    let step = waiting["awaiting_approval"]["step"].as_u64().unwrap();
    assert_eq!(waiting["awaiting_approval"]["tool"], "fs_write");
    assert!(!h.dir().join("ws/out.txt").exists(), "ran before approval");

    let wrong = h
        .post(
            &format!("/v1/sessions/{id}/approvals/{}", step + 1),
            ACME,
            json!({"approve": true}),
        )
        .await;
    assert_eq!(wrong.status, StatusCode::CONFLICT);
    let approved = h
        .post(
            &format!("/v1/sessions/{id}/approvals/{step}"),
            ACME,
            json!({"approve": true}),
        )
        .await;
    assert_eq!(approved.status, StatusCode::ACCEPTED, "{}", approved.json);

    h.until_status(id, ACME, "completed").await;
    assert_eq!(
        std::fs::read_to_string(h.dir().join("ws/out.txt")).unwrap(),
        "done"
    );
    let records = h.steps(id, ACME).await;
    let k = kinds(&records);
    let asked = k.iter().position(|k| *k == "approval_asked").unwrap();
    assert_eq!(records[asked]["seq"], step);
    assert_eq!(k[asked + 1], "approval_given");
    assert_eq!(records[asked + 1]["payload"]["approved"], true);
    assert_eq!(records[asked + 1]["payload"]["by"], "acme");
    assert_eq!(&k[asked + 2..asked + 4], ["tool_intent", "tool_result"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_call_is_refused_and_the_model_is_told_why() {
    let h = Harness::new().await;
    let id = h
        .create(ACME, json!({"goal": "write out.txt", "policy": "approve"}))
        .await;
    let waiting = h.until_status(id, ACME, "awaiting_approval").await;
    let step = waiting["awaiting_approval"]["step"].as_u64().unwrap();
    let denied = h
        .post(
            &format!("/v1/sessions/{id}/approvals/{step}"),
            ACME,
            json!({"approve": false, "reason": "not today"}),
        )
        .await;
    assert_eq!(denied.status, StatusCode::ACCEPTED);
    h.until_status(id, ACME, "completed").await;
    assert!(!h.dir().join("ws/out.txt").exists());
    let records = h.steps(id, ACME).await;
    let refusal = records
        .iter()
        .find(|r| r["kind"] == "policy_decision")
        .expect("a refusal");
    let reason = refusal["payload"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("denied") && reason.contains("not today"),
        "{reason}"
    );
    assert!(!kinds(&records).contains(&"tool_intent"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_and_cancel_steer_a_running_session_at_its_step_boundaries() {
    let h = Harness::new().await;
    let id = h.slow_session_at_step_two().await;

    let paused = h
        .post(&format!("/v1/sessions/{id}/pause"), ACME, json!({}))
        .await;
    assert_eq!(paused.status, StatusCode::ACCEPTED);
    let at = h.until_status(id, ACME, "paused").await["step"]
        .as_u64()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let still = h.get(&format!("/v1/sessions/{id}"), ACME).await;
    assert_eq!(still.json["status"], "paused");
    assert_eq!(
        still.json["step"].as_u64().unwrap(),
        at,
        "steps went on while paused"
    );

    let resumed = h
        .post(&format!("/v1/sessions/{id}/resume"), ACME, json!({}))
        .await;
    assert_eq!(resumed.status, StatusCode::ACCEPTED);
    h.until(id, ACME, |s| s["step"].as_u64().unwrap() > at)
        .await;
    let again = h
        .post(&format!("/v1/sessions/{id}/resume"), ACME, json!({}))
        .await;
    assert_eq!(
        again.status,
        StatusCode::CONFLICT,
        "resumed a running session"
    );

    let cancelled = h
        .post(&format!("/v1/sessions/{id}/cancel"), ACME, json!({}))
        .await;
    assert_eq!(cancelled.status, StatusCode::ACCEPTED);
    let ended = h.until_status(id, ACME, "cancelled").await;
    assert!(ended["step"].as_u64().unwrap() < 31);
    let records = h.steps(id, ACME).await;
    let controls: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "control")
        .map(|r| &r["payload"]["action"])
        .collect();
    assert_eq!(controls, [&json!("pause"), &json!("resume")]);
    let last = records.last().unwrap();
    assert_eq!(last["kind"], "session_ended");
    assert_eq!(last["payload"]["status"], "cancelled");
    for action in ["pause", "resume", "cancel"] {
        let late = h
            .post(&format!("/v1/sessions/{id}/{action}"), ACME, json!({}))
            .await;
        assert_eq!(late.status, StatusCode::CONFLICT, "{action} after the end");
        assert_eq!(late.json["type"], "urn:longrun:problem:conflict");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persons_message_is_journaled_and_reaches_the_model_at_the_next_step() {
    let h = Harness::new().await;
    let id = h.slow_session_at_step_two().await;
    let sent = h
        .post(
            &format!("/v1/sessions/{id}/messages"),
            ACME,
            json!({"text": "Also count the files."}),
        )
        .await;
    assert_eq!(sent.status, StatusCode::ACCEPTED, "{}", sent.json);
    h.until(id, ACME, |s| s["step"].as_u64().unwrap() >= 5)
        .await;
    h.post(&format!("/v1/sessions/{id}/cancel"), ACME, json!({}))
        .await;
    h.until_status(id, ACME, "cancelled").await;

    let records = h.steps(id, ACME).await;
    let at = records
        .iter()
        .position(|r| r["kind"] == "user_message")
        .expect("the message is journaled");
    assert_eq!(records[at]["payload"]["text"], "Also count the files.");
    assert_eq!(records[at]["payload"]["by"], "acme");
    // It follows the results of the calls before it, and the next request
    // to the model carries it.
    assert_eq!(records[at - 1]["kind"], "tool_result");
    let request = records[at..]
        .iter()
        .find(|r| r["kind"] == "model_request")
        .unwrap();
    assert!(
        request["payload"]
            .to_string()
            .contains("Also count the files.")
    );
}

/// The events of a stream until `stop` events arrived or the stream ended:
/// (id, record) pairs.
async fn read_events(
    addr: SocketAddr,
    id: u64,
    last_event_id: Option<u64>,
    stop: usize,
) -> Vec<(u64, Value)> {
    let mut request = Request::builder()
        .uri(format!("/v1/sessions/{id}/events"))
        .header("host", "localhost")
        .header("authorization", format!("Bearer {ACME}"));
    if let Some(last) = last_event_id {
        request = request.header("last-event-id", last.to_string());
    }
    let mut sender = common::connect(addr).await;
    let response: hyper::Response<Incoming> = sender
        .send_request(request.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    let mut buffer = String::new();
    let mut events = Vec::new();
    while events.len() < stop {
        let Some(frame) = body.frame().await else {
            break;
        };
        let Ok(data) = frame.unwrap().into_data() else {
            continue;
        };
        buffer.push_str(std::str::from_utf8(&data).unwrap());
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            let mut seq = None;
            let mut data = None;
            for line in event.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    seq = Some(v.parse::<u64>().unwrap());
                }
                if let Some(v) = line.strip_prefix("data: ") {
                    data = Some(serde_json::from_str::<Value>(v).unwrap());
                }
            }
            if let (Some(seq), Some(data)) = (seq, data) {
                events.push((seq, data));
            }
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_resumes_after_a_dropped_connection_with_no_event_lost_or_repeated() {
    let h = Harness::new().await;
    let id = h
        .create(ACME, json!({"goal": "list", "model": "slow"}))
        .await;

    // Live: the first events arrive while the session runs; then the
    // connection drops.
    let first = read_events(h.addr(), id, None, 7).await;
    assert_eq!(first.len(), 7);
    let running = h.get(&format!("/v1/sessions/{id}"), ACME).await;
    assert_eq!(running.json["status"], "running");
    let last_seen = first.last().unwrap().0;
    // Records go on being written while nobody listens.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rest = read_events(h.addr(), id, Some(last_seen), usize::MAX).await;

    let seqs: Vec<u64> = first.iter().chain(&rest).map(|(seq, _)| *seq).collect();
    let records = h.steps(id, ACME).await;
    assert_eq!(seqs, (0..records.len() as u64).collect::<Vec<_>>());
    for ((seq, event), record) in first.iter().chain(&rest).zip(&records) {
        assert_eq!(*seq, record["seq"].as_u64().unwrap());
        assert_eq!(event, record, "the event is the journal's record");
    }
    assert_eq!(rest.last().unwrap().1["kind"], "session_ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_problem_details_with_a_stable_type() {
    let h = Harness::new().await;
    let raw = |content_type: &'static str, body: &'static str| {
        Request::builder()
            .method(Method::POST)
            .uri("/v1/sessions")
            .header("host", "localhost")
            .header("authorization", format!("Bearer {ACME}"))
            .header("content-type", content_type)
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    };
    let cases = [
        (raw("application/json", "{not json"), 400, "bad-request"),
        (raw("text/plain", "{}"), 415, "unsupported-media-type"),
        (
            raw("application/json", r#"{"goal": "g", "colour": "red"}"#),
            422,
            "invalid-request",
        ),
        (
            raw("application/json", r#"{"goal": 7}"#),
            422,
            "invalid-request",
        ),
        (
            raw("application/json", r#"{"goal": "  "}"#),
            422,
            "invalid-request",
        ),
        (
            raw("application/json", r#"{"goal": "g", "model": "gpt-9"}"#),
            422,
            "invalid-request",
        ),
        (
            raw("application/json", r#"{"goal": "g", "policy": "none"}"#),
            422,
            "invalid-request",
        ),
    ];
    for (request, status, kind) in cases {
        let reply = send(h.addr(), request).await;
        assert_eq!(reply.status.as_u16(), status, "{}", reply.text);
        assert_eq!(reply.json["type"], format!("urn:longrun:problem:{kind}"));
        assert_eq!(reply.json["status"], status);
        assert_eq!(reply.headers["content-type"], "application/problem+json");
    }
    let big = "x".repeat(65 << 10);
    let too_large = h.post("/v1/sessions", ACME, json!({ "goal": big })).await;
    assert_eq!(too_large.status, StatusCode::PAYLOAD_TOO_LARGE);

    let bad_policy = h
        .post(
            "/v1/sessions",
            GLOBEX,
            json!({"goal": "g", "policy_inline": "[tools]\nallow = [\"fs_*\"\n"}),
        )
        .await;
    assert_eq!(bad_policy.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        bad_policy.json["type"],
        "urn:longrun:problem:invalid-policy"
    );
    assert!(
        bad_policy.json["detail"]
            .as_str()
            .unwrap()
            .contains("policy_inline:"),
        "{}",
        bad_policy.json
    );

    let unknown = h.get("/v1/nothing", ACME).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let wrong_method = h
        .call(Method::DELETE, "/v1/sessions", Some(ACME), None)
        .await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong_method.headers["allow"], "POST, GET");
    let bad_query = h.get("/v1/sessions?limit=0", ACME).await;
    assert_eq!(bad_query.status, StatusCode::BAD_REQUEST);
    let bad_status = h.get("/v1/sessions?status=sleeping", ACME).await;
    assert_eq!(bad_status.status, StatusCode::BAD_REQUEST);
    let bad_id = h.get("/v1/sessions/abc", ACME).await;
    assert_eq!(bad_id.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_tools_and_the_viewer_answer() {
    let h = Harness::new().await;
    let health = h.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(health.json, json!({"status": "ok"}));
    let tools = h.get("/v1/tools", ACME).await;
    let names: Vec<&str> = tools.json["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"fs_read"), "{names:?}");
    let viewer = h.call(Method::GET, "/", None, None).await;
    assert!(
        viewer.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(viewer.text.contains("<html"));
    let metrics = h.call(Method::GET, "/metrics", None, None).await;
    assert!(
        metrics.text.contains(
            r#"longrun_http_requests_total{route="/v1/tools",method="GET",status="200"} 1"#
        ),
        "{}",
        metrics.text
    );
    assert!(
        metrics
            .text
            .contains("longrun_sessions{status=\"running\"} 0")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_finds_its_sessions_and_resumes_the_unfinished_ones() {
    let mut h = Harness::new().await;
    let done = h.create(ACME, json!({"goal": "write out.txt"})).await;
    h.until_status(done, ACME, "completed").await;
    let running = h
        .create(ACME, json!({"goal": "list", "model": "slow"}))
        .await;
    let paused = h
        .create(GLOBEX, json!({"goal": "list", "model": "slow"}))
        .await;
    h.until(running, ACME, |s| s["step"].as_u64().unwrap() >= 2)
        .await;
    h.post(&format!("/v1/sessions/{paused}/pause"), GLOBEX, json!({}))
        .await;
    let paused_at = h.until_status(paused, GLOBEX, "paused").await["step"].clone();

    h.stop().await;
    h.start().await;

    let listed = h.get("/v1/sessions", ACME).await;
    let ids: Vec<u64> = listed.json["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_u64().unwrap())
        .collect();
    assert_eq!(
        ids,
        [done, running],
        "a tenant's sessions survive a restart"
    );
    let old = h.get(&format!("/v1/sessions/{done}"), ACME).await;
    assert_eq!(old.json["status"], "completed");
    assert_eq!(old.json["answer"], "I wrote out.txt.");

    let finished = h.until_status(running, ACME, "completed").await;
    assert_eq!(finished["answer"], "Listed it thirty times.");
    let records = h.steps(running, ACME).await;
    let responses = records
        .iter()
        .filter(|r| r["kind"] == "model_response")
        .count();
    assert_eq!(responses, 31, "each step answered once across the restart");

    tokio::time::sleep(Duration::from_millis(300)).await;
    let still = h.get(&format!("/v1/sessions/{paused}"), GLOBEX).await;
    assert_eq!(
        still.json["status"], "paused",
        "a paused session stays paused"
    );
    assert_eq!(still.json["step"], paused_at);
    h.post(&format!("/v1/sessions/{paused}/resume"), GLOBEX, json!({}))
        .await;
    h.until_status(paused, GLOBEX, "completed").await;
}

#[test]
fn every_route_of_the_server_is_in_the_openapi_document_and_every_documented_route_is_served() {
    let document: Value =
        serde_json::from_str(include_str!("../server/assets/openapi.json")).unwrap();
    let mut documented = std::collections::BTreeSet::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    let served: std::collections::BTreeSet<(String, String)> = longrun_server::routes::ROUTES
        .iter()
        .map(|r| (r.method.to_string(), r.pattern.to_owned()))
        .collect();
    assert_eq!(documented, served);
    for route in longrun_server::routes::ROUTES {
        let op = &document["paths"][route.pattern][route.method.as_str().to_lowercase()];
        let secured = op["security"].as_array().is_some_and(|s| !s.is_empty());
        assert_eq!(
            secured, route.authenticated,
            "{} {}",
            route.method, route.pattern
        );
    }
}

#[test]
fn the_openapi_document_names_every_record_kind_and_no_other() {
    let document: Value =
        serde_json::from_str(include_str!("../server/assets/openapi.json")).unwrap();
    let documented: Vec<&str> =
        document["components"]["schemas"]["Record"]["properties"]["kind"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|kind| kind.as_str().unwrap())
            .collect();
    let kinds: Vec<&str> = longrun_host::journal::RecordKind::ALL
        .iter()
        .map(|kind| kind.as_str())
        .collect();
    assert_eq!(documented, kinds);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_documented_route_answers_as_its_document_says_on_the_wire() {
    let h = Harness::new().await;
    let id = h.create(ACME, json!({"goal": "write out.txt"})).await;
    h.until_status(id, ACME, "completed").await;
    for route in longrun_server::routes::ROUTES {
        let path = route
            .pattern
            .replace("{id}", &id.to_string())
            .replace("{step}", "0");
        let body = (route.method == Method::POST).then(|| json!({}));
        let reply = h.call(route.method.clone(), &path, Some(ACME), body).await;
        let documented = &h_document()["paths"][route.pattern]
            [route.method.as_str().to_lowercase()]["responses"];
        assert!(
            documented.get(reply.status.as_str()).is_some(),
            "{} {path} answered {} which its document does not list: {}",
            route.method,
            reply.status,
            reply.text
        );
        assert!(
            reply.json["detail"]
                .as_str()
                .is_none_or(|d| !d.starts_with("no route")),
            "{} {path} is not served",
            route.method
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sessions_children_are_listed_under_it_with_their_status_and_what_they_spent() {
    let h = Harness::new().await;
    let id = h
        .create(
            ACME,
            json!({"goal": "plan", "model": "planner", "policy": "tree"}),
        )
        .await;
    let parent = h.until_status(id, ACME, "completed").await;
    let reply = h.get(&format!("/v1/sessions/{id}/children"), ACME).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    assert_eq!(reply.json["session"], id);
    let children = reply.json["children"].as_array().unwrap();
    assert_eq!(children.len(), 2, "{}", reply.json);
    let mut calls = 0;
    for child in children {
        assert_eq!(child["depth"], 1);
        assert_eq!(child["spawned_by"]["session"], id);
        assert_eq!(child["model"], "quick");
        assert_eq!(child["status"], "completed");
        assert_eq!(child["own"]["steps"], 2, "{child}");
        assert_eq!(child["own"]["tool_calls"], 1, "{child}");
        calls += child["own"]["tool_calls"].as_u64().unwrap();
    }
    // The parent's usage counts its own three calls and its children's.
    assert_eq!(parent["usage"]["tool_calls"].as_u64().unwrap(), 3 + calls);
    // Another tenant learns nothing of them.
    let other = h.get(&format!("/v1/sessions/{id}/children"), GLOBEX).await;
    assert_eq!(other.status, StatusCode::NOT_FOUND);
    // A session that started none has an empty list.
    let alone = h.create(ACME, json!({"goal": "write"})).await;
    h.until_status(alone, ACME, "completed").await;
    let reply = h.get(&format!("/v1/sessions/{alone}/children"), ACME).await;
    assert_eq!(reply.json["children"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_mode_over_http_runs_its_trajectories_and_applies_the_chosen_ones_changes() {
    let h = Harness::new().await;
    // Refused at once, with why, under a policy that allows no children.
    let refused = h
        .post(
            "/v1/sessions",
            ACME,
            json!({"goal": "write it", "model": "heavy", "trajectories": 2}),
        )
        .await;
    assert!(refused.status.is_client_error(), "{}", refused.json);
    assert!(
        refused.json.to_string().contains("[children]"),
        "{}",
        refused.json
    );

    let id = h
        .create(
            ACME,
            json!({"goal": "write it", "model": "heavy", "policy": "tree", "trajectories": 2}),
        )
        .await;
    let done = h.until_status(id, ACME, "completed").await;

    assert_eq!(done["answer"], "I wrote out.txt.");
    let children = h.get(&format!("/v1/sessions/{id}/children"), ACME).await;
    assert_eq!(children.json["children"].as_array().unwrap().len(), 2);
    let records = h.steps(id, ACME).await;
    let chosen = records
        .iter()
        .find(|r| r["kind"] == "trajectory_chosen")
        .expect("a trajectory_chosen record");
    assert_eq!(chosen["payload"]["index"], 1, "{chosen}");
    assert!(kinds(&records).contains(&"changes_applied"));
    assert_eq!(
        std::fs::read_to_string(h.dir().join("ws/out.txt")).unwrap(),
        "done"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_cancelled_while_it_waits_for_its_children_ends_cancelled() {
    let h = Harness::new().await;
    let id = h
        .create(
            ACME,
            json!({"goal": "list it", "model": "slow", "policy": "tree", "trajectories": 2}),
        )
        .await;
    let children = |json: &Value| json["children"].as_array().map_or(0, Vec::len);
    for _ in 0..100 {
        let reply = h.get(&format!("/v1/sessions/{id}/children"), ACME).await;
        if children(&reply.json) == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let reply = h
        .post(&format!("/v1/sessions/{id}/cancel"), ACME, json!({}))
        .await;

    assert!(reply.status.is_success(), "{}", reply.json);
    h.until_status(id, ACME, "cancelled").await;
    let records = h.steps(id, ACME).await;
    assert_eq!(kinds(&records).last(), Some(&"session_ended"));
}

fn h_document() -> Value {
    serde_json::from_str(include_str!("../server/assets/openapi.json")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_priced_session_with_compactions_shows_the_same_status_usage_and_cost_after_a_restart() {
    let mut h = Harness::new().await;
    h.agent.context_tokens = 1024;
    // Stopped at once after starting: the shutdown signal must reach an
    // accept loop that has not run yet (it once waited for ever).
    h.stop().await;
    h.start().await;
    let id = h
        .create(
            ACME,
            json!({"goal": "list", "model": "priced", "policy": "priced"}),
        )
        .await;
    let before = h.until_status(id, ACME, "completed").await;
    let records = h.steps(id, ACME).await;
    let compactions = records.iter().filter(|r| r["kind"] == "compaction").count();
    assert!(compactions >= 2, "the session compacted: {compactions}");
    assert!(
        before["usage"]["cost_usd"].as_f64().unwrap() > 0.0,
        "{before}"
    );

    h.stop().await;
    h.start().await;
    let after = h.get(&format!("/v1/sessions/{id}"), ACME).await.json;
    for field in ["status", "answer", "step"] {
        assert_eq!(after[field], before[field], "{field}");
    }
    for field in ["steps", "tool_calls", "input_tokens", "output_tokens"] {
        assert_eq!(after["usage"][field], before["usage"][field], "{field}");
    }
    let cost = |v: &Value| v["usage"]["cost_usd"].as_f64().unwrap();
    assert!(
        (cost(&after) - cost(&before)).abs() < 1e-9,
        "cost before {} after {}",
        cost(&before),
        cost(&after)
    );
    println!(
        "{compactions} compactions; cost ${:.6} before and ${:.6} after the restart",
        cost(&before),
        cost(&after)
    );
}
