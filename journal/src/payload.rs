//! What each record says: one typed payload per [`RecordKind`], stored as
//! JSON, and [`Payload`], the record decoded into the one that its kind
//! names.
//!
//! Everything here is persisted, so names are stable: enums are written in
//! `snake_case` and keep the aliases of the names earlier releases wrote
//! (their journals still decode). A new record kind is a new variant of
//! [`RecordKind`] (its byte and name), a new payload type here, a new arm
//! of [`Payload`], and a method of [`crate::Visitor`]: the compiler then
//! names every fold that must learn it (no catch-all arms).

use serde::{Deserialize, Serialize};

use crate::record::{RecordKind, SessionId};

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

/// One message of the conversation, in the chat shape of OpenAI-compatible
/// APIs, with `reasoning_content` kept verbatim (Kimi requires it back on
/// every assistant message that carries tool calls).
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

/// Tokens a model call used, as the backend reports them.
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

/// The payload of `model_request`: the messages the model had not been
/// sent before this request (the rest it has seen).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NewMessages(pub Vec<Message>);

/// The payload of `model_response`: what the model answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelResponse {
    /// An assistant message: a final answer, tool calls, or both.
    pub message: Message,
    pub usage: Usage,
}

/// What running a tool may do to the world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effects {
    None,
    Reads,
    Writes,
    External,
}

/// The payload of `session_created`: the goal, the policy, the model and the
/// tools a session started with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionCreated {
    pub goal: String,
    pub policy_text: String,
    pub policy_hash: String,
    pub model: String,
    /// What the host that started the session recorded with it (the HTTP
    /// API: the tenant, the policy's name, the budgets asked for).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub labels: serde_json::Map<String, serde_json::Value>,
    /// The tools the session could call, as loaded when it started: what an
    /// auditor checks each call's arguments against.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<RecordedTool>,
    /// The hex hash of the blob holding the mounts' snapshot manifest, when
    /// one was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// For a session forked from another: where it was forked from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ForkPoint>,
    /// For a child session: the parent that started it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spawned_by: Option<SpawnedBy>,
    /// Where the policy's relative mount paths resolve, so that an auditor
    /// reads the policy exactly as the host did (absent in journals written
    /// before it was recorded: read from `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_base: Option<String>,
    /// Who proposes the session's tool calls.
    #[serde(default, skip_serializing_if = "Driver::is_model")]
    pub driver: Driver,
    /// Heavy mode: the session runs this many trajectories on its goal and
    /// answers with the one its model finds best.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trajectories: Option<u32>,
}

impl SessionCreated {
    /// Whether the session's calls come from a client rather than a model.
    /// (MCP sessions written before [`Driver`] was recorded say so only by
    /// their `mcp` label.)
    pub fn calls_from_client(&self) -> bool {
        self.driver == Driver::Client || self.labels.contains_key("mcp")
    }
}

/// Who proposes a session's tool calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Driver {
    /// The model, in its responses (an agent session).
    #[default]
    Model,
    /// A client calling tools directly (the MCP server).
    Client,
}

impl Driver {
    fn is_model(&self) -> bool {
        *self == Driver::Model
    }
}

/// A tool as a session's first record keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedTool {
    pub name: String,
    /// JSON Schema of the arguments object.
    pub parameters: serde_json::Value,
    pub idempotent: bool,
    /// What running it may do to the world (absent in journals written
    /// before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effects: Option<Effects>,
    /// The component's file name and the hex hash of its bytes.
    pub component: String,
    pub component_hash: String,
}

/// Where a forked session branched off: the parent's record `at` (whose
/// hash it was, so the link can be checked) is the last one they share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForkPoint {
    pub session: SessionId,
    pub at: u64,
    pub hash: String,
}

/// The payload of `policy_changed`: the policy in force from here on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyChanged {
    pub policy_text: String,
    pub policy_hash: String,
    /// Where the policy's relative mount paths resolve (see
    /// [`SessionCreated::policy_base`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_base: Option<String>,
}

/// The payload of a parent's `forked`: the other side of the link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forked {
    pub child: SessionId,
    pub at: u64,
}

/// The payload of `tool_intent`: a call about to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolIntent {
    pub call_id: String,
    pub tool: String,
    pub arguments: String,
    pub idempotent: bool,
}

