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
//! conversation: the response it gives is the one for the request's step
//! number, so a session that resumes after a crash gets the same answers
//! again.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

pub use longrun_journal::payload::{Message, ModelResponse, Role, ToolCall, Usage};

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
    /// How many step responses the session has had before this request
    /// (across compactions and restarts, unlike the messages).
    #[serde(default)]
    pub step: u64,
    #[serde(default)]
    pub purpose: Purpose,
}

/// Why the model is asked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Purpose {
    /// The next step of the session.
    #[default]
    Step,
    /// A summary of older messages, to compact the context: the last
    /// message of the request holds them as a transcript.
    Summarize,
    /// Heavy mode's comparison of its trajectories' answers: the last
    /// message lists them and asks for the number of the best.
    Compare,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// Worth retrying: a rate limit, a 5xx, a dropped connection; the
    /// backend may say how long to wait first (HTTP `Retry-After`).
    #[error("transient model error: {message}")]
    Transient {
        message: String,
        retry_after: Option<std::time::Duration>,
    },
    /// Not worth retrying: a bad request, a missing key, a broken script.
    #[error("model error: {0}")]
    Fatal(String),
}

impl ModelError {
    /// A transient error with no advice on when to retry.
    pub fn transient(message: impl Into<String>) -> ModelError {
        ModelError::Transient {
            message: message.into(),
            retry_after: None,
        }
    }
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

/// Which model a session uses, as written in a session's configuration:
/// `local:NAME` (a GGUF model run in-process), `openai-compatible:PROFILE`
/// (a remote API; a known profile such as `kimi-k2.6`, or a model id given
/// with a base URL), or `scripted:PATH` (a recorded script, for tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSpec {
    Local(String),
    OpenAiCompatible(String),
    Scripted(std::path::PathBuf),
}

impl ModelSpec {
    pub fn parse(spec: &str) -> Result<ModelSpec, String> {
        let (kind, rest) = spec.split_once(':').ok_or_else(|| {
            format!("model {spec:?}: write local:NAME, openai-compatible:PROFILE or scripted:PATH")
        })?;
        if rest.is_empty() {
            return Err(format!("model {spec:?}: nothing after {kind:?}"));
        }
        match kind {
            "local" => Ok(ModelSpec::Local(rest.to_owned())),
            "openai-compatible" => Ok(ModelSpec::OpenAiCompatible(rest.to_owned())),
            "scripted" => Ok(ModelSpec::Scripted(rest.into())),
            _ => Err(format!(
                "model {spec:?}: unknown kind {kind:?} (local, openai-compatible or scripted)"
            )),
        }
    }
}

impl std::str::FromStr for ModelSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ModelSpec::parse(s)
    }
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
    /// Take this long to answer, as a real model does.
    #[serde(default)]
    delay_ms: u64,
    /// Answer this many steps in a row.
    #[serde(default = "one")]
    repeat: u64,
    /// `compare`: the line answers heavy mode's comparison requests (a
    /// script of their own, keyed on step the same way) instead of steps.
    #[serde(default)]
    purpose: Purpose,
}

/// The lines of one kind of request, and the step after each line's last.
#[derive(Default)]
struct Lines {
    lines: Vec<ScriptLine>,
    ends: Vec<u64>,
}

impl Lines {
    fn len(&self) -> u64 {
        self.ends.last().copied().unwrap_or(0)
    }

    fn line(&self, step: u64) -> Option<&ScriptLine> {
        let index = self.ends.partition_point(|end| *end <= step);
        self.lines.get(index)
    }
}

