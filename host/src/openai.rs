//! The OpenAI-compatible backend: chat completions with tools over HTTP(S),
//! streaming or not, for Kimi K2.6 and any other provider of that protocol.
//!
//! What a demanding operator needs from it:
//! - `reasoning_content` is kept verbatim and sent back on every assistant
//!   message (Kimi answers HTTP 400 when a tool-call message lacks it);
//! - the API key is read from an environment variable named in the config
//!   and goes only into the `Authorization` header: never into a journaled
//!   message, a log line or an error (error texts are redacted);
//! - 429, 408 and 5xx answers and connection failures are
//!   [`ModelError::Transient`], carrying the server's `Retry-After`, so that
//!   the agent loop retries with backoff, never sooner than asked; other
//!   answers are fatal, with the server's message;
//! - usage, including cached and reasoning tokens when reported, feeds the
//!   budgets.
//!
//! One connection per request: an agent makes one request per step, seconds
//! apart, so reuse would save little and a fresh connection never inherits
//! a broken one.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::model::{
    Message, Model, ModelError, ModelFuture, ModelRequest, ModelResponse, Role, ToolCall, Usage,
};

/// How to reach and drive one model of an OpenAI-compatible API.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenAiConfig {
    /// The name the journal and the price table know this model by.
    pub name: String,
    /// The API's base URL, e.g. `https://api.moonshot.ai/v1`
    /// (`/chat/completions` is appended).
    pub base_url: String,
    /// The provider's model id.
    pub model: String,
    /// The environment variable that holds the API key, if the API needs one.
    pub api_key_env: Option<String>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    /// The most output tokens asked for; the loop's own limit applies too.
    pub max_tokens: Option<u64>,
    /// Kimi's `thinking` switch; not sent when unset.
    pub thinking: Option<bool>,
    /// Ask for a server-sent-event stream instead of one JSON answer.
    pub stream: bool,
    /// The longest a whole request (connect, send, read the answer) may take.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
}

impl OpenAiConfig {
    /// A known model's defaults, by profile name: `kimi-k2.6` (temperature
    /// 1.0, top_p 0.95, max_tokens 32,000, thinking on, streaming, key in
    /// `MOONSHOT_API_KEY`).
    pub fn profile(name: &str) -> Option<OpenAiConfig> {
        match name {
            "kimi-k2.6" => Some(OpenAiConfig {
                name: format!("openai-compatible:{name}"),
                base_url: "https://api.moonshot.ai/v1".to_owned(),
                model: name.to_owned(),
                api_key_env: Some("MOONSHOT_API_KEY".to_owned()),
                temperature: Some(1.0),
                top_p: Some(0.95),
                max_tokens: Some(32_000),
                thinking: Some(true),
                stream: true,
                request_timeout: Duration::from_secs(600),
                connect_timeout: Duration::from_secs(10),
            }),
            _ => None,
        }
    }
}

/// Why a backend could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum OpenAiError {
    #[error("base URL {url:?}: {why}")]
    BadUrl { url: String, why: String },
    #[error("the API key variable {0} is not set")]
    MissingKey(String),
}

/// Where requests go.
#[derive(Debug, Clone)]
struct Endpoint {
    tls: bool,
    host: String,
    port: u16,
    /// The request path, e.g. `/v1/chat/completions`.
    path: String,
}

