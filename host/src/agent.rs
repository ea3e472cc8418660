//! The agent loop: ask the model, check each proposed tool call against the
//! policy and the budgets, journal it, run it in the sandbox, journal the
//! result, and repeat until the model answers without tools, a budget runs
//! out, or a call needs a person's approval.
//!
//! Order of writes, so that a crash loses nothing: the model's response is
//! durable before any of its tool calls runs; a tool's intent is durable
//! before the tool runs; its result is durable before the next model
//! request. [`Session::resume`] rebuilds a session from its journal: a
//! recorded model response is never requested again, an interrupted
//! idempotent tool call runs again, and an interrupted non-idempotent one is
//! reported to the model as "outcome unknown", never run twice.
//!
//! The loop sees the model, the sandbox and the journal only through their
//! interfaces ([`Model`], [`Toolbox`], [`SessionWriter`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::budget::{BudgetExceeded, Ledger};
use crate::journal::{Journal, JournalError, RecordKind, SessionId, SessionWriter};
use crate::model::{Message, Model, ModelError, ModelRequest, Role, ToolCall, ToolDef, Usage};
use crate::policy::{Decision, Policy};
use crate::sandbox::{CallError, CallRequest, Toolbox};

/// Tool outputs longer than this go to a blob; the record references it.
const INLINE_OUTPUT: usize = 1024;

/// How the loop behaves, beyond the policy.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The most output tokens asked of the model per call.
    pub max_output_tokens: u64,
    /// Transient model failures retried per call, with exponential backoff.
    pub max_retries: u32,
    /// The first backoff; it doubles on each retry, with up to 50% jitter.
    pub first_backoff: Duration,
    /// Dollars per million input and output tokens, for the cost budget.
    pub price_per_million: (f64, f64),
}

impl AgentConfig {
    /// What a call of that many tokens costs at this config's prices.
    pub fn cost_usd(&self, input_tokens: u64, output_tokens: u64) -> f64 {
        let (input, output) = self.price_per_million;
        (input_tokens as f64 * input + output_tokens as f64 * output) / 1e6
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            max_output_tokens: 4096,
            max_retries: 5,
            first_backoff: Duration::from_millis(200),
            price_per_million: (0.0, 0.0),
        }
    }
}