/// The payload of `tool_result`: what a call gave, or why it gave nothing.
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
    /// The view cap the model's copy of the output was cut at, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view_bytes: Option<usize>,
}

/// The payload of `policy_decision` (a refused call) and of
/// `approval_asked` (a call that waits for a person).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refusal {
    pub call_id: String,
    pub tool: String,
    pub reason: String,
}

/// The payload of `error`: a model call that failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelFailure {
    pub attempt: u32,
    pub error: String,
    /// When it is retried, after how long.
    pub retry_in_ms: Option<u64>,
}

/// The payload of `approval_given`: a person's decision on a call that
/// waited for approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub call_id: String,
    pub approved: bool,
    /// Who decided (the HTTP API: the tenant).
    pub by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The payload of `user_message`: a person's message for the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Input {
    pub text: String,
    pub by: String,
}

/// A request to steer a session, left in a shared store by a host that
/// does not run the session for the host that does, which takes it at its
/// next lease round and hands it to the session as if it had been asked
/// there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", content = "body", rename_all = "snake_case")]
pub enum SteeringRequest {
    Message(Input),
    Decision(Verdict),
    Pause,
    Resume,
    Cancel,
}

/// What a person did to a running session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlAction {
    Pause,
    Resume,
}

/// The payload of `control`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Control {
    pub action: ControlAction,
}

/// How the compacted messages were replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// By the model's summary of them.
    Summary,
    /// By a note that they were removed (the model could not summarise).
    Trim,
}

/// A compaction: `messages[from..to]` of the context were replaced by
/// `replacement`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Compaction {
    pub from: usize,
    pub to: usize,
    pub method: Method,
    pub replacement: Message,
    pub tokens_before: u64,
    pub tokens_after: u64,
    /// What summarising cost, when the model was asked.
    pub usage: Option<Usage>,
    /// Why summarising failed, when it did.
    pub error: Option<String>,
}

impl Compaction {
    /// Apply to a context; `sent` (how many messages the model has seen)
    /// moves with it. A compaction that does not fit the context (a
    /// journal that does not match this session) is refused.
    pub fn apply(&self, messages: &mut Vec<Message>, sent: &mut usize) -> Result<(), String> {
        if !(1 <= self.from && self.from < self.to && self.to <= messages.len()) {
            return Err(format!(
                "compaction of messages {}..{} does not fit a context of {}",
                self.from,
                self.to,
                messages.len()
            ));
        }
        messages.splice(self.from..self.to, [self.replacement.clone()]);
        let removed = self.to - self.from;
        if *sent >= self.to {
            *sent = *sent - removed + 1;
        } else {
            *sent = self.from + 1;
        }
        Ok(())
    }
}

/// The payload of `compaction`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournaledCompaction {
    #[serde(flatten)]
    pub compaction: Compaction,
    /// The summary now stands for steps 1 to this one.
    pub through_step: u64,
}

/// Which budget a budget event is about. The names are stable; the aliases
/// are how releases before 0.2 wrote them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetKind {
    #[serde(alias = "Steps")]
    Steps,
    #[serde(alias = "ToolCalls")]
    ToolCalls,
    #[serde(alias = "InputTokens")]
    InputTokens,
    #[serde(alias = "OutputTokens")]
    OutputTokens,
    #[serde(alias = "Cost")]
    Cost,
    #[serde(alias = "WallTime")]
    WallTime,
}

impl BudgetKind {
    /// The name records and APIs use.
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetKind::Steps => "steps",
            BudgetKind::ToolCalls => "tool_calls",
            BudgetKind::InputTokens => "input_tokens",
            BudgetKind::OutputTokens => "output_tokens",
            BudgetKind::Cost => "cost",
            BudgetKind::WallTime => "wall_time",
        }
    }
}

impl std::fmt::Display for BudgetKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The payload of `budget_event`: a budget reached its warning share, or
/// the next action would exceed it (the session paused).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BudgetEvent {
    Warning {
        warning: BudgetKind,
        used: f64,
        limit: f64,
    },
    Exhausted {
        exhausted: BudgetKind,
        /// What has been used, as text in the budget's unit.
        used: String,
        limit: String,
    },
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndStatus {
    /// The model answered.
    Completed,
    /// A person cancelled it.
    Cancelled,
    /// The model repeated a failing call past the policy's
    /// `max_repeated_failures` (the last `repeated_failure` says which).
    Stuck,
}