impl Endpoint {
    fn parse(base_url: &str) -> Result<Endpoint, OpenAiError> {
        let bad = |why: &str| OpenAiError::BadUrl {
            url: base_url.to_owned(),
            why: why.to_owned(),
        };
        let uri: http::Uri = base_url.parse().map_err(|_| bad("not a URL"))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad("the scheme must be http or https")),
        };
        let host = uri.host().ok_or_else(|| bad("no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let path = format!("{}/chat/completions", uri.path().trim_end_matches('/'));
        Ok(Endpoint {
            tls,
            host,
            port,
            path,
        })
    }

    /// The `Host` header's value.
    fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default = if self.tls { 443 } else { 80 };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// A model behind an OpenAI-compatible API.
pub struct OpenAiModel {
    config: OpenAiConfig,
    endpoint: Endpoint,
    key: Option<String>,
    tls: Arc<tokio_rustls::rustls::ClientConfig>,
}

impl OpenAiModel {
    /// A backend for `config`, with its key read from the environment now.
    pub fn new(config: OpenAiConfig) -> Result<OpenAiModel, OpenAiError> {
        let endpoint = Endpoint::parse(&config.base_url)?;
        let key = match &config.api_key_env {
            Some(var) => Some(
                std::env::var(var)
                    .ok()
                    .filter(|k| !k.is_empty())
                    .ok_or_else(|| OpenAiError::MissingKey(var.clone()))?,
            ),
            None => None,
        };
        let roots = tokio_rustls::rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let tls = tokio_rustls::rustls::ClientConfig::builder_with_provider(Arc::new(
            tokio_rustls::rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| OpenAiError::BadUrl {
            url: config.base_url.clone(),
            why: format!("TLS: {e}"),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(OpenAiModel {
            config,
            endpoint,
            key,
            tls: Arc::new(tls),
        })
    }

    /// `text` with the API key cut out, for anything that may be shown.
    fn redact(&self, text: &str) -> String {
        match &self.key {
            Some(key) => text.replace(key.as_str(), "[redacted]"),
            None => text.to_owned(),
        }
    }

    fn body(&self, request: &ModelRequest) -> Value {
        let messages: Vec<Value> = request.messages.iter().map(wire_message).collect();
        let max_tokens = match self.config.max_tokens {
            Some(limit) => limit.min(request.max_output_tokens),
            None => request.max_output_tokens,
        };
        let mut body = json!({
            "model": self.config.model,
            "messages": messages,
            "max_tokens": max_tokens,
            "stream": self.config.stream,
        });
        if !request.tools.is_empty() {
            body["tools"] = request
                .tools
                .iter()
                .map(|t| {
                    json!({"type": "function", "function": {
                        "name": t.name, "description": t.description, "parameters": t.parameters}})
                })
                .collect();
        }
        if let Some(t) = self.config.temperature {
            body["temperature"] = json!(t);
        }
        if let Some(p) = self.config.top_p {
            body["top_p"] = json!(p);
        }
        if let Some(thinking) = self.config.thinking {
            body["thinking"] = json!({"type": if thinking { "enabled" } else { "disabled" }});
        }
        if self.config.stream {
            body["stream_options"] = json!({"include_usage": true});
        }
        body
    }

    async fn complete_once(&self, request: &ModelRequest) -> Result<ModelResponse, ModelError> {
        let body = serde_json::to_vec(&self.body(request))
            .map_err(|e| ModelError::Fatal(format!("cannot encode the request: {e}")))?;
        let response = self.send(body).await?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        if !status.is_success() {
            let bytes = response
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let message = self.redact(&error_message(status, &bytes));
            let transient = status == http::StatusCode::TOO_MANY_REQUESTS
                || status == http::StatusCode::REQUEST_TIMEOUT
                || status.is_server_error();
            return Err(if transient {
                ModelError::Transient {
                    message,
                    retry_after,
                }
            } else {
                ModelError::Fatal(message)
            });
        }
        let parsed = if self.config.stream {
            self.read_stream(response.into_body()).await?
        } else {
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| self.transient(format!("reading the answer: {e}")))?
                .to_bytes();
            let answer: WireAnswer = serde_json::from_slice(&bytes).map_err(|e| {
                ModelError::Fatal(format!("the answer is not a chat completion: {e}"))
            })?;
            let choice = answer
                .choices
                .into_iter()
                .next()
                .ok_or_else(|| ModelError::Fatal("the answer has no choices".into()))?;
            let message = choice.message.unwrap_or_default();
            Parsed {
                content: message.content,
                reasoning: message.reasoning_content,
                calls: message
                    .tool_calls
                    .into_iter()
                    .map(|c| PartialCall {
                        id: c.id.unwrap_or_default(),
                        name: c.function.name.unwrap_or_default(),
                        arguments: c.function.arguments.unwrap_or_default(),
                    })
                    .collect(),
                usage: answer.usage.or(choice.usage),
            }
        };
        Ok(parsed.into_response(request))
    }

    fn transient(&self, message: String) -> ModelError {
        ModelError::transient(self.redact(&message))
    }

    /// Connect, send one POST, and return the answer's head (the body is
    /// read by the caller, under the same overall timeout).
    async fn send(
        &self,
        body: Vec<u8>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ModelError> {
        let e = &self.endpoint;
        let tcp = tokio::time::timeout(
            self.config.connect_timeout,
            tokio::net::TcpStream::connect((e.host.as_str(), e.port)),
        )
        .await
        .map_err(|_| self.transient(format!("connecting to {}: timed out", e.authority())))?
        .map_err(|err| self.transient(format!("connecting to {}: {err}", e.authority())))?;
        let _ = tcp.set_nodelay(true);
        let mut builder = hyper::Request::post(e.path.as_str())
            .header(http::header::HOST, e.authority())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(
                http::header::ACCEPT,
                if self.config.stream {
                    "text/event-stream"
                } else {
                    "application/json"
                },
            );
        if let Some(key) = &self.key {
            builder = builder.header(http::header::AUTHORIZATION, format!("Bearer {key}"));
        }
        let request = builder.body(Full::new(Bytes::from(body))).map_err(|err| {
            ModelError::Fatal(self.redact(&format!("building the request: {err}")))
        })?;
        if e.tls {
            let name = tokio_rustls::rustls::pki_types::ServerName::try_from(e.host.clone())
                .map_err(|err| ModelError::Fatal(format!("TLS name {:?}: {err}", e.host)))?;
            let stream = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|err| self.transient(format!("TLS with {}: {err}", e.authority())))?;
            self.exchange(hyper_util::rt::TokioIo::new(stream), request)
                .await
        } else {
            self.exchange(hyper_util::rt::TokioIo::new(tcp), request)
                .await
        }
    }

    async fn exchange<T>(
        &self,
        io: T,
        request: hyper::Request<Full<Bytes>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ModelError>
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|err| self.transient(format!("HTTP handshake: {err}")))?;
        tokio::spawn(async move {
            // Ends when the answer has been read or the request dropped.
            let _ = connection.await;
        });
        sender
            .send_request(request)
            .await
            .map_err(|err| self.transient(format!("sending the request: {err}")))
    }

    /// Read a server-sent-event stream of chunks into one answer.
    async fn read_stream(&self, mut body: hyper::body::Incoming) -> Result<Parsed, ModelError> {
        let mut parsed = Parsed::default();
        let mut pending = Vec::new();
        let mut done = false;
        while !done {
            let Some(frame) = body.frame().await else {
                break;
            };
            let frame = frame.map_err(|e| self.transient(format!("the stream broke: {e}")))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            pending.extend_from_slice(&data);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                let line = line.trim_end_matches(['\r', '\n']);
                let Some(data) = line.strip_prefix("data:") else {
                    continue; // comments, event names, blank separators
                };
                let data = data.trim_start();
                if data == "[DONE]" {
                    done = true;
                    break;
                }
                let chunk: WireChunk = serde_json::from_str(data).map_err(|e| {
                    ModelError::Fatal(format!("a stream chunk is not a completion chunk: {e}"))
                })?;
                parsed.absorb(chunk);
            }
        }
        if !done && parsed.usage.is_none() {
            return Err(self.transient("the stream ended before [DONE]".into()));
        }
        Ok(parsed)
    }
}

impl Model for OpenAiModel {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn complete<'a>(&'a self, request: &'a ModelRequest) -> ModelFuture<'a> {
        Box::pin(async move {
            tokio::time::timeout(self.config.request_timeout, self.complete_once(request))
                .await
                .unwrap_or_else(|_| {
                    Err(ModelError::transient(format!(
                        "no complete answer within {:?}",
                        self.config.request_timeout
                    )))
                })
        })
    }
}

/// A message as the API wants it.
fn wire_message(m: &Message) -> Value {
    let role = match m.role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    };
    let mut out = json!({"role": role, "content": m.content});
    if let Some(reasoning) = &m.reasoning_content {
        out["reasoning_content"] = json!(reasoning);
    }
    if !m.tool_calls.is_empty() {
        out["tool_calls"] = m
            .tool_calls
            .iter()
            .map(|c| {
                json!({"id": c.id, "type": "function",
                       "function": {"name": c.name, "arguments": c.arguments}})
            })
            .collect();
    }
    if let Some(id) = &m.tool_call_id {
        out["tool_call_id"] = json!(id);
    }
    out
}

