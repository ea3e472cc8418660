//! The local model backend: GGUF models run in-process through mistral.rs,
//! on the CPU by default (the `cuda` and `metal` features pass through).
//!
//! Small local models have no native tool-call format, so every answer is
//! constrained by a JSON schema (mistral.rs's llguidance constraint): it is
//! either `{"answer": "..."}` or `{"tool": NAME, "arguments": {...}}` for one
//! of the offered tools, with arguments valid against that tool's schema
//! (the [`Protocol`] says what the system message holds and what exactly
//! the constraint allows). The conversation is rendered with the three roles
//! every chat template knows (system, user, assistant): the protocol and the
//! tools go into the
//! system message, the model's earlier calls are shown as the JSON it wrote,
//! and tool results come back as user messages. mistral.rs keeps a prefix
//! cache of recent sequences, so each step's prompt processing costs its new
//! tokens, not the whole context again.

mod protocol;

use std::path::Path;

pub use protocol::{Offer, Protocol};

/// The mistral.rs this backend is built on, for callers that need its own
/// requests (the `local_model` benchmark).
pub use mistralrs;

use longrun_host::model::{
    Message, Model, ModelError, ModelFuture, ModelRequest, ModelResponse, Purpose, Role, ToolCall,
    Usage,
};
use mistralrs::{Constraint, RequestBuilder, StopTokens, TextMessageRole};
use serde_json::{Value, json};

/// Why a local model did not load.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("{path}: not a file")]
    NotAFile { path: String },
    #[error("loading {path}: {message}")]
    Load { path: String, message: String },
}

/// A GGUF model, loaded once and used for every step.
pub struct LocalModel {
    name: String,
    model: mistralrs::Model,
    /// The tokenizer's end-of-text tokens; see `end_tokens`.
    stop: Vec<u32>,
    protocol: Protocol,
}

impl LocalModel {
    /// Load the GGUF file at `path`; `name` is what the journal and the price
    /// table call it (`local:...`).
    pub async fn load(name: &str, path: &Path) -> Result<LocalModel, LocalError> {
        let shown = path.display().to_string();
        if !path.is_file() {
            return Err(LocalError::NotAFile { path: shown });
        }
        let dir = path
            .parent()
            .map(|d| d.display().to_string())
            .unwrap_or_else(|| ".".to_owned());
        let file = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let load = |message: String| LocalError::Load {
            path: shown.clone(),
            message,
        };
        let model = build(dir, file).await.map_err(|e| load(format!("{e:#}")))?;
        let stop = end_tokens(&model).await;
        Ok(LocalModel {
            name: name.to_owned(),
            model,
            stop,
            protocol: Protocol::default(),
        })
    }

    /// This model with another protocol (the `local_tasks` benchmark
    /// measures one against the other).
    pub fn with_protocol(mut self, protocol: Protocol) -> LocalModel {
        self.protocol = protocol;
        self
    }

    /// The protocol this model is spoken to with.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The mistral.rs model underneath, for measurements (the `local_model`
    /// benchmark) that need its raw requests and timings.
    pub fn engine(&self) -> &mistralrs::Model {
        &self.model
    }
}

