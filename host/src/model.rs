//! The model interface of the agent loop, and the scripted model.
//!
//! The agent loop talks to every backend (mistral.rs, an OpenAI-compatible
//! API, the scripted model) through [`Model`]. Messages follow the chat
//! shape of OpenAI-compatible APIs, with `reasoning_content` kept verbatim
//! because some providers (Kimi) require it back on every assistant message
//! that carries tool calls.
//!
//! The [`ScriptedModel`] plays a recorded sequence of responses from a JSON
//! Lines file, for tests and benchmarks. It is deterministic in the
//! conversation: the response it gives is the one at the index of the
//! number of assistant messages already in the request, so a session that
//! resumes after a crash gets the same answers again.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

/// One tool call proposed by the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The model's id for the call; the tool's answer refers to it.
    pub id: String,
    pub name: String,
    /// The arguments as JSON text, exactly as the model wrote them.
    pub arguments: String,
}

/// One message of the conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// The model's reasoning, kept verbatim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// For a tool message: the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl Message {
    pub fn text(role: Role, content: impl Into<String>) -> Message {
        Message {
            role,
            content: Some(content.into()),
            reasoning_content: None,
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }

    pub fn tool_result(call_id: impl Into<String>, content: impl Into<String>) -> Message {
        Message {
            tool_call_id: Some(call_id.into()),
            ..Message::text(Role::Tool, content)
        }
    }
}

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolDef {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments object.
    pub parameters: serde_json::Value,
}

/// What the model is asked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRequest {
    pub messages: Vec<Message>,
    pub tools: Vec<ToolDef>,
    pub max_output_tokens: u64,
}

/// Tokens a call used, as the backend reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Input tokens served from the provider's cache, when reported.
    #[serde(default)]
    pub cached_input_tokens: u64,
    /// Output tokens spent on reasoning, when reported.
    #[serde(default)]
    pub reasoning_tokens: u64,
}

/// What the model answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelResponse {
    /// An assistant message: a final answer, tool calls, or both.
    pub message: Message,
    pub usage: Usage,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// Worth retrying: a rate limit, a 5xx, a dropped connection.
    #[error("transient model error: {0}")]
    Transient(String),
    /// Not worth retrying: a bad request, a missing key, a broken script.
    #[error("model error: {0}")]
    Fatal(String),
}

/// A boxed future, so that [`Model`] can be used as `dyn Model`.
pub type ModelFuture<'a> =
    Pin<Box<dyn Future<Output = Result<ModelResponse, ModelError>> + Send + 'a>>;

/// A model backend.
pub trait Model: Send + Sync {
    /// The name the journal and the price table know it by.
    fn name(&self) -> &str;

    /// One completion.
    fn complete<'a>(&'a self, request: &'a ModelRequest) -> ModelFuture<'a>;
}

/// A rough token count for text, for backends that report none: about four
/// characters a token, as for English with common tokenizers.
pub fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

/// Why a script did not load.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    #[error("{file}: cannot read script: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{line}: {message}")]
    Invalid {
        file: String,
        line: usize,
        message: String,
    },
}

/// One line of a script.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptLine {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    reasoning_content: Option<String>,
    #[serde(default)]
    tool_calls: Vec<ScriptedCall>,
    /// Reported usage; estimated from the text when absent.
    #[serde(default)]
    usage: Option<Usage>,
    /// Fail transiently this many times before answering.
    #[serde(default)]
    fail_times: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptedCall {
    name: String,
    /// The arguments as a JSON value (written to the model's message as text).
    arguments: serde_json::Value,
}