/// The server's own words for a failed request, briefly.
fn error_message(status: http::StatusCode, body: &[u8]) -> String {
    let detail = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    let mut detail = detail.trim().to_owned();
    if detail.len() > 500 {
        let mut cut = 500;
        while !detail.is_char_boundary(cut) {
            cut -= 1;
        }
        detail.truncate(cut);
        detail.push_str(" [...]");
    }
    format!("HTTP {status}: {detail}")
}

#[derive(Deserialize, Default)]
struct WireAnswer {
    #[serde(default)]
    choices: Vec<WireChoice>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize, Default)]
struct WireChoice {
    message: Option<WireMessage>,
    delta: Option<WireMessage>,
    /// Kimi reports a stream's usage in its last choice.
    usage: Option<WireUsage>,
}

#[derive(Deserialize, Default)]
struct WireMessage {
    content: Option<String>,
    reasoning_content: Option<String>,
    #[serde(default)]
    tool_calls: Vec<WireCall>,
}

#[derive(Deserialize, Default)]
struct WireCall {
    /// In a stream: which call a piece belongs to.
    index: Option<usize>,
    id: Option<String>,
    #[serde(default)]
    function: WireFunction,
}

#[derive(Deserialize, Default)]
struct WireFunction {
    name: Option<String>,
    arguments: Option<String>,
}