/// The payload of `repeated_failure`: the call `call_id` failed exactly as
/// an earlier call had (same tool, same arguments, same error); `count` is
/// how many times that failure has now happened in the session, and `limit`
/// how many the policy in force allowed before the session ends (as
/// `stuck`, when `count` is past it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepeatedFailure {
    pub call_id: String,
    pub tool: String,
    pub count: u64,
    pub limit: u64,
}

/// The payload of `lease_taken`: from this record on, the host `owner`
/// writes the session, under lease epoch `epoch` (a shared store's
/// fencing refuses every older epoch's records). Epochs only grow along a
/// session, so the records between two of these have one writer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseTaken {
    pub owner: String,
    pub epoch: u64,
}

impl LeaseTaken {
    /// Whether this taking can follow `before`, the session's previous one:
    /// each has a newer epoch, since two with one epoch, or an older one
    /// after a newer, would be two writers at once.
    pub fn follows(&self, before: Option<&LeaseTaken>) -> Result<(), String> {
        match before {
            Some(before) if self.epoch <= before.epoch => Err(format!(
                "{} took the lease under epoch {}, but {} had taken it under epoch {} before",
                self.owner, self.epoch, before.owner, before.epoch
            )),
            _ => Ok(()),
        }
    }
}

/// What a session spent, as a parent counts its child's: steps, calls,
/// tokens and dollars.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Spent {
    pub steps: u64,
    pub tool_calls: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
}

/// The payload of `child_started`, the parent's side of the link to a
/// child session: written, durable, before the child's first record, so a
/// parent resumed after a crash finds the children it started (and starts
/// none twice). The child's first record names this record back
/// ([`SessionCreated::spawned_by`]). What the parent `reserved` for the
/// child counts as spent by the parent until the child ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChildStarted {
    /// The `start_child` call that asked for it.
    pub call_id: String,
    pub child: SessionId,
    pub goal: String,
    pub model: String,
    /// The policy the child runs under (a narrowing of the parent's), so
    /// that a parent resumed before the child's first record was written
    /// starts it as it was asked.
    pub policy_text: String,
    pub reserved: Spent,
    /// For one of a heavy-mode session's trajectories: which, and the
    /// copies of the parent's read-write mounts it works in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trajectory: Option<Trajectory>,
}

/// One trajectory of a heavy-mode session: a child on the parent's goal and
/// model, from the same start. Each of the parent's read-write mounts is
/// given to it as a copy of its own, restored from the parent's snapshot
/// (so every trajectory starts from the same files, and none touches the
/// real ones); the child's policy mounts each copy at the same guest path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trajectory {
    /// Which of the parent's trajectories, from 0.
    pub index: u32,
    pub copies: Vec<MountCopy>,
}

/// A copy of one of the parent's read-write mounts, for one trajectory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountCopy {
    /// The guest path of the parent's mount, where the copy is mounted too.
    pub guest: String,
    /// The host directory that holds the copy.
    pub host: String,
}

/// How a heavy-mode session chose among its trajectories.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "by")]
pub enum ChosenBy {
    /// Only this trajectory completed: there was nothing to compare.
    OnlyCompleted,
    /// The model compared the completed trajectories' answers and named
    /// this one (in the `model_response` at `response`).
    Model { response: u64 },
    /// The model's comparisons named no trajectory (`why`), so the host
    /// took the first that completed. Its changes are then only proposed:
    /// no real file is written on a choice nobody made.
    FirstCompleted { why: String },
}

/// The payload of `trajectory_chosen`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrajectoryChosen {
    /// The chosen child session.
    pub child: SessionId,
    pub index: u32,
    #[serde(flatten)]
    pub by: ChosenBy,
    /// Whether the changes are applied to the real mounts (else only
    /// proposed: recorded here, for a person to apply).
    pub apply: bool,
    /// What the chosen trajectory's copies hold that the parent's snapshot
    /// did not; each new content is a blob the record references.
    pub changes: Vec<FileChange>,
    /// What the copies hold that cannot be carried over (too large for the
    /// journal, a link, a special file), each with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<PathNote>,
}