fn one() -> u64 {
    1
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
/// Blank lines and lines starting with `#` are skipped. The response given
/// is the one for the request's [`ModelRequest::step`]. A line may also say:
/// - `"repeat": N` — it answers N steps in a row; `{step}` in a string of
///   its arguments becomes the step's number, so calls differ (the string
///   `"{step}"` alone becomes the number);
/// - `"fail_times": N` — each of its steps fails transiently N times first;
/// - `"delay_ms": N` — it takes N milliseconds to answer;
/// - `"purpose": "compare"` — it answers heavy mode's comparison requests
///   ([`Purpose::Compare`]), a script of their own keyed on step the same
///   way (the first comparison is step 0), instead of steps.
///
/// A compaction request ([`Purpose::Summarize`]) gets a one-line summary
/// that says how many lines of transcript it covers, unless
/// [`ScriptedModel::failing_summaries`] was asked for.
pub struct ScriptedModel {
    name: String,
    steps: Lines,
    /// The answers to comparison requests ([`Purpose::Compare`]).
    comparisons: Lines,
    /// Transient failures still to give, by step.
    failures_given: Mutex<std::collections::HashMap<u64, u32>>,
    summaries_fail: bool,
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
        let (mut steps, mut comparisons) = (Lines::default(), Lines::default());
        for (i, raw) in text.lines().enumerate() {
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let invalid = |message: String| ScriptError::Invalid {
                file: file.to_owned(),
                line: i + 1,
                message,
            };
            let line: ScriptLine =
                serde_json::from_str(trimmed).map_err(|e| invalid(e.to_string()))?;
            if line.content.is_none() && line.tool_calls.is_empty() {
                return Err(invalid("a response needs `content` or `tool_calls`".into()));
            }
            if line.repeat == 0 {
                return Err(invalid("`repeat` must be at least 1".into()));
            }
            let of = match line.purpose {
                Purpose::Step => &mut steps,
                Purpose::Compare => &mut comparisons,
                Purpose::Summarize => {
                    return Err(invalid(
                        "`purpose` is `step` or `compare` (summaries are not scripted)".into(),
                    ));
                }
            };
            let end = of
                .len()
                .checked_add(line.repeat)
                .ok_or_else(|| invalid("the script is too long".into()))?;
            of.lines.push(line);
            of.ends.push(end);
        }
        Ok(ScriptedModel {
            name: "scripted".to_owned(),
            steps,
            comparisons,
            failures_given: Mutex::default(),
            summaries_fail: false,
        })
    }

    /// The model under another name than `scripted` (what sessions record
    /// and prices are keyed on): a script that stands in for one model of
    /// several.
    pub fn named(mut self, name: &str) -> ScriptedModel {
        name.clone_into(&mut self.name);
        self
    }

    /// Make every compaction request fail, as a model that cannot summarise.
    pub fn failing_summaries(mut self) -> ScriptedModel {
        self.summaries_fail = true;
        self
    }

    /// How many steps the script answers.
    pub fn len(&self) -> u64 {
        self.steps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn line(&self, request: &ModelRequest) -> Option<&ScriptLine> {
        match request.purpose {
            Purpose::Compare => self.comparisons.line(request.step),
            Purpose::Step | Purpose::Summarize => self.steps.line(request.step),
        }
    }

    fn respond(&self, request: &ModelRequest) -> Result<ModelResponse, ModelError> {
        if request.purpose == Purpose::Summarize {
            return self.summarize(request);
        }
        let step = request.step;
        let line = self.line(request).ok_or_else(|| {
            ModelError::Fatal(format!(
                "the script has {} steps and {} comparisons, and {:?} {step} was asked for",
                self.len(),
                self.comparisons.len(),
                request.purpose
            ))
        })?;
        if line.fail_times > 0
            && let Ok(mut given) = self.failures_given.lock()
        {
            let given = given.entry(step).or_insert(0);
            if *given < line.fail_times {
                *given += 1;
                return Err(ModelError::transient(format!(
                    "scripted failure {given} of {} at step {step}",
                    line.fail_times
                )));
            }
        }
        let tool_calls: Vec<ToolCall> = line
            .tool_calls
            .iter()
            .enumerate()
            .map(|(i, call)| ToolCall {
                id: format!("call_{step}_{i}"),
                name: call.name.clone(),
                arguments: with_step(&call.arguments, step).to_string(),
            })
            .collect();
        let message = Message {
            role: Role::Assistant,
            content: line.content.clone(),
            reasoning_content: line.reasoning_content.clone(),
            tool_calls,
            tool_call_id: None,
        };
        let usage = line
            .usage
            .unwrap_or_else(|| estimate_usage(request, &message));
        Ok(ModelResponse { message, usage })
    }

    fn summarize(&self, request: &ModelRequest) -> Result<ModelResponse, ModelError> {
        if self.summaries_fail {
            return Err(ModelError::Fatal(
                "this scripted model cannot summarise".into(),
            ));
        }
        let transcript = request
            .messages
            .last()
            .and_then(|m| m.content.as_deref())
            .unwrap_or_default();
        let message = Message::text(
            Role::Assistant,
            format!(
                "Summary of {} lines of earlier conversation.",
                transcript.lines().count()
            ),
        );
        let usage = estimate_usage(request, &message);
        Ok(ModelResponse { message, usage })
    }
}

/// `value` with `{step}` in its strings replaced by the step number; a
/// string that is exactly `"{step}"` becomes the number itself.
fn with_step(value: &serde_json::Value, step: u64) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(s) if s == "{step}" => Value::from(step),
        Value::String(s) => Value::String(s.replace("{step}", &step.to_string())),
        Value::Array(items) => Value::Array(items.iter().map(|v| with_step(v, step)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), with_step(v, step)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Usage as a real model would report it, estimated from the text.
pub fn estimate_usage(request: &ModelRequest, answer: &Message) -> Usage {
    let prompt: u64 = request.messages.iter().map(message_tokens).sum();
    Usage {
        input_tokens: prompt,
        output_tokens: message_tokens(answer),
        cached_input_tokens: 0,
        reasoning_tokens: answer
            .reasoning_content
            .as_deref()
            .map(estimate_tokens)
            .unwrap_or(0),
    }
}

/// The estimated tokens of one message: its text, reasoning and call arguments.
pub fn message_tokens(message: &Message) -> u64 {
    let text = [
        message.content.as_deref(),
        message.reasoning_content.as_deref(),
    ]
    .into_iter()
    .flatten()
    .map(estimate_tokens)
    .sum::<u64>();
    let calls = message
        .tool_calls
        .iter()
        .map(|c| estimate_tokens(&c.name) + estimate_tokens(&c.arguments))
        .sum::<u64>();
    // A few tokens of framing per message, as chat templates add.
    4 + text + calls
}

impl Model for ScriptedModel {
    fn name(&self) -> &str {
        &self.name
    }

    fn complete<'a>(&'a self, request: &'a ModelRequest) -> ModelFuture<'a> {
        Box::pin(async move {
            let delay = self.line(request).map(|l| l.delay_ms).unwrap_or(0);
            if delay > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
            }
            self.respond(request)
        })
    }
}