#[derive(Deserialize, Clone, Copy, Default)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    /// Kimi's place for cached input tokens.
    #[serde(default)]
    cached_tokens: u64,
    prompt_tokens_details: Option<PromptDetails>,
    completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Deserialize, Clone, Copy, Default)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: u64,
}

#[derive(Deserialize, Clone, Copy, Default)]
struct CompletionDetails {
    #[serde(default)]
    reasoning_tokens: u64,
}

type WireChunk = WireAnswer;

#[derive(Default)]
struct PartialCall {
    id: String,
    name: String,
    arguments: String,
}

/// An answer being put together (from one JSON or from stream chunks).
#[derive(Default)]
struct Parsed {
    content: Option<String>,
    reasoning: Option<String>,
    calls: Vec<PartialCall>,
    usage: Option<WireUsage>,
}

impl Parsed {
    fn absorb(&mut self, chunk: WireChunk) {
        if chunk.usage.is_some() {
            self.usage = chunk.usage;
        }
        for choice in chunk.choices {
            if choice.usage.is_some() {
                self.usage = choice.usage;
            }
            let Some(delta) = choice.delta.or(choice.message) else {
                continue;
            };
            if let Some(text) = delta.content {
                self.content.get_or_insert_with(String::new).push_str(&text);
            }
            if let Some(text) = delta.reasoning_content {
                self.reasoning
                    .get_or_insert_with(String::new)
                    .push_str(&text);
            }
            for piece in delta.tool_calls {
                let index = piece.index.unwrap_or(self.calls.len());
                while self.calls.len() <= index {
                    self.calls.push(PartialCall::default());
                }
                let call = &mut self.calls[index];
                if let Some(id) = piece.id {
                    call.id = id;
                }
                if let Some(name) = piece.function.name {
                    call.name.push_str(&name);
                }
                if let Some(arguments) = piece.function.arguments {
                    call.arguments.push_str(&arguments);
                }
            }
        }
    }