/// One file a trajectory changed, under the mount at `guest`: its path
/// relative to the mount, the blob it held at the start (none: it did not
/// exist) and the blob it holds now (none: it was removed), as hex hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileChange {
    pub guest: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// A path under a mount, and something about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathNote {
    pub guest: String,
    pub path: String,
    pub why: String,
}

/// The payload of `changes_applied`: the chosen trajectory's changes as
/// they reached the real mounts. A change whose file was no longer what
/// the snapshot held (someone else changed it meanwhile) is not written:
/// it is listed in `conflicts`, with what was found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangesApplied {
    pub applied: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<PathNote>,
}

/// The payload of `child_ended`: the parent saw its child end (or stop):
/// how, its answer, and what it spent, which replaces the reservation in
/// the parent's (and so in every ancestor's) count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChildEnded {
    pub child: SessionId,
    pub status: crate::state::Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    pub spent: Spent,
}

/// Where a child session was started: its parent, and the parent's
/// `child_started` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpawnedBy {
    pub session: SessionId,
    pub seq: u64,
}

/// The payload of `session_ended`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEnded {
    pub status: EndStatus,
    /// The model's answer, for a completed session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
}

/// A record's payload, decoded as its kind says.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    SessionCreated(Box<SessionCreated>),
    ModelRequest(NewMessages),
    ModelResponse(ModelResponse),
    ToolIntent(ToolIntent),
    ToolResult(ToolResult),
    PolicyDecision(Refusal),
    BudgetEvent(BudgetEvent),
    ApprovalAsked(Refusal),
    ApprovalGiven(Verdict),
    Compaction(JournaledCompaction),
    Error(ModelFailure),
    SessionEnded(SessionEnded),
    UserMessage(Input),
    Control(Control),
    Forked(Forked),
    PolicyChanged(PolicyChanged),
    RepeatedFailure(RepeatedFailure),
    LeaseTaken(LeaseTaken),
    ChildStarted(ChildStarted),
    ChildEnded(ChildEnded),
    TrajectoryChosen(TrajectoryChosen),
    ChangesApplied(ChangesApplied),
}

/// A payload that does not decode as its kind says.
#[derive(Debug, thiserror::Error)]
#[error("its {kind} payload does not decode: {source}", kind = .kind.as_str())]
pub struct PayloadError {
    pub kind: RecordKind,
    #[source]
    pub source: serde_json::Error,
}

impl Payload {
    /// Decode `bytes` as the payload of a `kind` record.
    pub fn decode(kind: RecordKind, bytes: &[u8]) -> Result<Payload, PayloadError> {
        fn json<'a, T: Deserialize<'a>>(
            kind: RecordKind,
            bytes: &'a [u8],
        ) -> Result<T, PayloadError> {
            serde_json::from_slice(bytes).map_err(|source| PayloadError { kind, source })
        }
        Ok(match kind {
            RecordKind::SessionCreated => Payload::SessionCreated(Box::new(json(kind, bytes)?)),
            RecordKind::ModelRequest => Payload::ModelRequest(json(kind, bytes)?),
            RecordKind::ModelResponse => Payload::ModelResponse(json(kind, bytes)?),
            RecordKind::ToolIntent => Payload::ToolIntent(json(kind, bytes)?),
            RecordKind::ToolResult => Payload::ToolResult(json(kind, bytes)?),
            RecordKind::PolicyDecision => Payload::PolicyDecision(json(kind, bytes)?),
            RecordKind::BudgetEvent => Payload::BudgetEvent(json(kind, bytes)?),
            RecordKind::ApprovalAsked => Payload::ApprovalAsked(json(kind, bytes)?),
            RecordKind::ApprovalGiven => Payload::ApprovalGiven(json(kind, bytes)?),
            RecordKind::Compaction => Payload::Compaction(json(kind, bytes)?),
            RecordKind::Error => Payload::Error(json(kind, bytes)?),
            RecordKind::SessionEnded => Payload::SessionEnded(json(kind, bytes)?),
            RecordKind::UserMessage => Payload::UserMessage(json(kind, bytes)?),
            RecordKind::Control => Payload::Control(json(kind, bytes)?),
            RecordKind::Forked => Payload::Forked(json(kind, bytes)?),
            RecordKind::PolicyChanged => Payload::PolicyChanged(json(kind, bytes)?),
            RecordKind::RepeatedFailure => Payload::RepeatedFailure(json(kind, bytes)?),
            RecordKind::LeaseTaken => Payload::LeaseTaken(json(kind, bytes)?),
            RecordKind::ChildStarted => Payload::ChildStarted(json(kind, bytes)?),
            RecordKind::ChildEnded => Payload::ChildEnded(json(kind, bytes)?),
            RecordKind::TrajectoryChosen => Payload::TrajectoryChosen(json(kind, bytes)?),
            RecordKind::ChangesApplied => Payload::ChangesApplied(json(kind, bytes)?),
        })
    }