/// A model that plays a recorded sequence of responses.
///
/// The script is JSON Lines, one response a line:
///
/// ```text
/// {"reasoning_content": "I should look.", "tool_calls": [{"name": "fs_list", "arguments": {"path": "/workspace"}}]}
/// {"content": "The workspace holds hello.txt.", "usage": {"input_tokens": 120, "output_tokens": 9}}
/// ```
///
/// Blank lines and lines starting with `#` are skipped. `fail_times: N` makes
/// that response fail transiently N times first (for retry tests).
pub struct ScriptedModel {
    name: String,
    lines: Vec<ScriptLine>,
    failures_left: Mutex<Vec<u32>>,
}

impl ScriptedModel {
    pub fn load(path: &Path) -> Result<ScriptedModel, ScriptError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ScriptError::Read {
            file: file.clone(),
            source,
        })?;
        ScriptedModel::parse(&text, &file)
    }

    pub fn parse(text: &str, file: &str) -> Result<ScriptedModel, ScriptError> {
        let mut lines = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let line: ScriptLine =
                serde_json::from_str(trimmed).map_err(|e| ScriptError::Invalid {
                    file: file.to_owned(),
                    line: i + 1,
                    message: e.to_string(),
                })?;
            if line.content.is_none() && line.tool_calls.is_empty() {
                return Err(ScriptError::Invalid {
                    file: file.to_owned(),
                    line: i + 1,
                    message: "a response needs `content` or `tool_calls`".into(),
                });
            }
            lines.push(line);
        }
        let failures_left = Mutex::new(lines.iter().map(|l| l.fail_times).collect());
        Ok(ScriptedModel {
            name: "scripted".to_owned(),
            lines,
            failures_left,
        })
    }

    /// How many responses the script holds.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    fn respond(&self, request: &ModelRequest) -> Result<ModelResponse, ModelError> {
        let turn = request
            .messages
            .iter()
            .filter(|m| m.role == Role::Assistant)
            .count();
        let line = self.lines.get(turn).ok_or_else(|| {
            ModelError::Fatal(format!(
                "the script has {} responses and turn {turn} was asked for",
                self.lines.len()
            ))
        })?;
        if let Ok(mut left) = self.failures_left.lock()
            && let Some(n) = left.get_mut(turn)
            && *n > 0
        {
            *n -= 1;
            return Err(ModelError::Transient(format!(
                "scripted failure at turn {turn} ({n} more to come)"
            )));
        }
        let tool_calls: Vec<ToolCall> = line
            .tool_calls
            .iter()
            .enumerate()
            .map(|(i, call)| ToolCall {
                id: format!("call_{turn}_{i}"),
                name: call.name.clone(),
                arguments: call.arguments.to_string(),
            })
            .collect();
        let message = Message {
            role: Role::Assistant,
            content: line.content.clone(),
            reasoning_content: line.reasoning_content.clone(),
            tool_calls,
            tool_call_id: None,
        };
        let usage = line.usage.unwrap_or_else(|| {
            let prompt: String = request
                .messages
                .iter()
                .flat_map(|m| [m.content.as_deref(), m.reasoning_content.as_deref()])
                .flatten()
                .chain(
                    request
                        .messages
                        .iter()
                        .flat_map(|m| m.tool_calls.iter().map(|c| c.arguments.as_str())),
                )
                .collect();
            let answer: String = [
                message.content.as_deref(),
                message.reasoning_content.as_deref(),
            ]
            .into_iter()
            .flatten()
            .chain(message.tool_calls.iter().map(|c| c.arguments.as_str()))
            .collect();
            Usage {
                input_tokens: estimate_tokens(&prompt),
                output_tokens: estimate_tokens(&answer),
                cached_input_tokens: 0,
                reasoning_tokens: message
                    .reasoning_content
                    .as_deref()
                    .map(estimate_tokens)
                    .unwrap_or(0),
            }
        });
        Ok(ModelResponse { message, usage })
    }
}

impl Model for ScriptedModel {
    fn name(&self) -> &str {
        &self.name
    }

    fn complete<'a>(&'a self, request: &'a ModelRequest) -> ModelFuture<'a> {
        Box::pin(async move { self.respond(request) })
    }
}