    fn into_response(self, request: &ModelRequest) -> ModelResponse {
        let message = Message {
            role: Role::Assistant,
            content: self
                .content
                .filter(|c| !c.is_empty() || self.calls.is_empty()),
            reasoning_content: self.reasoning,
            tool_calls: self
                .calls
                .into_iter()
                .enumerate()
                .map(|(i, c)| ToolCall {
                    // A provider that gives no id still needs one per call.
                    id: if c.id.is_empty() {
                        format!("call_{}_{i}", request.step)
                    } else {
                        c.id
                    },
                    name: c.name,
                    arguments: if c.arguments.trim().is_empty() {
                        "{}".to_owned()
                    } else {
                        c.arguments
                    },
                })
                .collect(),
            tool_call_id: None,
        };
        let usage = match self.usage {
            Some(u) => Usage {
                input_tokens: u.prompt_tokens,
                output_tokens: u.completion_tokens,
                cached_input_tokens: u.cached_tokens.max(
                    u.prompt_tokens_details
                        .map(|d| d.cached_tokens)
                        .unwrap_or(0),
                ),
                reasoning_tokens: u
                    .completion_tokens_details
                    .map(|d| d.reasoning_tokens)
                    .unwrap_or(0),
            },
            None => crate::model::estimate_usage(request, &message),
        };
        ModelResponse { message, usage }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_appends_chat_completions_and_keeps_ports() {
        let e = Endpoint::parse("https://api.moonshot.ai/v1").unwrap();
        assert_eq!(
            (e.tls, e.host.as_str(), e.port, e.path.as_str()),
            (true, "api.moonshot.ai", 443, "/v1/chat/completions")
        );
        assert_eq!(e.authority(), "api.moonshot.ai");
        let e = Endpoint::parse("http://127.0.0.1:8080/v1/").unwrap();
        assert_eq!((e.port, e.path.as_str()), (8080, "/v1/chat/completions"));
        assert_eq!(e.authority(), "127.0.0.1:8080");
        assert!(Endpoint::parse("ftp://x/v1").is_err());
    }

    #[test]
    fn an_assistant_tool_call_message_carries_its_reasoning_back() {
        let m = Message {
            role: Role::Assistant,
            content: None,
            reasoning_content: Some("think".into()),
            tool_calls: vec![ToolCall {
                id: "c1".into(),
                name: "echo".into(),
                arguments: "{}".into(),
            }],
            tool_call_id: None,
        };
        let wire = wire_message(&m);
        assert_eq!(wire["reasoning_content"], "think");
        assert_eq!(wire["tool_calls"][0]["function"]["name"], "echo");
        assert_eq!(wire["tool_calls"][0]["type"], "function");
    }

    #[test]
    fn stream_pieces_of_calls_are_joined_by_index() {
        let mut parsed = Parsed::default();
        for chunk in [
            r#"{"choices":[{"delta":{"reasoning_content":"a"}}]}"#,
            r#"{"choices":[{"delta":{"reasoning_content":"b","tool_calls":[{"index":0,"id":"x","function":{"name":"echo","arguments":"{\"te"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"xt\":1}"}}]}}]}"#,
            r#"{"choices":[{"delta":{},"finish_reason":"tool_calls","usage":{"prompt_tokens":10,"completion_tokens":3,"cached_tokens":4}}]}"#,
        ] {
            parsed.absorb(serde_json::from_str(chunk).unwrap());
        }
        let request = ModelRequest {
            messages: vec![],
            tools: vec![],
            max_output_tokens: 10,
            step: 0,
            purpose: Default::default(),
        };
        let response = parsed.into_response(&request);
        assert_eq!(response.message.reasoning_content.as_deref(), Some("ab"));
        assert_eq!(response.message.tool_calls[0].arguments, r#"{"text":1}"#);
        assert_eq!(response.message.content, None);
        assert_eq!(
            (
                response.usage.input_tokens,
                response.usage.output_tokens,
                response.usage.cached_input_tokens
            ),
            (10, 3, 4)
        );
    }

    #[test]
    fn error_texts_keep_the_servers_message_briefly() {
        let m = error_message(
            http::StatusCode::BAD_REQUEST,
            br#"{"error":{"message":"thinking is enabled but reasoning_content is missing"}}"#,
        );
        assert_eq!(
            m,
            "HTTP 400 Bad Request: thinking is enabled but reasoning_content is missing"
        );
        assert!(error_message(http::StatusCode::BAD_GATEWAY, &[b'x'; 2000]).len() < 600);
    }
}
