//! The tools as an MCP server (`longrun mcp`), for agents that bring their
//! own loop (Claude Code, Codex, Cursor): `tools/list` offers the tools a
//! policy allows, and each `tools/call` is checked against that policy, run
//! in the same sandbox and journaled as the agent loop journals a call
//! (intent before it runs, result after, refusals with their reason), in
//! one journal session per server run.
//!
//! Transports: stdio (one JSON-RPC message a line) and streamable HTTP
//! (`POST /mcp`, answered with `application/json`; this server pushes
//! nothing, so `GET` is 405). Protocol: the 2025 handshake (`initialize`).
//! A tool that needs a person's approval is refused: an MCP client has no
//! approver this server can ask.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use longrun_host::agent::{Refusal, SessionCreated, ToolIntent, session_created, tool_result};
use longrun_host::journal::payload::Driver;
use longrun_host::journal::{Journal, JournalError, RecordKind, SessionWriter};
use longrun_host::policy::{Decision, Policy};
use longrun_host::sandbox::{CallError, CallRequest, Effects, Toolbox};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::problem::Problem;
use crate::{Body, full};

/// The protocol versions of the 2025 handshake this server speaks, newest
/// first.
const VERSIONS: [&str; 4] = ["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];

/// The largest message accepted, in bytes.
const MAX_MESSAGE: usize = 4 << 20;

/// JSON-RPC error codes.
const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const METHOD_NOT_FOUND: i64 = -32601;
const INVALID_PARAMS: i64 = -32602;

#[derive(Debug, thiserror::Error)]
pub enum McpError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("cannot encode a journal record: {0}")]
    Encode(#[from] serde_json::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The MCP server: the tools, the policy over them, and the journal.
pub struct McpServer {
    toolbox: Arc<Toolbox>,
    policy: Arc<Policy>,
    journal: Arc<Journal>,
    writer: tokio::sync::Mutex<SessionWriter>,
    /// A call id for the journal, per call.
    calls: std::sync::atomic::AtomicU64,
}

impl McpServer {
    /// A server whose calls are journaled in a new session of `journal`;
    /// `transport` ("stdio" or "http") is recorded with it.
    pub async fn new(
        toolbox: Arc<Toolbox>,
        policy: Arc<Policy>,
        journal: Arc<Journal>,
        transport: &str,
    ) -> Result<McpServer, McpError> {
        let mut writer = journal.create_session()?;
        let mut labels = serde_json::Map::new();
        labels.insert("mcp".into(), transport.into());
        let created = SessionCreated {
            driver: Driver::Client,
            ..session_created(
                &format!("MCP server over {transport}"),
                &policy,
                "mcp-client",
                &toolbox,
                labels,
            )
        };
        writer
            .append_durable(
                RecordKind::SessionCreated,
                &serde_json::to_vec(&created)?,
                &[],
            )
            .await?;
        Ok(McpServer {
            toolbox,
            policy,
            journal,
            writer: tokio::sync::Mutex::new(writer),
            calls: Default::default(),
        })
    }

    /// The journal session of this server's calls.
    pub async fn session(&self) -> longrun_host::journal::SessionId {
        self.writer.lock().await.session()
    }

    /// Answer one JSON-RPC message (text); `None` for a notification.
    pub async fn handle_text(&self, text: &str) -> Result<Option<Value>, McpError> {
        match serde_json::from_str::<Value>(text) {
            Ok(message) => self.handle(message).await,
            Err(e) => Ok(Some(error(
                Value::Null,
                PARSE_ERROR,
                &format!("not JSON: {e}"),
            ))),
        }
    }

    /// Answer one JSON-RPC message; `None` for a notification or a response.
    pub async fn handle(&self, message: Value) -> Result<Option<Value>, McpError> {
        let Some(object) = message.as_object() else {
            return Ok(Some(error(
                Value::Null,
                INVALID_REQUEST,
                "a message is one JSON-RPC object",
            )));
        };
        let id = object.get("id").cloned();
        let Some(method) = object.get("method").and_then(Value::as_str) else {
            // A response to a request of ours (we send none), or junk.
            return Ok(id.map(|id| error(id, INVALID_REQUEST, "no method")));
        };
        let Some(id) = id else {
            // Notifications (initialized, cancelled) need no answer.
            return Ok(None);
        };
        let params = object.get("params").cloned().unwrap_or(Value::Null);
        let result = match method {
            "initialize" => Ok(self.initialize(&params)),
            "ping" => Ok(json!({})),
            "tools/list" => Ok(self.list_tools()),
            "tools/call" => self.call_tool(&params).await?,
            _ => Err((METHOD_NOT_FOUND, format!("no method {method:?}"))),
        };
        Ok(Some(match result {
            Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
            Err((code, message)) => error(id, code, &message),
        }))
    }

    fn initialize(&self, params: &Value) -> Value {
        let asked = params["protocolVersion"].as_str().unwrap_or_default();
        let version = VERSIONS
            .iter()
            .find(|v| **v == asked)
            .unwrap_or(&VERSIONS[0]);
        json!({
            "protocolVersion": version,
            "capabilities": {"tools": {"listChanged": false}},
            "serverInfo": {"name": "longrun", "version": env!("CARGO_PKG_VERSION")},
            "instructions": "Each call runs in a fresh sandbox under the operator's policy and is journaled.",
        })
    }

    fn list_tools(&self) -> Value {
        let tools: Vec<Value> = self
            .toolbox
            .tools()
            .filter(|t| !matches!(self.policy.decide(&t.name), Decision::Deny(_)))
            .map(|t| {
                json!({
                    "name": t.name,
                    "description": t.description,
                    "inputSchema": t.parameters,
                    "annotations": {
                        "idempotentHint": t.idempotent,
                        "readOnlyHint": matches!(t.effects, Effects::None | Effects::Reads),
                    },
                })
            })
            .collect();
        json!({ "tools": tools })
    }

    /// Check, journal and run one call. A refused or failed call is a tool
    /// result with `isError`, as MCP asks, so the client's model sees why.
    async fn call_tool(&self, params: &Value) -> Result<Result<Value, (i64, String)>, McpError> {
        let Some(name) = params["name"].as_str() else {
            return Ok(Err((INVALID_PARAMS, "tools/call needs a name".into())));
        };
        let arguments = match &params["arguments"] {
            Value::Null => "{}".to_owned(),
            args => args.to_string(),
        };
        let call_id = format!(
            "mcp_{}",
            self.calls
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        if self.toolbox.tool(name).is_none() {
            return Ok(Err((INVALID_PARAMS, format!("no tool {name:?}"))));
        }
        let request = CallRequest {
            tool: name,
            args: &arguments,
            approved: false,
        };
        let mut writer = self.writer.lock().await;
        if let Err(refusal) = self.toolbox.admit(&self.policy, &request) {
            let reason = match refusal {
                CallError::NeedsApproval { .. } => format!(
                    "{refusal}; an MCP client cannot give a person's approval, so the call is refused"
                ),
                _ => refusal.to_string(),
            };
            let record = Refusal {
                call_id,
                tool: name.to_owned(),
                reason: reason.clone(),
            };
            writer
                .append_durable(
                    RecordKind::PolicyDecision,
                    &serde_json::to_vec(&record)?,
                    &[],
                )
                .await?;
            return Ok(Ok(tool_text(&format!("refused: {reason}"), true)));
        }
        let intent = ToolIntent {
            call_id: call_id.clone(),
            tool: name.to_owned(),
            arguments: arguments.clone(),
            idempotent: self.toolbox.tool(name).is_some_and(|t| t.idempotent),
        };
        writer
            .append_durable(RecordKind::ToolIntent, &serde_json::to_vec(&intent)?, &[])
            .await?;
        // The writer stays locked while the tool runs: this session's
        // records keep one call's intent and result together.
        let started = Instant::now();
        let report = self.toolbox.call(&self.policy, &request).await;
        let outcome = report.outcome.map_err(|e| e.to_string());
        let (result, blobs) = tool_result(&self.journal, &call_id, &outcome, started.elapsed())
            .map_err(|e| McpError::Io(std::io::Error::other(e.to_string())))?;
        writer
            .append_durable(
                RecordKind::ToolResult,
                &serde_json::to_vec(&result)?,
                &blobs,
            )
            .await?;
        Ok(Ok(match outcome {
            Ok(output) => tool_text(&output, false),
            Err(e) => tool_text(&format!("error: {e}"), true),
        }))
    }

    /// Serve on stdin and stdout until stdin ends.
    pub async fn serve_stdio(&self) -> Result<(), McpError> {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        let mut stdout = tokio::io::stdout();
        while let Some(line) = lines.next_line().await? {
            if line.trim().is_empty() {
                continue;
            }
            let answer = if line.len() > MAX_MESSAGE {
                Some(error(Value::Null, INVALID_REQUEST, "message too large"))
            } else {
                self.handle_text(&line).await?
            };
            if let Some(answer) = answer {
                let mut bytes = serde_json::to_vec(&answer)?;
                bytes.push(b'\n');
                stdout.write_all(&bytes).await?;
                stdout.flush().await?;
            }
        }
        Ok(())
    }

    /// Serve streamable HTTP at `/mcp` on `listener` until `stop` resolves.
    /// With `token`, each request needs `Authorization: Bearer TOKEN`.
    pub async fn serve_http(
        self: Arc<Self>,
        listener: TcpListener,
        token: Option<String>,
        stop: impl Future<Output = ()>,
    ) {
        let token = Arc::new(token);
        let mut stop = std::pin::pin!(stop);
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!("mcp accept: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut stop => break,
            };
            let (server, token) = (self.clone(), token.clone());
            let service = service_fn(move |request| {
                let (server, token) = (server.clone(), token.clone());
                async move { Ok::<_, Infallible>(server.answer_http(request, token.as_deref()).await) }
            });
            tokio::spawn(async move {
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(30))
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(e) = connection.await {
                    tracing::debug!("mcp connection: {e}");
                }
            });
        }
    }

    async fn answer_http(&self, request: Request<Incoming>, token: Option<&str>) -> Response<Body> {
        if request.uri().path() != "/mcp" {
            return Problem::NotFound
                .with("the MCP endpoint is /mcp")
                .into_response();
        }
        if let Some(token) = token {
            let given = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if given.map(|g| blake3::hash(g.as_bytes())) != Some(blake3::hash(token.as_bytes())) {
                return Problem::Unauthorized
                    .with("no valid bearer token")
                    .into_response();
            }
        }
        match *request.method() {
            Method::POST => {}
            Method::GET | Method::DELETE => {
                // No stream of server messages, no session to end.
                let mut response = Problem::MethodNotAllowed
                    .with("this server answers POST only")
                    .into_response();
                response
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("POST"));
                return response;
            }
            _ => {
                return Problem::MethodNotAllowed
                    .with("this server answers POST only")
                    .into_response();
            }
        }
        let body = match http_body_util::Limited::new(request.into_body(), MAX_MESSAGE)
            .collect()
            .await
        {
            Ok(body) => body.to_bytes(),
            Err(e) => {
                return Problem::PayloadTooLarge
                    .with(format!("reading the message: {e}"))
                    .into_response();
            }
        };
        let text = String::from_utf8_lossy(&body);
        match self.handle_text(&text).await {
            Ok(Some(answer)) => {
                let mut response = Response::new(full(Bytes::from(answer.to_string())));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                response
            }
            Ok(None) => {
                let mut response = Response::new(full(Bytes::new()));
                *response.status_mut() = StatusCode::ACCEPTED;
                response
            }
            Err(e) => Problem::Internal.with(e.to_string()).into_response(),
        }
    }
}

fn tool_text(text: &str, is_error: bool) -> Value {
    json!({"content": [{"type": "text", "text": text}], "isError": is_error})
}

fn error(id: Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

/// Where an HTTP MCP server listens, for messages.
pub fn endpoint(addr: SocketAddr) -> String {
    format!("http://{addr}/mcp")
}