    /// The kind of record this payload belongs in.
    pub fn kind(&self) -> RecordKind {
        match self {
            Payload::SessionCreated(_) => RecordKind::SessionCreated,
            Payload::ModelRequest(_) => RecordKind::ModelRequest,
            Payload::ModelResponse(_) => RecordKind::ModelResponse,
            Payload::ToolIntent(_) => RecordKind::ToolIntent,
            Payload::ToolResult(_) => RecordKind::ToolResult,
            Payload::PolicyDecision(_) => RecordKind::PolicyDecision,
            Payload::BudgetEvent(_) => RecordKind::BudgetEvent,
            Payload::ApprovalAsked(_) => RecordKind::ApprovalAsked,
            Payload::ApprovalGiven(_) => RecordKind::ApprovalGiven,
            Payload::Compaction(_) => RecordKind::Compaction,
            Payload::Error(_) => RecordKind::Error,
            Payload::SessionEnded(_) => RecordKind::SessionEnded,
            Payload::UserMessage(_) => RecordKind::UserMessage,
            Payload::Control(_) => RecordKind::Control,
            Payload::Forked(_) => RecordKind::Forked,
            Payload::PolicyChanged(_) => RecordKind::PolicyChanged,
            Payload::RepeatedFailure(_) => RecordKind::RepeatedFailure,
            Payload::LeaseTaken(_) => RecordKind::LeaseTaken,
            Payload::ChildStarted(_) => RecordKind::ChildStarted,
            Payload::ChildEnded(_) => RecordKind::ChildEnded,
            Payload::TrajectoryChosen(_) => RecordKind::TrajectoryChosen,
            Payload::ChangesApplied(_) => RecordKind::ChangesApplied,
        }
    }

    /// The payload's bytes, as records store them.
    pub fn encode(&self) -> Vec<u8> {
        let bytes = match self {
            Payload::SessionCreated(p) => serde_json::to_vec(p),
            Payload::ModelRequest(p) => serde_json::to_vec(p),
            Payload::ModelResponse(p) => serde_json::to_vec(p),
            Payload::ToolIntent(p) => serde_json::to_vec(p),
            Payload::ToolResult(p) => serde_json::to_vec(p),
            Payload::PolicyDecision(p) | Payload::ApprovalAsked(p) => serde_json::to_vec(p),
            Payload::BudgetEvent(p) => serde_json::to_vec(p),
            Payload::ApprovalGiven(p) => serde_json::to_vec(p),
            Payload::Compaction(p) => serde_json::to_vec(p),
            Payload::Error(p) => serde_json::to_vec(p),
            Payload::SessionEnded(p) => serde_json::to_vec(p),
            Payload::UserMessage(p) => serde_json::to_vec(p),
            Payload::Control(p) => serde_json::to_vec(p),
            Payload::Forked(p) => serde_json::to_vec(p),
            Payload::PolicyChanged(p) => serde_json::to_vec(p),
            Payload::RepeatedFailure(p) => serde_json::to_vec(p),
            Payload::LeaseTaken(p) => serde_json::to_vec(p),
            Payload::ChildStarted(p) => serde_json::to_vec(p),
            Payload::ChildEnded(p) => serde_json::to_vec(p),
            Payload::TrajectoryChosen(p) => serde_json::to_vec(p),
            Payload::ChangesApplied(p) => serde_json::to_vec(p),
        };
        // These types hold only strings, numbers, and JSON values that came
        // from JSON: serializing them cannot fail.
        bytes.unwrap_or_default()
    }
}