/// The engine for one GGUF file: what `mistralrs::GgufModelBuilder::build`
/// does, but with the activations in f32 on the CPU. The builder always asks
/// for `ModelDType::Auto`, which on a CPU picks a 16-bit type; without native
/// 16-bit arithmetic every attention step then converts element by element,
/// which made a 135M model slower than its quantized matrix products by far.
async fn build(dir: String, file: String) -> anyhow::Result<mistralrs::Model> {
    use mistralrs::core::{
        AddModelConfig, AutoDeviceMapParams, DefaultSchedulerMethod, DeviceMapSetting,
        EngineConfig, GGUFLoaderBuilder, GGUFSpecificConfig, ModelDType, SchedulerConfig,
        TokenSource,
    };
    let loader = GGUFLoaderBuilder::new(
        None,
        None,
        dir,
        vec![file],
        GGUFSpecificConfig { topology: None },
        false,
        None,
    )
    .build();
    let device = mistralrs::best_device(!cfg!(any(feature = "cuda", feature = "metal")))?;
    let dtype = if device.is_cpu() {
        ModelDType::F32
    } else {
        ModelDType::Auto
    };
    let pipeline = loader.load_model_from_hf(
        None,
        TokenSource::None,
        &dtype,
        &device,
        true,
        DeviceMapSetting::Auto(AutoDeviceMapParams::default_text()),
        None,
        None,
    )?;
    let scheduler = SchedulerConfig::DefaultScheduler {
        method: DefaultSchedulerMethod::Fixed(MAX_SEQUENCES),
    };
    let config = AddModelConfig {
        engine_config: EngineConfig {
            // Kept sequences whose key-value caches a new prompt can extend.
            prefix_cache_n: 16,
            throughput_logging_enabled: false,
            ..EngineConfig::default()
        },
        mcp_client_config: None,
        loader_config: None,
    };
    Ok(
        mistralrs::model_builder_trait::build_model_from_pipeline(pipeline, scheduler, config)
            .await,
    )
}

/// The ids of the end-of-text tokens this model's tokenizer has. Once the
/// JSON constraint is satisfied, llguidance allows only its idea of the end
/// token, which need not be the one the chat template stops at (SmolLM2:
/// `<|endoftext|>` against `<|im_end|>`); without these as stop tokens the
/// engine went on writing empty special tokens up to the length limit.
async fn end_tokens(model: &mistralrs::Model) -> Vec<u32> {
    let mut ids = Vec::new();
    for text in [
        "<|endoftext|>",
        "<|im_end|>",
        "<|eot_id|>",
        "<|end|>",
        "</s>",
        "<eos>",
    ] {
        let tokens = model
            .tokenize(
                either::Either::Right(text.to_owned()),
                None,
                false,
                false,
                None,
            )
            .await;
        if let Ok([id]) = tokens.as_deref() {
            ids.push(*id);
        }
    }
    ids
}

/// Sequences the engine runs at once (sessions sharing one loaded model).
const MAX_SEQUENCES: std::num::NonZeroUsize = std::num::NonZeroUsize::new(32).unwrap();

/// The conversation as the three roles every chat template knows, with the
/// protocol's system message for a step (`offer`).
fn render(request: &ModelRequest, protocol: Protocol, offer: Option<&Offer<'_>>) -> RequestBuilder {
    let mut builder = RequestBuilder::new();
    if let Some(system) = offer.and_then(|offer| protocol.system_message(offer)) {
        builder = builder.add_message(TextMessageRole::System, system);
    }
    for message in &request.messages {
        let text = message.content.clone().unwrap_or_default();
        builder = match message.role {
            Role::System => builder.add_message(TextMessageRole::System, text),
            Role::User => builder.add_message(TextMessageRole::User, text),
            Role::Assistant => {
                // The model's own text when it is kept (a call keeps it), so
                // that the engine's cache of the last sequence still matches
                // the new prompt past this turn; rebuilt otherwise.
                let shown = match (message.tool_calls.first(), &message.content) {
                    (Some(_), Some(raw)) => raw.clone(),
                    (Some(call), None) => json!({
                        "tool": call.name,
                        "arguments": serde_json::from_str::<Value>(&call.arguments)
                            .unwrap_or(Value::String(call.arguments.clone()))
                    })
                    .to_string(),
                    (None, _) => json!({"answer": text}).to_string(),
                };
                builder.add_message(TextMessageRole::Assistant, shown)
            }
            Role::Tool => {
                let id = message.tool_call_id.as_deref();
                let heading =
                    protocol.result_heading(protocol::called_tool(&request.messages, id), id);
                builder.add_message(TextMessageRole::User, format!("{heading}\n{text}"))
            }
        };
    }
    builder
}

