//! The OpenAI-compatible backend against a local server that behaves as Kimi
//! does: it requires the key in the `Authorization` header, rejects an
//! assistant tool-call message without `reasoning_content` (HTTP 400),
//! answers with `reasoning_content` and `tool_calls`, streams, and now and
//! then answers 429 with `Retry-After` or 500. The server records every
//! request, so the tests can show where the key went.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::channel::{Channel, Sender};
use hyper::{Request, Response};
use longrun_host::agent::{AgentConfig, Session, SessionStatus};
use longrun_host::journal::{Journal, RecordKind};
use longrun_host::model::{Message, Model, ModelError, ModelRequest, Purpose, Role, ToolCall};
use longrun_host::openai::{OpenAiConfig, OpenAiModel};
use serde_json::{Value, json};

const KEY: &str = "sk-test-5f0c1e9a7d2b4c68";
const KEY_VAR: &str = "LONGRUN_TEST_KIMI_KEY";
const WRONG_KEY_VAR: &str = "LONGRUN_TEST_KIMI_WRONG_KEY";
const WRONG_KEY: &str = "sk-wrong-0000";
const STEPS: usize = 30;

/// Set the key variables once, before any test of this binary reads the
/// environment (each test calls this first).
fn keys() {
    static SET: Once = Once::new();
    SET.call_once(|| {
        // SAFETY: every test of this binary calls `keys()` before doing
        // anything else, so no other thread reads the environment while
        // it is written.
        unsafe {
            std::env::set_var(KEY_VAR, KEY);
            std::env::set_var(WRONG_KEY_VAR, WRONG_KEY);
        }
    });
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
struct Seen {
    uri: String,
    headers: Vec<(String, String)>,
    body: String,
    status: u16,
    at: Instant,
    /// A compaction's summary request.
    summary: bool,
}

#[derive(Default)]
struct Server {
    seen: Mutex<Vec<Seen>>,
    retry_after_given: Mutex<bool>,
    /// Summary requests answered so far (the first is rate limited).
    summaries: Mutex<u32>,
    /// Steps answered so far, for a model whose context is compacted (its
    /// requests no longer show every earlier step).
    steps_answered: Mutex<usize>,
}

type Body = Channel<Bytes, std::io::Error>;

fn answer(
    status: u16,
    headers: &[(&str, &str)],
    text: String,
) -> (Response<Body>, Sender<Bytes, std::io::Error>) {
    let (mut tx, body) = Channel::new(16);
    let mut response = Response::builder().status(status);
    for (k, v) in headers {
        response = response.header(*k, *v);
    }
    let _ = tx.try_send(hyper::body::Frame::data(Bytes::from(text)));
    (response.body(body).unwrap(), tx)
}

fn error(status: u16, message: &str) -> Response<Body> {
    answer(
        status,
        &[("content-type", "application/json")],
        json!({"error": {"message": message, "type": "invalid_request_error"}}).to_string(),
    )
    .0
}

impl Server {
    async fn handle(
        self: Arc<Self>,
        req: Request<hyper::body::Incoming>,
    ) -> Result<Response<Body>, Infallible> {
        let uri = req.uri().to_string();
        let headers: Vec<(String, String)> = req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let auth = req
            .headers()
            .get("authorization")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let body = String::from_utf8_lossy(&body).into_owned();
        let (status, response) = self.respond(&uri, auth.as_deref(), &body).await;
        let summary = body.contains("You compact the context");
        self.seen.lock().unwrap().push(Seen {
            uri,
            headers,
            body,
            status,
            at: Instant::now(),
            summary,
        });
        Ok(response)
    }

    async fn respond(&self, uri: &str, auth: Option<&str>, body: &str) -> (u16, Response<Body>) {
        if uri != "/v1/chat/completions" {
            return (404, error(404, "no such route"));
        }
        if auth != Some(&format!("Bearer {KEY}")) {
            // A careless server echoes what it was given.
            let given = auth.unwrap_or("nothing");
            return (
                401,
                error(401, &format!("Invalid Authentication: got {given}")),
            );
        }
        let Ok(request) = serde_json::from_str::<Value>(body) else {
            return (400, error(400, "not JSON"));
        };
        let messages = request["messages"].as_array().cloned().unwrap_or_default();
        for (i, m) in messages.iter().enumerate() {
            let calls = m["tool_calls"].as_array().is_some_and(|c| !c.is_empty());
            let reasoning = m["reasoning_content"]
                .as_str()
                .is_some_and(|r| !r.is_empty());
            if m["role"] == "assistant" && calls && !reasoning {
                let message = format!(
                    "thinking is enabled but reasoning_content is missing in assistant tool call message at index {i}"
                );
                return (400, error(400, &message));
            }
        }
        let summary = messages.first().is_some_and(|m| {
            m["role"] == "system"
                && m["content"]
                    .as_str()
                    .is_some_and(|c| c.starts_with("You compact the context"))
        });
        if summary {
            let mut answered = self.summaries.lock().unwrap();
            *answered += 1;
            if *answered == 1 {
                return (
                    429,
                    answer(
                        429,
                        &[("retry-after", "1")],
                        json!({"error": {"message": "rate limited"}}).to_string(),
                    )
                    .0,
                );
            }
        }
        let n = self.seen.lock().unwrap().len() + 1;
        if summary {
            // Answered below, without the injected failures of steps.
        } else if n % 9 == 3 {
            // The first rate limit asks for a full second; later ones for none.
            let mut given = self.retry_after_given.lock().unwrap();
            let wait = if *given { "0" } else { "1" };
            *given = true;
            return (
                429,
                answer(
                    429,
                    &[("retry-after", wait)],
                    json!({"error": {"message": "rate limited"}}).to_string(),
                )
                .0,
            );
        }
        if n % 11 == 5 {
            return (500, error(500, "internal error"));
        }
        let model = request["model"].as_str().unwrap_or_default().to_owned();
        if model == "slow" {
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
        let step = if model == "verbose" {
            let mut answered = self.steps_answered.lock().unwrap();
            if !summary {
                *answered += 1;
            }
            *answered - usize::from(!summary)
        } else {
            messages.iter().filter(|m| m["role"] == "assistant").count()
        };
        let prompt_tokens = body.len() as u64 / 4;
        let (content, reasoning, call) = if summary {
            (
                json!("Summary: the agent echoed the steps so far."),
                "Summarising.".to_owned(),
                None,
            )
        } else if step < STEPS {
            // A "verbose" model thinks at length: its context fills.
            let pad = if model == "verbose" {
                " Thinking it over.".repeat(40)
            } else {
                String::new()
            };
            (
                Value::Null,
                format!("I will echo step {step}.{pad}"),
                Some((
                    format!("call-{step}"),
                    json!({"text": format!("step {step}")}).to_string(),
                )),
            )
        } else {
            (
                json!(format!("echoed {STEPS} times")),
                "All done.".to_owned(),
                None,
            )
        };
        let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": 12, "total_tokens": prompt_tokens + 12, "cached_tokens": prompt_tokens / 2});
        if request["stream"] == true {
            let (response, mut tx) =
                answer(200, &[("content-type", "text/event-stream")], String::new());
            let broken = model == "broken-stream";
            tokio::spawn(async move {
                let mut chunks = vec![
                    json!({"choices": [{"index": 0, "delta": {"role": "assistant", "reasoning_content": &reasoning[..4]}}]}),
                    json!({"choices": [{"index": 0, "delta": {"reasoning_content": &reasoning[4..]}}]}),
                ];
                if let Some((id, args)) = &call {
                    let (a, b) = args.split_at(args.len() / 2);
                    chunks.push(json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": id, "type": "function", "function": {"name": "echo", "arguments": a}}]}}]}));
                    chunks.push(json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": b}}]}}]}));
                } else {
                    chunks.push(json!({"choices": [{"index": 0, "delta": {"content": content}}]}));
                }
                chunks.push(json!({"choices": [{"index": 0, "delta": {}, "finish_reason": if call.is_some() {"tool_calls"} else {"stop"}, "usage": usage}]}));
                for (i, chunk) in chunks.iter().enumerate() {
                    if broken && i == 2 {
                        tx.abort(std::io::Error::other("connection reset"));
                        return;
                    }
                    if tx
                        .send_data(Bytes::from(format!("data: {chunk}\n\n")))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                let _ = tx.send_data(Bytes::from_static(b"data: [DONE]\n\n")).await;
            });
            return (200, response);
        }
        let mut message =
            json!({"role": "assistant", "content": content, "reasoning_content": reasoning});
        if let Some((id, args)) = call {
            message["tool_calls"] = json!([{"id": id, "type": "function", "function": {"name": "echo", "arguments": args}}]);
        }
        let body = json!({"id": "cmpl-1", "object": "chat.completion", "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}], "usage": usage});
        (
            200,
            answer(
                200,
                &[("content-type", "application/json")],
                body.to_string(),
            )
            .0,
        )
    }
}

async fn kimi_like_server() -> (SocketAddr, Arc<Server>) {
    let server = Arc::new(Server::default());
    let shared = server.clone();
    let addr = common::serve(move |req| shared.clone().handle(req)).await;
    (addr, server)
}

/// The Kimi profile, pointed at the local server.
fn config(addr: SocketAddr, stream: bool) -> OpenAiConfig {
    OpenAiConfig {
        base_url: format!("http://{addr}/v1"),
        api_key_env: Some(KEY_VAR.to_owned()),
        stream,
        ..OpenAiConfig::profile("kimi-k2.6").unwrap()
    }
}

fn request(messages: Vec<Message>) -> ModelRequest {
    ModelRequest {
        messages,
        tools: vec![],
        max_output_tokens: 100,
        step: 0,
        purpose: Purpose::Step,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_30_step_streaming_session_completes_through_rate_limits_and_server_errors() {
    keys();
    let (addr, server) = kimi_like_server().await;
    let model = OpenAiModel::new(config(addr, true)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&dir.path().join("journal")).unwrap();
    let toolbox = common::shared_toolbox(false).await;
    let policy = common::policy("[tools]\nallow = [\"echo\"]\n");
    let agent = AgentConfig {
        first_backoff: Duration::from_millis(5),
        ..AgentConfig::default()
    };
    let started = Instant::now();
    let mut session = Session::start(&journal, toolbox, &policy, &model, agent, "echo 30 times")
        .await
        .unwrap();
    let status = session.run().await.unwrap();
    assert_eq!(
        status,
        SessionStatus::Completed {
            answer: format!("echoed {STEPS} times")
        }
    );
    assert_eq!(session.ledger().used.tool_calls, STEPS as u64);
    assert_eq!(session.ledger().used.steps, STEPS as u64 + 1);

    let seen = server.seen.lock().unwrap().clone();
    let count = |status: u16| seen.iter().filter(|s| s.status == status).count();
    assert_eq!(count(200), STEPS + 1);
    assert!(
        count(429) >= 3 && count(500) >= 2,
        "429s {} 500s {}",
        count(429),
        count(500)
    );
    assert_eq!(
        count(400),
        0,
        "reasoning_content went back on every tool-call message"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "the one-second Retry-After was honoured"
    );
    // The key: in the Authorization header of every request, nowhere else.
    for s in &seen {
        assert!(!s.uri.contains(KEY) && !s.body.contains(KEY));
        for (name, value) in &s.headers {
            if name == "authorization" {
                assert_eq!(value, &format!("Bearer {KEY}"));
            } else {
                assert!(!value.contains(KEY), "{name}");
            }
        }
    }
    // The journal: the reasoning kept verbatim, the key nowhere; every
    // failure journaled as an error record.
    let records: Vec<_> = journal.records(session.id()).map(|r| r.unwrap()).collect();
    let mut text = String::new();
    for r in &records {
        text.push_str(&String::from_utf8_lossy(&r.payload));
        for blob in &r.blobs {
            text.push_str(&String::from_utf8_lossy(&journal.blob(blob).unwrap()));
        }
    }
    assert!(!text.contains(KEY));
    assert!(text.contains("I will echo step 29."));
    assert_eq!(
        records
            .iter()
            .filter(|r| r.kind == RecordKind::Error)
            .count(),
        count(429) + count(500)
    );
    // Usage as reported, cached tokens included.
    assert!(session.ledger().used.input_tokens > 0);
    assert_eq!(session.ledger().used.output_tokens, 12 * (STEPS as u64 + 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_streaming_answer_keeps_reasoning_tool_calls_and_cached_tokens() {
    keys();
    let (addr, _server) = kimi_like_server().await;
    let model = OpenAiModel::new(config(addr, false)).unwrap();
    let goal = Message::text(Role::User, "echo");
    let response = model.complete(&request(vec![goal])).await.unwrap();
    assert_eq!(
        response.message.reasoning_content.as_deref(),
        Some("I will echo step 0.")
    );
    assert_eq!(
        response.message.tool_calls,
        vec![ToolCall {
            id: "call-0".into(),
            name: "echo".into(),
            arguments: r#"{"text":"step 0"}"#.into()
        }]
    );
    assert_eq!(response.usage.output_tokens, 12);
    assert_eq!(
        response.usage.cached_input_tokens,
        response.usage.input_tokens / 2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_call_message_without_reasoning_is_refused_by_the_server_and_is_fatal() {
    keys();
    let (addr, _server) = kimi_like_server().await;
    let model = OpenAiModel::new(config(addr, false)).unwrap();
    let stripped = Message {
        role: Role::Assistant,
        content: None,
        reasoning_content: None,
        tool_calls: vec![ToolCall {
            id: "c".into(),
            name: "echo".into(),
            arguments: "{}".into(),
        }],
        tool_call_id: None,
    };
    let messages = vec![
        Message::text(Role::User, "go"),
        stripped,
        Message::tool_result("c", "ok"),
    ];
    match model.complete(&request(messages)).await {
        Err(ModelError::Fatal(e)) => assert!(
            e.contains("HTTP 400")
                && e.contains(
                    "reasoning_content is missing in assistant tool call message at index 1"
                ),
            "{e}"
        ),
        other => panic!("expected a fatal error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_key_is_fatal_and_never_appears_in_the_error() {
    keys();
    let (addr, _server) = kimi_like_server().await;
    let model = OpenAiModel::new(OpenAiConfig {
        api_key_env: Some(WRONG_KEY_VAR.to_owned()),
        ..config(addr, false)
    })
    .unwrap();
    match model
        .complete(&request(vec![Message::text(Role::User, "hi")]))
        .await
    {
        Err(ModelError::Fatal(e)) => {
            assert!(e.contains("HTTP 401"), "{e}");
            assert!(
                !e.contains(WRONG_KEY),
                "the server echoed the key; the error must not: {e}"
            );
        }
        other => panic!("expected a fatal error, got {other:?}"),
    }
    let missing = OpenAiModel::new(OpenAiConfig {
        api_key_env: Some("LONGRUN_TEST_NO_SUCH_VARIABLE".to_owned()),
        ..config(addr, false)
    });
    assert_eq!(
        missing.err().unwrap().to_string(),
        "the API key variable LONGRUN_TEST_NO_SUCH_VARIABLE is not set"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_answer_times_out_and_a_broken_stream_is_transient() {
    keys();
    let (addr, _server) = kimi_like_server().await;
    let slow = OpenAiModel::new(OpenAiConfig {
        model: "slow".into(),
        request_timeout: Duration::from_millis(300),
        ..config(addr, false)
    })
    .unwrap();
    let started = Instant::now();
    let outcome = slow
        .complete(&request(vec![Message::text(Role::User, "hi")]))
        .await;
    assert!(
        matches!(outcome, Err(ModelError::Transient { .. })),
        "{outcome:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    let broken = OpenAiModel::new(OpenAiConfig {
        model: "broken-stream".into(),
        ..config(addr, true)
    })
    .unwrap();
    let outcome = broken
        .complete(&request(vec![Message::text(Role::User, "hi")]))
        .await;
    match outcome {
        Err(ModelError::Transient { message, .. }) => {
            assert!(message.contains("stream"), "{message}")
        }
        other => panic!("expected a transient error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compactions_summary_request_is_retried_after_the_servers_retry_after() {
    keys();
    let (addr, server) = kimi_like_server().await;
    let model = OpenAiModel::new(OpenAiConfig {
        model: "verbose".into(),
        ..config(addr, false)
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&dir.path().join("journal")).unwrap();
    let toolbox = common::shared_toolbox(false).await;
    let policy = common::policy("[tools]\nallow = [\"echo\"]\n");
    let agent = AgentConfig {
        first_backoff: Duration::from_millis(5),
        context_tokens: 1024,
        ..AgentConfig::default()
    };
    let mut session = Session::start(&journal, toolbox, &policy, &model, agent, "echo 30 times")
        .await
        .unwrap();
    let status = session.run().await.unwrap();
    assert!(
        matches!(status, SessionStatus::Completed { .. }),
        "{status:?}"
    );

    let seen = server.seen.lock().unwrap().clone();
    let summaries: Vec<&Seen> = seen.iter().filter(|s| s.summary).collect();
    assert!(summaries.len() >= 2, "{} summary requests", summaries.len());
    assert_eq!(summaries[0].status, 429);
    assert_eq!(summaries[1].status, 200, "the summary was asked again");
    let waited = summaries[1].at - summaries[0].at;
    assert!(
        waited >= Duration::from_millis(950),
        "asked again after {waited:?}, before the one-second Retry-After"
    );
    // The first compaction is the model's summary, not a trim, and the
    // failure before it is journaled like a step's.
    let records: Vec<_> = journal.records(session.id()).map(|r| r.unwrap()).collect();
    let first = records
        .iter()
        .position(|r| r.kind == RecordKind::Compaction)
        .expect("a compaction");
    let compaction: Value = serde_json::from_slice(&records[first].payload).unwrap();
    assert_eq!(compaction["method"], "summary", "{compaction}");
    let failure: Value = serde_json::from_slice(&records[first - 1].payload).unwrap();
    assert_eq!(records[first - 1].kind, RecordKind::Error);
    assert!(
        failure["retry_in_ms"].as_u64().unwrap() >= 1000,
        "{failure}"
    );
    println!("the summary was asked again {waited:?} after a 429 with Retry-After: 1");
}