/// How a run of the loop ended.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionStatus {
    /// The model answered without calling tools.
    Completed { answer: String },
    /// A budget would be exceeded by the next action; the session is paused.
    BudgetExhausted(BudgetExceeded),
    /// A call needs a person's approval; the session is paused.
    AwaitingApproval { call: ToolCall },
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("cannot encode a journal record: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Record payloads, as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionCreated {
    pub goal: String,
    pub policy_text: String,
    pub policy_hash: String,
    pub model: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolIntent {
    pub call_id: String,
    pub tool: String,
    pub arguments: String,
    pub idempotent: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolResult {
    pub call_id: String,
    /// The output inline, when short.
    pub output: Option<String>,
    /// The hex hash of the blob holding the output, when long.
    pub output_blob: Option<String>,
    /// Why there is no output.
    pub error: Option<String>,
    pub elapsed_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refusal {
    pub call_id: String,
    pub tool: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelFailure {
    pub attempt: u32,
    pub error: String,
    pub retry_in_ms: Option<u64>,
}

/// One session, driven by [`Session::run`].
pub struct Session<'a> {
    writer: SessionWriter,
    journal: Arc<Journal>,
    toolbox: &'a Toolbox,
    policy: &'a Policy,
    model: &'a dyn Model,
    config: AgentConfig,
    ledger: Ledger,
    messages: Vec<Message>,
    /// How many of `messages` the model has been sent already.
    sent: usize,
    started: Instant,
    /// Calls of the last response that have no result yet (after a resume).
    pending: Vec<ToolCall>,
    /// Intents recorded without a result: calls a crash interrupted.
    interrupted: std::collections::HashMap<String, ToolIntent>,
    progress: Option<ProgressHook<'a>>,
}

/// What one step did, for a live progress view.
#[derive(Debug, Clone)]
pub struct StepProgress {
    pub session: SessionId,
    pub step: u64,
    /// The tools the model asked for in this step.
    pub tools: Vec<String>,
    pub usage: crate::budget::Usage,
}

type ProgressHook<'a> = Box<dyn FnMut(&StepProgress) + Send + 'a>;

/// What [`Session::resume`] found.
pub enum Resumed<'a> {
    /// The session had already ended.
    Ended,
    /// The session, ready to [`Session::run`] on.
    Session(Box<Session<'a>>),
}

impl<'a> Session<'a> {
    /// A new session: its first record holds the goal and the policy text.
    pub async fn start(
        journal: &Arc<Journal>,
        toolbox: &'a Toolbox,
        policy: &'a Policy,
        model: &'a dyn Model,
        config: AgentConfig,
        goal: &str,
    ) -> Result<Session<'a>, AgentError> {
        let mut writer = journal.create_session()?;
        let created = SessionCreated {
            goal: goal.to_owned(),
            policy_text: policy.text.clone(),
            policy_hash: blake3::hash(policy.text.as_bytes()).to_hex().to_string(),
            model: model.name().to_owned(),
        };
        writer
            .append_durable(
                RecordKind::SessionCreated,
                &serde_json::to_vec(&created)?,
                &[],
            )
            .await?;
        Ok(Session {
            writer,
            journal: journal.clone(),
            toolbox,
            policy,
            model,
            config,
            ledger: Ledger::new(policy.session.clone()),
            messages: vec![Message::text(Role::User, goal)],
            sent: 0,
            started: Instant::now(),
            pending: Vec::new(),
            interrupted: Default::default(),
            progress: None,
        })
    }

    /// Rebuild a session from its journal, to go on where it stopped.
    pub async fn resume(
        journal: &Arc<Journal>,
        session: SessionId,
        toolbox: &'a Toolbox,
        policy: &'a Policy,
        model: &'a dyn Model,
        config: AgentConfig,
    ) -> Result<Resumed<'a>, AgentError> {
        let mut ledger = Ledger::new(policy.session.clone());
        let mut messages = Vec::new();
        let mut sent = 0;
        let mut pending: Vec<ToolCall> = Vec::new();
        let mut interrupted = std::collections::HashMap::new();
        let answered = |pending: &mut Vec<ToolCall>, id: &str| pending.retain(|c| c.id != id);
        for record in journal.records(session) {
            let record = record?;
            match record.kind {
                RecordKind::SessionCreated => {
                    let created: SessionCreated = serde_json::from_slice(&record.payload)?;
                    messages.push(Message::text(Role::User, created.goal));
                }
                RecordKind::ModelResponse => {
                    let response: crate::model::ModelResponse =
                        serde_json::from_slice(&record.payload)?;
                    let cost =
                        config.cost_usd(response.usage.input_tokens, response.usage.output_tokens);
                    ledger.record_step();
                    ledger.record_model_call(
                        response.usage.input_tokens,
                        response.usage.output_tokens,
                        cost,
                    );
                    pending = response.message.tool_calls.clone();
                    interrupted.clear();
                    messages.push(response.message);
                    sent = messages.len();
                }
                RecordKind::ToolIntent => {
                    let intent: ToolIntent = serde_json::from_slice(&record.payload)?;
                    ledger.record_tool_call();
                    interrupted.insert(intent.call_id.clone(), intent);
                }
                RecordKind::ToolResult => {
                    let result: ToolResult = serde_json::from_slice(&record.payload)?;
                    let content = match (&result.output, &result.error, record.blobs.first()) {
                        (Some(output), _, _) => output.clone(),
                        (None, Some(error), _) => format!("error: {error}"),
                        (None, None, Some(blob)) => {
                            String::from_utf8_lossy(&journal.blob(blob)?).into_owned()
                        }
                        (None, None, None) => String::new(),
                    };
                    interrupted.remove(&result.call_id);
                    answered(&mut pending, &result.call_id);
                    messages.push(Message::tool_result(&result.call_id, content));
                }
                RecordKind::PolicyDecision => {
                    let refusal: Refusal = serde_json::from_slice(&record.payload)?;
                    answered(&mut pending, &refusal.call_id);
                    messages.push(Message::tool_result(
                        &refusal.call_id,
                        format!("error: {}", refusal.reason),
                    ));
                }
                RecordKind::SessionEnded => return Ok(Resumed::Ended),
                RecordKind::ModelRequest
                | RecordKind::BudgetEvent
                | RecordKind::ApprovalAsked
                | RecordKind::ApprovalGiven
                | RecordKind::Compaction
                | RecordKind::Error => {}
            }
        }
        let writer = journal.open_session(session)?;
        Ok(Resumed::Session(Box::new(Session {
            writer,
            journal: journal.clone(),
            toolbox,
            policy,
            model,
            config,
            ledger,
            messages,
            sent,
            started: Instant::now(),
            pending,
            interrupted,
            progress: None,
        })))
    }

    /// Call `hook` after each step's model response is journaled.
    pub fn on_step(&mut self, hook: impl FnMut(&StepProgress) + Send + 'a) {
        self.progress = Some(Box::new(hook));
    }

    pub fn id(&self) -> SessionId {
        self.writer.session()
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    fn tool_defs(&self) -> Vec<ToolDef> {
        self.toolbox
            .tools()
            .filter(|t| !matches!(self.policy.decide(&t.name), Decision::Deny(_)))
            .map(|t| ToolDef {
                name: t.name.clone(),
                description: t.description.clone(),
                parameters: t.parameters.clone(),
            })
            .collect()
    }

    async fn record<T: Serialize>(
        &mut self,
        kind: RecordKind,
        payload: &T,
    ) -> Result<(), AgentError> {
        self.writer
            .append_durable(kind, &serde_json::to_vec(payload)?, &[])
            .await?;
        Ok(())
    }

    /// Run until the session completes or pauses.
    pub async fn run(&mut self) -> Result<SessionStatus, AgentError> {
        for call in std::mem::take(&mut self.pending) {
            if let Some(status) = self.tool_call(call).await? {
                return Ok(status);
            }
        }
        loop {
            if let Err(e) = self.ledger.check_step(self.started.elapsed()) {
                return self.pause(e).await;
            }
            let request = ModelRequest {
                messages: self.messages.clone(),
                tools: self.tool_defs(),
                max_output_tokens: self.config.max_output_tokens,
            };
            let estimate: u64 = request
                .messages
                .iter()
                .filter_map(|m| m.content.as_deref())
                .map(crate::model::estimate_tokens)
                .sum();
            let worst = self
                .config
                .cost_usd(estimate, self.config.max_output_tokens);
            if let Err(e) =
                self.ledger
                    .check_model_call(estimate, self.config.max_output_tokens, worst)
            {
                return self.pause(e).await;
            }
            let new_messages = self.messages[self.sent..].to_vec();
            self.record(RecordKind::ModelRequest, &new_messages).await?;
            let response = self.complete_with_retries(&request).await?;
            self.record(RecordKind::ModelResponse, &response).await?;
            self.charge(&response.usage);
            self.ledger.record_step();
            self.messages.push(response.message.clone());
            self.sent = self.messages.len();
            for warning in self.ledger.new_warnings(self.started.elapsed()) {
                self.record(
                    RecordKind::BudgetEvent,
                    &serde_json::json!({"warning": format!("{:?}", warning.kind), "used": warning.used, "limit": warning.limit}),
                )
                .await?;
            }
            if let Some(hook) = &mut self.progress {
                hook(&StepProgress {
                    session: self.writer.session(),
                    step: self.ledger.used.steps,
                    tools: response
                        .message
                        .tool_calls
                        .iter()
                        .map(|c| c.name.clone())
                        .collect(),
                    usage: self.ledger.used.clone(),
                });
            }

            if response.message.tool_calls.is_empty() {
                let answer = response.message.content.unwrap_or_default();
                self.record(
                    RecordKind::SessionEnded,
                    &serde_json::json!({"status": "completed", "answer": answer}),
                )
                .await?;
                return Ok(SessionStatus::Completed { answer });
            }
            for call in response.message.tool_calls {
                if let Some(status) = self.tool_call(call).await? {
                    return Ok(status);
                }
            }
        }
    }

    fn charge(&mut self, usage: &Usage) {
        let cost = self
            .config
            .cost_usd(usage.input_tokens, usage.output_tokens);
        self.ledger
            .record_model_call(usage.input_tokens, usage.output_tokens, cost);
    }

    async fn complete_with_retries(
        &mut self,
        request: &ModelRequest,
    ) -> Result<crate::model::ModelResponse, AgentError> {
        let mut backoff = self.config.first_backoff;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.model.complete(request).await {
                Ok(response) => return Ok(response),
                Err(ModelError::Transient(e)) if attempt <= self.config.max_retries => {
                    // Up to 50% jitter, so that many sessions do not retry in step.
                    let jitter = backoff.mul_f64(jitter_fraction() * 0.5);
                    let wait = backoff + jitter;
                    self.record(
                        RecordKind::Error,
                        &ModelFailure {
                            attempt,
                            error: e,
                            retry_in_ms: Some(wait.as_millis() as u64),
                        },
                    )
                    .await?;
                    tokio::time::sleep(wait).await;
                    backoff = backoff.saturating_mul(2);
                }
                Err(e) => {
                    self.record(
                        RecordKind::Error,
                        &ModelFailure {
                            attempt,
                            error: e.to_string(),
                            retry_in_ms: None,
                        },
                    )
                    .await?;
                    return Err(e.into());
                }
            }
        }
    }

    /// Check, journal and run one call. Returns a status when the session
    /// must pause.
    async fn tool_call(&mut self, call: ToolCall) -> Result<Option<SessionStatus>, AgentError> {
        if let Some(intent) = self.interrupted.remove(&call.id)
            && !intent.idempotent
        {
            // It may have run, or not: running it again could do twice what
            // must be done once, so the model is told and decides.
            let error = "outcome unknown: the host stopped while this call ran, and it is not idempotent, so it was not run again".to_owned();
            self.record(
                RecordKind::ToolResult,
                &ToolResult {
                    call_id: call.id.clone(),
                    output: None,
                    output_blob: None,
                    error: Some(error.clone()),
                    elapsed_ms: 0,
                },
            )
            .await?;
            self.messages
                .push(Message::tool_result(&call.id, format!("error: {error}")));
            return Ok(None);
        }
        let request = CallRequest {
            tool: &call.name,
            args: &call.arguments,
            approved: false,
        };
        if let Err(refusal) = self.toolbox.admit(self.policy, &request) {
            if let CallError::NeedsApproval { .. } = refusal {
                self.record(
                    RecordKind::ApprovalAsked,
                    &Refusal {
                        call_id: call.id.clone(),
                        tool: call.name.clone(),
                        reason: refusal.to_string(),
                    },
                )
                .await?;
                return Ok(Some(SessionStatus::AwaitingApproval { call }));
            }
            // Refused: journaled with its reason and told to the model as a
            // tool error; the session goes on.
            let reason = refusal.to_string();
            self.record(
                RecordKind::PolicyDecision,
                &Refusal {
                    call_id: call.id.clone(),
                    tool: call.name.clone(),
                    reason: reason.clone(),
                },
            )
            .await?;
            self.messages
                .push(Message::tool_result(&call.id, format!("error: {reason}")));
            return Ok(None);
        }
        if let Err(e) = self.ledger.check_tool_call() {
            return self.pause(e).await.map(Some);
        }
        let idempotent = self.toolbox.tool(&call.name).is_some_and(|t| t.idempotent);
        self.record(
            RecordKind::ToolIntent,
            &ToolIntent {
                call_id: call.id.clone(),
                tool: call.name.clone(),
                arguments: call.arguments.clone(),
                idempotent,
            },
        )
        .await?;
        let report = self.toolbox.call(self.policy, &request).await;
        self.ledger.record_tool_call();
        let mut result = ToolResult {
            call_id: call.id.clone(),
            output: None,
            output_blob: None,
            error: None,
            elapsed_ms: report.elapsed.as_millis() as u64,
        };
        let mut blobs = Vec::new();
        let content = match report.outcome {
            Ok(output) if output.len() > INLINE_OUTPUT => {
                let hash = self.journal.put_blob(output.as_bytes())?;
                result.output_blob = Some(blake3::Hash::from_bytes(hash).to_hex().to_string());
                blobs.push(hash);
                output
            }
            Ok(output) => {
                result.output = Some(output.clone());
                output
            }
            Err(e) => {
                result.error = Some(e.to_string());
                format!("error: {e}")
            }
        };
        self.writer
            .append_durable(
                RecordKind::ToolResult,
                &serde_json::to_vec(&result)?,
                &blobs,
            )
            .await?;
        self.messages.push(Message::tool_result(&call.id, content));
        Ok(None)
    }

    async fn pause(&mut self, exceeded: BudgetExceeded) -> Result<SessionStatus, AgentError> {
        self.record(
            RecordKind::BudgetEvent,
            &serde_json::json!({"exhausted": format!("{:?}", exceeded.kind), "used": exceeded.used, "limit": exceeded.limit}),
        )
        .await?;
        Ok(SessionStatus::BudgetExhausted(exceeded))
    }
}

/// A number in [0, 1) that differs between calls and processes.
fn jitter_fraction() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mixed = blake3::hash(&[nanos.to_le_bytes(), std::process::id().to_le_bytes()].concat());
    let bytes = mixed.as_bytes();
    u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as f64 / (u32::MAX as f64 + 1.0)
}