/// The model's constrained JSON, as an assistant message.
fn parse_answer(text: &str, step: u64) -> Result<Message, ModelError> {
    let value: Value = serde_json::from_str(text.trim()).map_err(|e| {
        ModelError::transient(format!("the model's answer is not the JSON asked for: {e}"))
    })?;
    if let Some(answer) = value.get("answer").and_then(Value::as_str) {
        return Ok(Message::text(Role::Assistant, answer));
    }
    match (
        value.get("tool").and_then(Value::as_str),
        value.get("arguments"),
    ) {
        // The call keeps the text the model wrote (see `render`).
        (Some(tool), Some(arguments)) => Ok(Message {
            tool_calls: vec![ToolCall {
                id: format!("call_{step}_0"),
                name: tool.to_owned(),
                arguments: arguments.to_string(),
            }],
            ..Message::text(Role::Assistant, text.trim())
        }),
        _ => Err(ModelError::transient(format!(
            "the model's answer is neither an answer nor a tool call: {text}"
        ))),
    }
}

impl Model for LocalModel {
    fn name(&self) -> &str {
        &self.name
    }

    fn complete<'a>(&'a self, request: &'a ModelRequest) -> ModelFuture<'a> {
        Box::pin(async move {
            // A step is constrained to the protocol's offer; other requests
            // (a compaction's summary) are plain text.
            let offer = (request.purpose == Purpose::Step)
                .then(|| self.protocol.offer(&request.tools, &request.messages));
            // Greedy first: `set_deterministic_sampler` replaces every
            // sampling setting, the length limit included.
            let mut builder = render(request, self.protocol, offer.as_ref())
                .set_deterministic_sampler()
                .set_sampler_max_len(request.max_output_tokens as usize)
                .set_sampler_stop_toks(StopTokens::Ids(self.stop.clone()));
            if let Some(offer) = &offer {
                builder = builder.set_constraint(Constraint::JsonSchema(
                    self.protocol
                        .answer_schema(offer, request.max_output_tokens),
                ));
            }
            let response = self
                .model
                .send_chat_request(builder)
                .await
                .map_err(|e| ModelError::Fatal(format!("local model: {e}")))?;
            let choice = response.choices.first();
            let text = choice
                .and_then(|c| c.message.content.clone())
                .unwrap_or_default();
            let cut = choice.is_some_and(|c| c.finish_reason == "length");
            let message = if offer.is_none() {
                Message::text(Role::Assistant, text)
            } else {
                match parse_answer(&text, request.step) {
                    Ok(message) => message,
                    // Greedy decoding would write the same again: not transient.
                    Err(_) if cut => {
                        return Err(ModelError::Fatal(format!(
                            "the model's answer reached the {} output tokens allowed before its JSON closed: {}",
                            request.max_output_tokens,
                            text.chars().take(200).collect::<String>()
                        )));
                    }
                    Err(e) => return Err(e),
                }
            };
            Ok(ModelResponse {
                message,
                usage: Usage {
                    input_tokens: response.usage.prompt_tokens as u64,
                    output_tokens: response.usage.completion_tokens as u64,
                    cached_input_tokens: 0,
                    reasoning_tokens: 0,
                },
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_or_a_call_is_parsed_and_anything_else_is_refused() {
        let m = parse_answer(r#"{"answer": "done"}"#, 3).unwrap();
        assert_eq!(m.content.as_deref(), Some("done"));
        let m = parse_answer(
            r#"{"tool": "fs_list", "arguments": {"path": "/workspace"}}"#,
            3,
        )
        .unwrap();
        assert_eq!(m.tool_calls[0].id, "call_3_0");
        assert_eq!(m.tool_calls[0].arguments, r#"{"path":"/workspace"}"#);
        assert_eq!(
            m.content.as_deref(),
            Some(r#"{"tool": "fs_list", "arguments": {"path": "/workspace"}}"#),
            "a call keeps the model's own text, for the engine's prefix cache"
        );
        assert!(parse_answer("hello", 0).is_err());
        assert!(parse_answer(r#"{"tool": "x"}"#, 0).is_err());
    }
}
