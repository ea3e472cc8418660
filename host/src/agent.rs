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
//! A call that fails exactly as it failed before (same tool, same arguments,
//! same error) is a loop in the making: the model reads a note with the
//! error saying so (journaled as `repeated_failure`), and past the policy's
//! `max_repeated_failures` the session ends as stuck instead of spending
//! its budgets on the same mistake.
//!
//! The loop sees the model, the sandbox and the journal only through their
//! interfaces ([`Model`], [`Toolbox`], [`SessionWriter`]).

mod heavy;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use longrun_journal::payload::{
    BudgetEvent, ChangesApplied, ChildEnded, ChildStarted, ControlAction, EndStatus, LeaseTaken,
    NewMessages, Payload, SessionEnded, SpawnedBy, Spent, TrajectoryChosen,
};
use longrun_journal::{RepeatedFailures, SessionState};

use crate::budget::{BudgetExceeded, BudgetKind, Ledger};
use crate::children::Workers;
use crate::context;
use crate::journal::{Journal, JournalError, RecordKind, SessionId, SessionWriter, Status};
use crate::model::{
    Message, Model, ModelError, ModelRequest, Purpose, Role, ToolCall, ToolDef, Usage,
};
use crate::policy::{Decision, Policy, Price, RecordedPrices, SessionBudgets};
use crate::sandbox::{CallError, CallRequest, Toolbox};
use crate::steer::{Control, Steering, Verdict, Wanted};

/// Tool outputs longer than this go to a blob; the record references it.
const INLINE_OUTPUT: usize = 1024;

/// The least context the loop works with: the goal, one step and a summary.
const MIN_CONTEXT_TOKENS: u64 = 1024;

/// How the text of a tool message that reports a failed or refused call
/// begins (the model reads it; a backend may tell failures apart by it).
pub const TOOL_ERROR_PREFIX: &str = "error: ";

/// What the loop tells the model before the last step in which tools could
/// help (see [`Ledger::only_an_answer_fits`]); that step offers no tools.
pub const ANSWER_NOW: &str = "The session's budget allows no more tool calls. \
     Answer the goal now, with what you have found so far.";

/// How the loop behaves, beyond the policy.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The most output tokens asked of the model per call.
    pub max_output_tokens: u64,
    /// Transient model failures retried per call, with exponential backoff.
    pub max_retries: u32,
    /// The first backoff; it doubles on each retry, with up to 50% jitter.
    pub first_backoff: Duration,
    /// The most tokens (estimated) of context sent to the model: past it,
    /// older steps are compacted. At least 1024.
    pub context_tokens: u64,
    /// Tool outputs longer than this many bytes reach the model cut, with a
    /// handle to read the rest through `read_output`.
    pub output_view_bytes: usize,
    /// The most bytes of the mounts' files a new session stores in its
    /// journal (see [`crate::snapshot`]); 0 stores none.
    pub snapshot_bytes: u64,
    /// Where heavy mode keeps its trajectories' copies of the read-write
    /// mounts (see [`crate::trajectories`]); without one, heavy mode runs
    /// only under policies with no read-write mount.
    pub scratch_dir: Option<std::path::PathBuf>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            max_output_tokens: 4096,
            max_retries: 5,
            first_backoff: Duration::from_millis(200),
            context_tokens: 32_000,
            output_view_bytes: 8 << 10,
            snapshot_bytes: 64 << 20,
            scratch_dir: None,
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
    /// A person paused the session (see [`Steering`]).
    Paused,
    /// A person cancelled the session; it has ended.
    Cancelled,
    /// The host asked the session to stop where it is ([`Steering::halt`]);
    /// nothing was journaled for it, and a resume goes on from here.
    Halted,
    /// The model made `call` again and it failed with `error` for the
    /// `count`th time, past the policy's `max_repeated_failures`; the
    /// session has ended.
    Stuck {
        call: ToolCall,
        error: String,
        count: u64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    State(#[from] longrun_journal::StateError),
    #[error(
        "the policy sets a cost budget but has no price for model {0:?}: add a [prices.{0:?}] table"
    )]
    Unpriced(String),
    #[error(
        "the context needs about {tokens} tokens even after compaction, over the limit of {limit}: raise the context limit"
    )]
    ContextOverflow { tokens: u64, limit: u64 },
    #[error("the journal does not match this session: {0}")]
    Inconsistent(String),
    #[error("cannot snapshot the mounts: {0}")]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    #[error("heavy mode: {0}")]
    Heavy(#[from] crate::trajectories::HeavyError),
}

/// What `model` costs under `policy`. A model without a price is free only
/// when no cost budget is set: a budget that cannot be counted is refused.
fn price(policy: &Policy, model: &dyn Model) -> Result<Price, AgentError> {
    match policy.price_for(model.name()) {
        Some(price) => Ok(price),
        None if policy.session.max_cost_usd.is_some() => {
            Err(AgentError::Unpriced(model.name().to_owned()))
        }
        None => Ok(Price::FREE),
    }
}

pub use longrun_journal::payload::{
    ForkPoint, Forked, JournaledCompaction, ModelFailure, PolicyChanged, RecordedTool, Refusal,
    RepeatedFailure, SessionCreated, ToolIntent, ToolResult,
};

/// What the model reads after the error of a call that failed so before:
/// that repeating it does not help, and how many more the policy allows.
pub fn repeat_note(repeat: &RepeatedFailure) -> String {
    let ending = match repeat.limit.saturating_sub(repeat.count) {
        0 => "The next identical failure ends the session.".to_owned(),
        1 => "Two more identical failures end the session.".to_owned(),
        n => format!("{} more identical failures end the session.", n + 1),
    };
    format!(
        "\n\nNote: this exact call ({} with these arguments) has now failed {} times with the same error. \
         Calling it again will fail again: change the arguments, call another tool, or answer. {ending}",
        repeat.tool, repeat.count
    )
}

/// The payload of a `PolicyChanged` record: `policy` is in force from here on.
pub fn policy_changed(policy: &Policy) -> PolicyChanged {
    PolicyChanged {
        policy_text: policy.text.clone(),
        policy_hash: policy_hash(policy),
        policy_base: Some(policy.base_dir.to_string_lossy().into_owned()),
    }
}

/// Each budget of `left` divided among `parts` (the children that may run
/// at once, and the parent): what a child gets when it names no budget.
fn share_of(left: &SessionBudgets, parts: u64) -> SessionBudgets {
    let part = |n: Option<u64>| n.map(|n| n / parts.max(1));
    SessionBudgets {
        max_steps: part(left.max_steps),
        max_tool_calls: part(left.max_tool_calls),
        max_input_tokens: part(left.max_input_tokens),
        max_output_tokens: part(left.max_output_tokens),
        max_cost_usd: left
            .max_cost_usd
            .map(|c| crate::policy::NonNegative(c.0 / parts.max(1) as f64)),
        max_wall_time: left.max_wall_time,
        max_repeated_failures: left.max_repeated_failures,
    }
}

/// What a parent with budgets `parent` sets aside for a child with budgets
/// `child`: the child's limit of each budget the parent has (a budget the
/// parent does not have, it does not count ahead; steps are each
/// session's own).
fn reservation(parent: &SessionBudgets, child: &SessionBudgets) -> Spent {
    let counted = |p: Option<u64>, c: Option<u64>| p.and(c).unwrap_or(0);
    Spent {
        steps: 0,
        tool_calls: counted(parent.max_tool_calls, child.max_tool_calls),
        input_tokens: counted(parent.max_input_tokens, child.max_input_tokens),
        output_tokens: counted(parent.max_output_tokens, child.max_output_tokens),
        cost_usd: parent
            .max_cost_usd
            .and(child.max_cost_usd)
            .map_or(0.0, |c| c.0),
    }
}

/// On a store that hosts share, say in the session's records which host
/// writes it from here on, under which lease epoch.
async fn record_lease(journal: &Journal, writer: &mut SessionWriter) -> Result<(), AgentError> {
    if let Some(lease) = journal.held_lease(writer.session()) {
        let taken = LeaseTaken {
            owner: lease.owner,
            epoch: lease.epoch,
        };
        writer
            .append_payload_durable(&Payload::LeaseTaken(taken), &[])
            .await?;
    }
    Ok(())
}

/// The hex BLAKE3 hash of a policy's text, as records hold it.
pub fn policy_hash(policy: &Policy) -> String {
    blake3::hash(policy.text.as_bytes()).to_hex().to_string()
}

/// The first record of a session that pursues `goal` under `policy` (its
/// text and hash) with `model` and the tools of `toolbox`.
pub fn session_created(
    goal: &str,
    policy: &Policy,
    model: &str,
    toolbox: &Toolbox,
    labels: serde_json::Map<String, serde_json::Value>,
) -> SessionCreated {
    SessionCreated {
        goal: goal.to_owned(),
        policy_text: policy.text.clone(),
        policy_hash: policy_hash(policy),
        model: model.to_owned(),
        labels,
        tools: toolbox
            .tools()
            .map(|t| RecordedTool {
                name: t.name.clone(),
                parameters: t.parameters.clone(),
                idempotent: t.idempotent,
                effects: Some(t.effects),
                component: t.component.clone(),
                component_hash: t.component_hash.clone(),
            })
            .collect(),
        snapshot: None,
        parent: None,
        spawned_by: None,
        policy_base: Some(policy.base_dir.to_string_lossy().into_owned()),
        driver: longrun_journal::payload::Driver::Model,
        trajectories: None,
    }
}

/// One session, driven by [`Session::run`].
pub struct Session<'a> {
    writer: SessionWriter,
    journal: Arc<Journal>,
    toolbox: &'a Toolbox,
    policy: &'a Policy,
    model: &'a dyn Model,
    config: AgentConfig,
    price: Price,
    ledger: Ledger,
    messages: Vec<Message>,
    /// How many of `messages` the model has been sent already.
    sent: usize,
    /// When the session was created (its first record), for the wall-time
    /// budget: wall time counts from creation, across pauses and restarts.
    created_unix_millis: u64,
    /// Calls of the last response that have no result yet, in order.
    pending: Vec<ToolCall>,
    /// Calls for which a person's approval was asked.
    asked: std::collections::HashSet<String>,
    /// A person's decisions on calls that waited for approval.
    verdicts: std::collections::HashMap<String, Verdict>,
    /// Whether a person paused the session (journaled as a `Control`).
    paused: bool,
    steering: Option<Arc<Steering>>,
    /// Intents recorded without a result: calls a crash interrupted.
    interrupted: std::collections::HashMap<String, ToolIntent>,
    /// How many steps compaction has folded into the context's summary.
    compacted_steps: u64,
    /// Whether a tool output reached the model cut (so it holds a handle
    /// that `read_output` can page through).
    outputs_cut: bool,
    /// How often each failing call failed.
    failures: RepeatedFailures,
    progress: Option<ProgressHook<'a>>,
    /// What it needs to start children (see [`crate::children`]).
    workers: Option<Arc<Workers>>,
    /// The children it started, by id.
    children: BTreeMap<SessionId, ChildRun>,
    /// Heavy mode: how many trajectories it runs (see
    /// [`Session::run_trajectories`]).
    trajectories: Option<u32>,
    /// The hex hash of its snapshot's manifest, when one was taken.
    snapshot: Option<String>,
    /// Heavy mode: the comparisons' replies so far, each with its
    /// `model_response` record.
    comparisons: Vec<(u64, String)>,
    /// Heavy mode: the trajectory chosen, and whether its changes were
    /// applied, once recorded.
    chosen: Option<TrajectoryChosen>,
    applied: Option<ChangesApplied>,
}

/// A child session as its parent runs it.
struct ChildRun {
    /// Its `child_started` record.
    started_at: u64,
    started: ChildStarted,
    /// Its task, while it runs.
    task: Option<tokio::task::JoinHandle<crate::children::Outcome>>,
    /// Its `child_ended` record, once the parent saw it end.
    ended: Option<ChildEnded>,
}

/// What one step did, for a live progress view.
#[derive(Debug, Clone)]
pub struct StepProgress {
    pub session: SessionId,
    pub step: u64,
    /// The calls the model asked for in this step (none for a final answer).
    pub calls: Vec<ToolCall>,
    pub usage: crate::budget::Usage,
}

type ProgressHook<'a> = Box<dyn FnMut(&StepProgress) + Send + 'a>;

/// Whether a host should go on with `session`: it has not ended, it is
/// not a fork (a fork runs under `longrun replay fork`, against a scratch
/// copy of the mounts, never against the real ones), and it is not a
/// child (its parent runs it again when the parent is resumed).
pub fn resumable(journal: &Journal, session: SessionId) -> Result<bool, AgentError> {
    let state = SessionState::fold(journal, session, &mut longrun_journal::Unpriced)?;
    Ok(match &state.created {
        Some(created) => {
            created.parent.is_none() && created.spawned_by.is_none() && !state.status.ended()
        }
        None => false,
    })
}

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
        Session::start_labelled(
            journal,
            toolbox,
            policy,
            model,
            config,
            goal,
            serde_json::Map::new(),
            None,
        )
        .await
    }

    /// A new session whose first record also holds `labels`; with
    /// `trajectories`, a heavy-mode session: it runs that many child
    /// sessions on `goal` and answers with the one its model finds best
    /// (see [`crate::trajectories`]), and is refused before anything is
    /// written when the policy or the host cannot run them.
    #[allow(clippy::too_many_arguments)]
    pub async fn start_labelled(
        journal: &Arc<Journal>,
        toolbox: &'a Toolbox,
        policy: &'a Policy,
        model: &'a dyn Model,
        config: AgentConfig,
        goal: &str,
        labels: serde_json::Map<String, serde_json::Value>,
        trajectories: Option<u32>,
    ) -> Result<Session<'a>, AgentError> {
        if let Some(n) = trajectories {
            crate::trajectories::check(
                policy,
                n,
                config.scratch_dir.as_deref(),
                config.snapshot_bytes,
            )?;
        }
        let writer = journal.create_session()?;
        let mut created = session_created(goal, policy, model.name(), toolbox, labels);
        created.trajectories = trajectories;
        Session::start_with(journal, writer, toolbox, policy, model, config, created).await
    }

    /// A child session, under the id its parent reserved for it in its
    /// `child_started` record, which its first record names.
    #[allow(clippy::too_many_arguments)]
    pub async fn start_as_child(
        journal: &Arc<Journal>,
        id: SessionId,
        toolbox: &'a Toolbox,
        policy: &'a Policy,
        model: &'a dyn Model,
        config: AgentConfig,
        goal: &str,
        spawned_by: SpawnedBy,
    ) -> Result<Session<'a>, AgentError> {
        let writer = journal.create_reserved_session(id)?;
        let mut created = session_created(goal, policy, model.name(), toolbox, Default::default());
        created.spawned_by = Some(spawned_by);
        Session::start_with(journal, writer, toolbox, policy, model, config, created).await
    }

    /// Write a new session's first record and set it up.
    async fn start_with(
        journal: &Arc<Journal>,
        mut writer: SessionWriter,
        toolbox: &'a Toolbox,
        policy: &'a Policy,
        model: &'a dyn Model,
        config: AgentConfig,
        mut created: SessionCreated,
    ) -> Result<Session<'a>, AgentError> {
        let price = price(policy, model)?;
        let goal = created.goal.clone();
        let trajectories = created.trajectories;
        let mut blobs = Vec::new();
        if config.snapshot_bytes > 0 && !policy.filesystem.is_empty() {
            let taken = crate::snapshot::take(journal, &policy.filesystem, config.snapshot_bytes)?;
            created.snapshot = Some(crate::journal::hex(&taken.manifest));
            blobs = taken.blobs;
        }
        let snapshot = created.snapshot.clone();
        writer
            .append_payload_durable(&Payload::SessionCreated(Box::new(created)), &blobs)
            .await?;
        record_lease(journal, &mut writer).await?;
        let created_unix_millis = unix_millis();
        Ok(Session {
            messages: vec![Message::text(Role::User, goal.as_str())],
            created_unix_millis,
            trajectories,
            snapshot,
            ..Session::fresh(writer, journal, toolbox, policy, model, config, price)
        })
    }

    /// A session with nothing done yet; `start` and `resume` fill in what
    /// they know.
    fn fresh(
        writer: SessionWriter,
        journal: &Arc<Journal>,
        toolbox: &'a Toolbox,
        policy: &'a Policy,
        model: &'a dyn Model,
        config: AgentConfig,
        price: Price,
    ) -> Session<'a> {
        Session {
            writer,
            journal: journal.clone(),
            toolbox,
            policy,
            model,
            config,
            price,
            ledger: Ledger::new(policy.session.clone()),
            messages: Vec::new(),
            sent: 0,
            created_unix_millis: unix_millis(),
            pending: Vec::new(),
            asked: Default::default(),
            verdicts: Default::default(),
            paused: false,
            steering: None,
            interrupted: Default::default(),
            compacted_steps: 0,
            outputs_cut: false,
            failures: RepeatedFailures::default(),
            progress: None,
            workers: None,
            children: BTreeMap::new(),
            trajectories: None,
            snapshot: None,
            comparisons: Vec::new(),
            chosen: None,
            applied: None,
        }
    }

    /// Rebuild a session from its journal, to go on where it stopped: its
    /// state (usage, pending and interrupted calls, approvals, pause) as
    /// [`SessionState`] folds it, and the model's context from the same
    /// records.
    pub async fn resume(
        journal: &Arc<Journal>,
        session: SessionId,
        toolbox: &'a Toolbox,
        policy: &'a Policy,
        model: &'a dyn Model,
        config: AgentConfig,
    ) -> Result<Resumed<'a>, AgentError> {
        let price = price(policy, model)?;
        let mut state = SessionState::new(session);
        let mut pricing = RecordedPrices::default();
        let mut messages = Vec::new();
        let mut sent = 0;
        let mut outputs_cut = false;
        let mut comparisons = Vec::new();
        for record in journal.records(session) {
            let record = record?;
            let payload = longrun_journal::state::decode(&record)?;
            state.apply(&record, &payload, &mut pricing)?;
            match &payload {
                Payload::SessionCreated(created) => {
                    messages.push(Message::text(Role::User, created.goal.clone()));
                }
                // A heavy-mode session's responses are its comparisons.
                Payload::ModelResponse(response)
                    if state
                        .created
                        .as_ref()
                        .is_some_and(|c| c.trajectories.is_some()) =>
                {
                    comparisons.push((
                        record.seq,
                        response.message.content.clone().unwrap_or_default(),
                    ));
                }
                Payload::ModelResponse(response) => {
                    messages.push(response.message.clone());
                    sent = messages.len();
                }
                Payload::ToolResult(result) => {
                    outputs_cut |= result.view_bytes.is_some();
                    let content = match (output_of(journal, &record, result)?, &result.error) {
                        (Some(output), _) => match result.view_bytes {
                            Some(cap) => {
                                context::output_view(&output, &context::handle(record.seq), cap)
                            }
                            None => output,
                        },
                        (None, Some(error)) => format!("{TOOL_ERROR_PREFIX}{error}"),
                        (None, None) => String::new(),
                    };
                    messages.push(Message::tool_result(&result.call_id, content));
                }
                Payload::PolicyDecision(refusal) => messages.push(Message::tool_result(
                    &refusal.call_id,
                    format!("{TOOL_ERROR_PREFIX}{}", refusal.reason),
                )),
                Payload::Compaction(compaction) => compaction
                    .compaction
                    .apply(&mut messages, &mut sent)
                    .map_err(AgentError::Inconsistent)?,
                Payload::UserMessage(input) => {
                    messages.push(Message::text(Role::User, input.text.clone()));
                }
                // It follows the failure it is about (the fold checks), whose
                // result the model read with the note.
                Payload::RepeatedFailure(repeat) => {
                    if let Some(Message {
                        content: Some(content),
                        ..
                    }) = messages.last_mut()
                    {
                        content.push_str(&repeat_note(repeat));
                    }
                }
                Payload::SessionEnded(_) => return Ok(Resumed::Ended),
                // What the model was sent is already in the context; the
                // rest is in the state.
                Payload::ModelRequest(_)
                | Payload::ToolIntent(_)
                | Payload::BudgetEvent(_)
                | Payload::ApprovalAsked(_)
                | Payload::ApprovalGiven(_)
                | Payload::Error(_)
                | Payload::Control(_)
                | Payload::Forked(_)
                | Payload::PolicyChanged(_)
                | Payload::LeaseTaken(_)
                | Payload::ChildStarted(_)
                | Payload::ChildEnded(_)
                | Payload::TrajectoryChosen(_)
                | Payload::ChangesApplied(_) => {}
            }
        }
        if state.created.is_none() {
            return Err(JournalError::NoSession(session).into());
        }
        let mut writer = journal.open_session(session)?;
        record_lease(journal, &mut writer).await?;
        // The policy in force is part of the record: an auditor checks each
        // call against the policy the session ran under at the time.
        if state.policy_hash != policy_hash(policy) {
            writer
                .append_payload_durable(&Payload::PolicyChanged(policy_changed(policy)), &[])
                .await?;
        }
        let mut ledger = Ledger::new(policy.session.clone());
        ledger.used = (&state.used).into();
        let verdicts = state
            .approvals
            .values()
            .filter_map(|a| a.decided.as_ref().map(|(_, v)| (a.call.clone(), v.clone())))
            .collect();
        Ok(Resumed::Session(Box::new(Session {
            ledger,
            messages,
            sent,
            created_unix_millis: state.created_unix_millis,
            pending: state.pending,
            asked: state.approvals.into_keys().collect(),
            verdicts,
            paused: state.paused,
            interrupted: state.interrupted.into_iter().collect(),
            compacted_steps: state.compacted_through,
            outputs_cut,
            failures: state.failures,
            children: state
                .children
                .into_iter()
                .map(|(id, child)| {
                    let run = ChildRun {
                        started_at: child.started_at,
                        started: child.started,
                        task: None,
                        ended: child.ended,
                    };
                    (id, run)
                })
                .collect(),
            trajectories: state.created.as_ref().and_then(|c| c.trajectories),
            snapshot: state.created.as_ref().and_then(|c| c.snapshot.clone()),
            comparisons,
            chosen: state.chosen,
            applied: state.applied,
            ..Session::fresh(writer, journal, toolbox, policy, model, config, price)
        })))
    }

    /// Let the session start children (its policy's `[children]`) with
    /// `workers`; children it started before a restart that have not ended
    /// run again from here (resumed, or started if their first record was
    /// never written).
    pub fn with_workers(&mut self, workers: Arc<Workers>) {
        let parent = self.writer.session();
        for (id, child) in &mut self.children {
            if child.ended.is_some() || child.task.is_some() {
                continue;
            }
            let policy = match Policy::parse(
                &child.started.policy_text,
                "a child's policy",
                Path::new("/"),
            ) {
                Ok(policy) => policy,
                Err(e) => {
                    tracing::error!(
                        session = parent,
                        child = id,
                        "cannot run the child again: {e}"
                    );
                    continue;
                }
            };
            let run = crate::children::Child {
                id: *id,
                goal: child.started.goal.clone(),
                model: child.started.model.clone(),
                policy,
                spawned_by: SpawnedBy {
                    session: parent,
                    seq: child.started_at,
                },
                copies: heavy::copies_of(&child.started, self.snapshot.as_ref()),
            };
            child.task = Some(crate::children::spawn(workers.clone(), run));
        }
        self.workers = Some(workers);
    }

    /// Call `hook` after each step's model response is journaled.
    pub fn on_step(&mut self, hook: impl FnMut(&StepProgress) + Send + 'a) {
        self.progress = Some(Box::new(hook));
    }

    /// Take messages, decisions, pauses and cancels from `steering` at each
    /// step boundary.
    pub fn steer_by(&mut self, steering: Arc<Steering>) {
        self.steering = Some(steering);
    }

    /// Whether a person paused the session (after a resume: whether the
    /// journal says so), so that a host does not run it on its own.
    pub fn paused_by_person(&self) -> bool {
        self.paused
    }

    /// The call that waits for a person's approval, if one does.
    pub fn awaiting_approval(&self) -> Option<&ToolCall> {
        self.pending
            .first()
            .filter(|c| self.asked.contains(&c.id) && !self.verdicts.contains_key(&c.id))
    }

    pub fn id(&self) -> SessionId {
        self.writer.session()
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Wall time since the session was created.
    pub fn elapsed(&self) -> Duration {
        Duration::from_millis(unix_millis().saturating_sub(self.created_unix_millis))
    }

    /// Wall time left before the wall-time budget runs out, if there is one.
    fn time_left(&self) -> Option<Duration> {
        self.policy
            .session
            .max_wall_time
            .map(|limit| limit.0.saturating_sub(self.elapsed()))
    }

    /// The tools the model is offered: those the policy allows, and, once an
    /// output has reached the model cut, `read_output`, which only reads this
    /// session's own outputs. (Offered from the start, a small model called
    /// it with made-up handles instead of the tools it was asked to use.)
    fn tool_defs(&self) -> Vec<ToolDef> {
        self.toolbox
            .tools()
            .filter(|t| !matches!(self.policy.decide(&t.name), Decision::Deny(_)))
            .map(|t| ToolDef {
                name: t.name.clone(),
                description: t.description.clone(),
                parameters: t.parameters.clone(),
            })
            .chain(
                self.outputs_cut
                    .then(|| context::read_output_def(self.config.output_view_bytes)),
            )
            .chain(self.children_policy().into_iter().flat_map(|c| {
                [
                    crate::children::start_child_def(&c.models),
                    crate::children::wait_children_def(),
                ]
            }))
            .collect()
    }

    /// The policy's `[children]`, when this host can start children.
    fn children_policy(&self) -> Option<&crate::policy::ChildrenPolicy> {
        self.workers.as_ref()?;
        self.policy.children.as_ref()
    }

    /// Whether the last message is the loop's request for the answer, so
    /// that a step retried after a pause does not ask twice.
    fn asked_for_the_answer(&self) -> bool {
        self.messages
            .last()
            .is_some_and(|m| m.role == Role::User && m.content.as_deref() == Some(ANSWER_NOW))
    }

    async fn record(&mut self, payload: Payload) -> Result<(), AgentError> {
        self.writer.append_payload_durable(&payload, &[]).await?;
        Ok(())
    }

    /// Run until the session completes or pauses.
    pub async fn run(&mut self) -> Result<SessionStatus, AgentError> {
        if let Some(n) = self.trajectories {
            return self.run_trajectories(n).await;
        }
        loop {
            if let Some(status) = self.steer().await? {
                return Ok(status);
            }
            // The calls of the last response, one at a time; a call that
            // pauses the session stays first in line for the next run.
            if let Some(call) = self.pending.first().cloned() {
                if let Some(status) = self.tool_call(call).await? {
                    return Ok(status);
                }
                self.pending.remove(0);
                continue;
            }
            if let Err(e) = self.ledger.check_step(self.elapsed()) {
                return self.pause(e).await;
            }
            // When a tool call could no longer help (no call left, or this
            // is the last step), the model is asked for its answer and
            // offered no tools, so the session ends with an answer rather
            // than a pause. The request is journaled with the note in it.
            let answer_only = self.ledger.only_an_answer_fits();
            if answer_only && !self.asked_for_the_answer() {
                self.messages.push(Message::text(Role::User, ANSWER_NOW));
            }
            let tools = if answer_only {
                Vec::new()
            } else {
                self.tool_defs()
            };
            let mut estimate = context::estimate(&self.messages, &tools);
            if estimate > self.context_limit() {
                if let Some(status) = self.compact(&tools).await? {
                    return Ok(status);
                }
                estimate = context::estimate(&self.messages, &tools);
                if estimate > self.context_limit() {
                    return Err(AgentError::ContextOverflow {
                        tokens: estimate,
                        limit: self.context_limit(),
                    });
                }
            }
            let request = ModelRequest {
                messages: self.messages.clone(),
                tools,
                max_output_tokens: self.config.max_output_tokens,
                step: self.ledger.used.steps,
                purpose: Purpose::Step,
            };
            let worst = self
                .price
                .cost_usd(estimate, 0, self.config.max_output_tokens);
            if let Err(e) =
                self.ledger
                    .check_model_call(estimate, self.config.max_output_tokens, worst)
            {
                return self.pause(e).await;
            }
            // Not flushed on its own: the response's flush carries it.
            self.writer.append_payload(
                &Payload::ModelRequest(NewMessages(self.messages[self.sent..].to_vec())),
                &[],
            )?;
            let response = match self.complete_with_retries(&request).await? {
                Completion::Response(response) => response,
                Completion::OutOfTime(e) => return self.pause(e).await,
                // Cancelled or halted: the next boundary says which.
                Completion::Interrupted => continue,
            };
            self.record(Payload::ModelResponse(response.clone()))
                .await?;
            charge(&mut self.ledger, &self.price, &response.usage);
            self.ledger.record_step();
            self.messages.push(response.message.clone());
            self.sent = self.messages.len();
            for warning in self.ledger.new_warnings(self.elapsed()) {
                self.record(Payload::BudgetEvent(BudgetEvent::Warning {
                    warning: warning.kind,
                    used: warning.used,
                    limit: warning.limit,
                }))
                .await?;
            }
            if let Some(hook) = &mut self.progress {
                hook(&StepProgress {
                    session: self.writer.session(),
                    step: self.ledger.used.steps,
                    calls: response.message.tool_calls.clone(),
                    usage: self.ledger.used.clone(),
                });
            }

            if response.message.tool_calls.is_empty() {
                let answer = response.message.content.unwrap_or_default();
                self.record(Payload::SessionEnded(SessionEnded {
                    status: EndStatus::Completed,
                    answer: Some(answer.clone()),
                }))
                .await?;
                return Ok(SessionStatus::Completed { answer });
            }
            self.pending = response.message.tool_calls;
        }
    }

    /// Take what the steering side asked since the last boundary: journal
    /// decisions and messages, and stop for a pause or a cancel. Messages
    /// wait while calls of the last response are unanswered, since a
    /// model's calls must be followed by their results.
    async fn steer(&mut self) -> Result<Option<SessionStatus>, AgentError> {
        let Some(steering) = self.steering.clone() else {
            return Ok(None);
        };
        let taken = steering.take(self.pending.is_empty());
        if taken.halted {
            return Ok(Some(SessionStatus::Halted));
        }
        for verdict in taken.verdicts {
            // Only a call that waits for one gets a decision.
            if self.asked.contains(&verdict.call_id)
                && !self.verdicts.contains_key(&verdict.call_id)
                && self.pending.iter().any(|c| c.id == verdict.call_id)
            {
                self.record(Payload::ApprovalGiven(verdict.clone())).await?;
                self.verdicts.insert(verdict.call_id.clone(), verdict);
            }
        }
        for input in taken.inputs {
            self.record(Payload::UserMessage(input.clone())).await?;
            self.messages.push(Message::text(Role::User, input.text));
        }
        match taken.wanted {
            Wanted::Cancel => return self.end_cancelled().await.map(Some),
            Wanted::Pause => {
                self.set_paused(true).await?;
                return Ok(Some(SessionStatus::Paused));
            }
            Wanted::Run => self.set_paused(false).await?,
        }
        Ok(None)
    }

    /// Journal a person's pause or resume, when it changes anything.
    async fn set_paused(&mut self, paused: bool) -> Result<(), AgentError> {
        if self.paused != paused {
            self.paused = paused;
            let action = if paused {
                ControlAction::Pause
            } else {
                ControlAction::Resume
            };
            self.record(Payload::Control(Control { action })).await?;
        }
        Ok(())
    }

    async fn end_cancelled(&mut self) -> Result<SessionStatus, AgentError> {
        self.record(Payload::SessionEnded(SessionEnded {
            status: EndStatus::Cancelled,
            answer: None,
        }))
        .await?;
        Ok(SessionStatus::Cancelled)
    }

    /// Ask the model, retrying transient failures with backoff. A call (or
    /// a wait) that would run past the wall-time budget is cut at the limit.
    async fn complete_with_retries(
        &mut self,
        request: &ModelRequest,
    ) -> Result<Completion, AgentError> {
        let mut backoff = self.config.first_backoff;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = match self.time_left() {
                None => ask_model(self.model, self.steering.as_deref(), request).await,
                Some(left) => match tokio::time::timeout(
                    left,
                    ask_model(self.model, self.steering.as_deref(), request),
                )
                .await
                {
                    Ok(outcome) => outcome,
                    Err(_) => return Ok(Completion::OutOfTime(self.out_of_time())),
                },
            };
            let Some(outcome) = outcome else {
                return Ok(Completion::Interrupted);
            };
            match outcome {
                Ok(response) => return Ok(Completion::Response(response)),
                Err(ModelError::Transient {
                    message: e,
                    retry_after,
                }) if attempt <= self.config.max_retries => {
                    // Up to 50% jitter, so that many sessions do not retry in
                    // step; never sooner than the backend asked.
                    let jitter = backoff.mul_f64(jitter_fraction() * 0.5);
                    let wait = (backoff + jitter).max(retry_after.unwrap_or_default());
                    self.record(Payload::Error(ModelFailure {
                        attempt,
                        error: e,
                        retry_in_ms: Some(wait.as_millis() as u64),
                    }))
                    .await?;
                    if self.time_left().is_some_and(|left| left <= wait) {
                        return Ok(Completion::OutOfTime(self.out_of_time()));
                    }
                    if let Some(steering) = self.steering.clone() {
                        tokio::select! {
                            () = tokio::time::sleep(wait) => {}
                            () = steering.interrupted() => return Ok(Completion::Interrupted),
                        }
                    } else {
                        tokio::time::sleep(wait).await;
                    }
                    backoff = backoff.saturating_mul(2);
                }
                Err(e) => {
                    self.record(Payload::Error(ModelFailure {
                        attempt,
                        error: e.to_string(),
                        retry_in_ms: None,
                    }))
                    .await?;
                    return Err(e.into());
                }
            }
        }
    }

    fn out_of_time(&self) -> BudgetExceeded {
        let limit = self.policy.session.max_wall_time.map(|t| t.0);
        BudgetExceeded {
            kind: BudgetKind::WallTime,
            used: format!("{:?}", self.elapsed()),
            limit: format!("{:?}", limit.unwrap_or_default()),
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
            let result = Payload::ToolResult(ToolResult {
                call_id: call.id.clone(),
                output: None,
                output_blob: None,
                error: Some(error.clone()),
                elapsed_ms: 0,
                view_bytes: None,
            });
            let content = format!("{TOOL_ERROR_PREFIX}{error}");
            return self
                .journal_failure(&call, result, &[], content, &error)
                .await;
        }
        if call.name == context::READ_OUTPUT {
            return self.read_output(call).await;
        }
        if self.children_policy().is_some() {
            if call.name == crate::children::START_CHILD {
                return self.start_child_call(call).await;
            }
            if call.name == crate::children::WAIT_CHILDREN {
                return self.wait_children(call).await;
            }
        }
        let approved = match self.verdicts.get(&call.id) {
            Some(verdict) if !verdict.approved => {
                let reason = format!(
                    "a person ({}) denied this call{}",
                    verdict.by,
                    verdict
                        .reason
                        .as_deref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                );
                return self.refuse(&call, reason).await;
            }
            Some(_) => true,
            None => false,
        };
        let request = CallRequest {
            tool: &call.name,
            args: &call.arguments,
            approved,
        };
        if let Err(refusal) = self.toolbox.admit(self.policy, &request) {
            if let CallError::NeedsApproval { .. } = refusal {
                // Asked once; a run after a restart or a message waits on.
                if self.asked.insert(call.id.clone()) {
                    self.record(Payload::ApprovalAsked(Refusal {
                        call_id: call.id.clone(),
                        tool: call.name.clone(),
                        reason: refusal.to_string(),
                    }))
                    .await?;
                }
                return Ok(Some(SessionStatus::AwaitingApproval { call }));
            }
            return self.refuse(&call, refusal.to_string()).await;
        }
        let idempotent = self.toolbox.tool(&call.name).is_some_and(|t| t.idempotent);
        if let Some(status) = self.intend(&call, idempotent).await? {
            return Ok(Some(status));
        }
        let report = self.toolbox.call(self.policy, &request).await;
        let outcome = report.outcome.map_err(|e| e.to_string());
        self.finish_call(&call, outcome, report.elapsed, true).await
    }

    /// Refuse a call: journaled with its reason and told to the model as a
    /// tool error; the session goes on unless the same refusal repeats
    /// past the policy's limit.
    async fn refuse(
        &mut self,
        call: &ToolCall,
        reason: String,
    ) -> Result<Option<SessionStatus>, AgentError> {
        let refusal = Payload::PolicyDecision(Refusal {
            call_id: call.id.clone(),
            tool: call.name.clone(),
            reason: reason.clone(),
        });
        self.journal_failure(
            call,
            refusal,
            &[],
            format!("{TOOL_ERROR_PREFIX}{reason}"),
            &reason,
        )
        .await
    }

    /// Journal the record of a failed call (its result or its refusal) and
    /// give the model `content`, counting the failure: when it repeats an
    /// earlier one, a `repeated_failure` goes in the same write and its note
    /// after the error, and past the policy's limit the session ends there.
    async fn journal_failure(
        &mut self,
        call: &ToolCall,
        failure: Payload,
        blobs: &[crate::journal::Hash],
        mut content: String,
        error: &str,
    ) -> Result<Option<SessionStatus>, AgentError> {
        let count = self.failures.failed(call, error);
        if count < 2 {
            self.writer.append_payload_durable(&failure, blobs).await?;
            self.messages.push(Message::tool_result(&call.id, content));
            return Ok(None);
        }
        let repeat = RepeatedFailure {
            call_id: call.id.clone(),
            tool: call.name.clone(),
            count,
            limit: self.policy.session.repeated_failures_allowed(),
        };
        self.writer.append_payload(&failure, blobs)?;
        let stuck = count > repeat.limit;
        content.push_str(&repeat_note(&repeat));
        if !stuck {
            self.record(Payload::RepeatedFailure(repeat)).await?;
            self.messages.push(Message::tool_result(&call.id, content));
            return Ok(None);
        }
        self.writer
            .append_payload(&Payload::RepeatedFailure(repeat), &[])?;
        self.record(Payload::SessionEnded(SessionEnded {
            status: EndStatus::Stuck,
            answer: None,
        }))
        .await?;
        self.messages.push(Message::tool_result(&call.id, content));
        Ok(Some(SessionStatus::Stuck {
            call: call.clone(),
            error: error.to_owned(),
            count,
        }))
    }

    /// Check the tool-call budget and make the call's intent durable, so
    /// that a crash from here on is known to have interrupted it.
    async fn intend(
        &mut self,
        call: &ToolCall,
        idempotent: bool,
    ) -> Result<Option<SessionStatus>, AgentError> {
        if let Err(e) = self.ledger.check_tool_call() {
            return self.pause(e).await.map(Some);
        }
        self.record(Payload::ToolIntent(ToolIntent {
            call_id: call.id.clone(),
            tool: call.name.clone(),
            arguments: call.arguments.clone(),
            idempotent,
        }))
        .await?;
        self.ledger.record_tool_call();
        Ok(None)
    }

    /// Journal a call's result (durably, before the next model request) and
    /// give the model its view of it. With `view`, an output over the view
    /// cap reaches the model cut, with the handle of this record.
    async fn finish_call(
        &mut self,
        call: &ToolCall,
        outcome: Result<String, String>,
        elapsed: Duration,
        view: bool,
    ) -> Result<Option<SessionStatus>, AgentError> {
        let (mut result, blobs) = tool_result(&self.journal, &call.id, &outcome, elapsed)?;
        let content = match outcome {
            Ok(output) => {
                let cap = self.config.output_view_bytes;
                if view && output.len() > cap {
                    result.view_bytes = Some(cap);
                    self.outputs_cut = true;
                    context::output_view(&output, &context::handle(self.writer.next_seq()), cap)
                } else {
                    output
                }
            }
            Err(e) => {
                let content = format!("{TOOL_ERROR_PREFIX}{e}");
                return self
                    .journal_failure(call, Payload::ToolResult(result), &blobs, content, &e)
                    .await;
            }
        };
        self.writer
            .append_payload_durable(&Payload::ToolResult(result), &blobs)
            .await?;
        self.messages.push(Message::tool_result(&call.id, content));
        Ok(None)
    }

    /// The built-in `read_output`: a page of an output this session's
    /// journal holds. Journaled like any call; it reads, so it is idempotent.
    async fn read_output(&mut self, call: ToolCall) -> Result<Option<SessionStatus>, AgentError> {
        if let Some(status) = self.intend(&call, true).await? {
            return Ok(Some(status));
        }
        let started = std::time::Instant::now();
        let outcome = self.page(&call.arguments);
        self.finish_call(&call, outcome, started.elapsed(), false)
            .await
    }

    /// The built-in `start_child`: journal the child (`child_started`, with
    /// the policy it runs under and what is reserved for it) and start it.
    /// A call resumed after a crash finds the child it started and starts
    /// no other.
    async fn start_child_call(
        &mut self,
        call: ToolCall,
    ) -> Result<Option<SessionStatus>, AgentError> {
        if let Some(status) = self.intend(&call, true).await? {
            return Ok(Some(status));
        }
        let started = std::time::Instant::now();
        let outcome = match self
            .children
            .values()
            .find(|c| c.started.call_id == call.id)
        {
            Some(child) => Ok(child.started.child),
            None => self.new_child(&call).await?,
        };
        let outcome = outcome.map(|child| serde_json::json!({ "child": child }).to_string());
        self.finish_call(&call, outcome, started.elapsed(), false)
            .await
    }

    /// Check and start the child `call` asks for: its id, or why not.
    async fn new_child(
        &mut self,
        call: &ToolCall,
    ) -> Result<Result<SessionId, String>, AgentError> {
        let (Some(workers), Some(limits)) = (self.workers.clone(), self.policy.children.clone())
        else {
            return Ok(Err("this session cannot start children".into()));
        };
        let args: crate::children::StartChildArgs = match serde_json::from_str(&call.arguments) {
            Ok(args) => args,
            Err(e) => return Ok(Err(format!("invalid arguments for {}: {e}", call.name))),
        };
        if !limits.models.contains(&args.model) || !workers.models.contains_key(&args.model) {
            return Ok(Err(format!(
                "model {:?} is not one a child may run on: {:?}",
                args.model, limits.models
            )));
        }
        let running = self.children.values().filter(|c| c.ended.is_none()).count();
        if self.children.len() >= limits.max_children as usize {
            return Ok(Err(format!(
                "this session has started {} children, all the policy allows",
                self.children.len()
            )));
        }
        if running >= limits.max_concurrent as usize {
            return Ok(Err(format!(
                "{running} children run already, all the policy allows at once: wait for one with {}",
                crate::children::WAIT_CHILDREN
            )));
        }
        let left = self.ledger.left(self.elapsed());
        let share = share_of(&left, u64::from(limits.max_concurrent) + 1);
        let tools: Vec<&str> = self.toolbox.tools().map(|t| t.name.as_str()).collect();
        let policy =
            match crate::narrow::derive(self.policy, &args.request(), &tools, &left, &share) {
                Ok(policy) => policy,
                Err(refused) => return Ok(Err(refused.to_string())),
            };
        let reserved = reservation(&self.policy.session, &policy.session);
        let id = self.journal.reserve_session_id()?;
        let started = ChildStarted {
            call_id: call.id.clone(),
            child: id,
            goal: args.goal.clone(),
            model: args.model.clone(),
            policy_text: policy.text.clone(),
            reserved,
            trajectory: None,
        };
        self.launch_child(started, policy, workers).await?;
        Ok(Ok(id))
    }

    /// Journal a child (`started`, durable before the child's first
    /// record), count what is reserved for it as spent, and start it under
    /// `policy`. What `start_child` and heavy mode's trajectories share.
    async fn launch_child(
        &mut self,
        started: ChildStarted,
        policy: Policy,
        workers: Arc<Workers>,
    ) -> Result<(), AgentError> {
        let started_at = self.writer.next_seq();
        self.record(Payload::ChildStarted(started.clone())).await?;
        self.ledger.charge(&started.reserved);
        let child = crate::children::Child {
            id: started.child,
            goal: started.goal.clone(),
            model: started.model.clone(),
            policy,
            spawned_by: SpawnedBy {
                session: self.writer.session(),
                seq: started_at,
            },
            copies: heavy::copies_of(&started, self.snapshot.as_ref()),
        };
        let task = crate::children::spawn(workers, child);
        self.children.insert(
            started.child,
            ChildRun {
                started_at,
                started,
                task: Some(task),
                ended: None,
            },
        );
        Ok(())
    }

    /// The built-in `wait_children`: wait for the children asked for (all
    /// not yet collected, by default) to end or stop, journal each one's
    /// `child_ended` (its spending replaces its reservation), and give the
    /// model their answers. Waiting is cut short by a cancel or a halt.
    async fn wait_children(&mut self, call: ToolCall) -> Result<Option<SessionStatus>, AgentError> {
        if let Some(status) = self.intend(&call, true).await? {
            return Ok(Some(status));
        }
        let started = std::time::Instant::now();
        let args: crate::children::WaitArgs = if call.arguments.trim().is_empty() {
            Default::default()
        } else {
            match serde_json::from_str(&call.arguments) {
                Ok(args) => args,
                Err(e) => {
                    let outcome = Err(format!("invalid arguments for {}: {e}", call.name));
                    return self
                        .finish_call(&call, outcome, started.elapsed(), false)
                        .await;
                }
            }
        };
        let wanted: Vec<SessionId> = match args.children {
            Some(ids) => ids,
            None => self
                .children
                .iter()
                .filter(|(_, c)| c.ended.is_none())
                .map(|(id, _)| *id)
                .collect(),
        };
        if let Some(unknown) = wanted.iter().find(|id| !self.children.contains_key(id)) {
            let outcome = Err(format!("session {unknown} is not a child of this session"));
            return self
                .finish_call(&call, outcome, started.elapsed(), false)
                .await;
        }
        let mut answers = Vec::new();
        for id in wanted {
            if self.children.get(&id).is_some_and(|c| c.ended.is_none())
                && let Some(status) = self.collect(id).await?
            {
                return Ok(Some(status));
            }
            let Some(ended) = self.children.get(&id).and_then(|c| c.ended.clone()) else {
                continue;
            };
            answers.push(serde_json::json!({
                "child": id,
                "status": ended.status.as_str(),
                "answer": ended.answer,
            }));
        }
        let outcome = Ok(serde_json::Value::Array(answers).to_string());
        self.finish_call(&call, outcome, started.elapsed(), false)
            .await
    }

    /// Wait for child `id` to end and journal it. Returns a status when the
    /// wait was cut short (the call is then run again on the next run).
    async fn collect(&mut self, id: SessionId) -> Result<Option<SessionStatus>, AgentError> {
        let Some(child) = self.children.get_mut(&id) else {
            return Ok(None);
        };
        let Some(task) = child.task.as_mut() else {
            return Err(AgentError::Inconsistent(format!(
                "child {id} is not running and has not ended (no workers to run it)"
            )));
        };
        let joined = match self.steering.clone() {
            Some(steering) => tokio::select! {
                joined = task => Some(joined),
                () = steering.interrupted() => None,
            },
            None => Some(task.await),
        };
        let Some(joined) = joined else {
            // A cancel ends the session now; a halt stops it as it stands.
            return Ok(Some(self.steer().await?.unwrap_or(SessionStatus::Halted)));
        };
        child.task = None;
        let outcome = joined.unwrap_or_else(|e| crate::children::Outcome {
            status: Status::Failed,
            answer: None,
            error: Some(format!("the child's task ended: {e}")),
            spent: Default::default(),
        });
        let ended = ChildEnded {
            child: id,
            status: outcome.status,
            answer: outcome.answer.or(outcome.error),
            spent: outcome.spent,
        };
        let reserved = child.started.reserved.clone();
        self.record(Payload::ChildEnded(ended.clone())).await?;
        self.ledger.refund(&reserved);
        self.ledger.charge(&ended.spent);
        if let Some(child) = self.children.get_mut(&id) {
            child.ended = Some(ended);
        }
        Ok(None)
    }

    fn page(&self, arguments: &str) -> Result<String, String> {
        let cap = self.config.output_view_bytes;
        let args: context::ReadOutputArgs = serde_json::from_str(arguments)
            .map_err(|e| format!("invalid arguments for {}: {e}", context::READ_OUTPUT))?;
        let unknown = || format!("no output with handle {:?} in this session", args.handle);
        let seq = context::parse_handle(&args.handle).ok_or_else(unknown)?;
        let record = self
            .journal
            .record(self.writer.session(), seq)
            .map_err(|e| e.to_string())?
            .filter(|r| r.kind == RecordKind::ToolResult)
            .ok_or_else(unknown)?;
        let result: ToolResult =
            serde_json::from_slice(&record.payload).map_err(|e| e.to_string())?;
        let output = output_of(&self.journal, &record, &result)
            .map_err(|e| e.to_string())?
            .ok_or_else(unknown)?;
        let length = args.length.unwrap_or(cap).clamp(1, cap);
        Ok(context::page(&output, args.offset, length))
    }

    /// The context limit in force.
    fn context_limit(&self) -> u64 {
        self.config.context_tokens.max(MIN_CONTEXT_TOKENS)
    }

    /// Fold the oldest steps into one message so that the context falls to
    /// half its limit: the model's summary of them, or a note that they
    /// were trimmed when the model cannot summarise (or the budget cannot
    /// pay for it). The compaction is journaled; the steps stay in the
    /// journal. Returns a status when the wall-time budget ran out.
    async fn compact(&mut self, tools: &[ToolDef]) -> Result<Option<SessionStatus>, AgentError> {
        let limit = self.context_limit();
        let summary_tokens = limit / 8;
        let before = context::estimate(&self.messages, tools);
        let Some(to) = context::plan(&self.messages, tools, limit / 2, summary_tokens) else {
            return Ok(None);
        };
        let through_step = self.compacted_steps
            + self.messages[1..to]
                .iter()
                .filter(|m| m.role == Role::Assistant)
                .count() as u64;
        // The transcript, the instruction and the answer must fit the limit.
        let transcript_chars = (limit - summary_tokens).saturating_sub(200) as usize * 4;
        let request = ModelRequest {
            messages: vec![
                Message::text(Role::System, context::SUMMARY_INSTRUCTION),
                Message::text(
                    Role::User,
                    context::transcript(&self.messages[1..to], transcript_chars),
                ),
            ],
            tools: Vec::new(),
            max_output_tokens: summary_tokens,
            step: self.ledger.used.steps,
            purpose: Purpose::Summarize,
        };
        let estimate = context::estimate(&request.messages, &[]);
        let worst = self.price.cost_usd(estimate, 0, summary_tokens);
        // The same retries as a step (backoff, `Retry-After`, each failure
        // journaled); a summary that still fails gives way to trimming.
        let outcome = match self
            .ledger
            .check_model_call(estimate, summary_tokens, worst)
        {
            Err(e) => Err(format!("not summarised: {e}")),
            Ok(()) => match self.complete_with_retries(&request).await {
                Ok(Completion::Response(response)) => Ok(response),
                Ok(Completion::OutOfTime(e)) => Err(format!("not summarised: {e}")),
                Ok(Completion::Interrupted) => Err("not summarised: interrupted".to_owned()),
                Err(AgentError::Model(e)) => Err(e.to_string()),
                Err(other) => return Err(other),
            },
        };
        let (method, summary, usage, error) = match outcome {
            Ok(response) => {
                let summary = response.message.content.unwrap_or_default();
                let tokens = crate::model::estimate_tokens(&summary);
                if summary.trim().is_empty() || tokens > summary_tokens {
                    let why = format!("the summary was empty or too long ({tokens} tokens)");
                    (
                        context::Method::Trim,
                        String::new(),
                        Some(response.usage),
                        Some(why),
                    )
                } else {
                    (
                        context::Method::Summary,
                        summary,
                        Some(response.usage),
                        None,
                    )
                }
            }
            Err(e) => (context::Method::Trim, String::new(), None, Some(e)),
        };
        if let Some(usage) = &usage {
            charge(&mut self.ledger, &self.price, usage);
        }
        let mut compaction = context::Compaction {
            from: 1,
            to,
            method,
            replacement: context::replacement(method, through_step, &summary),
            tokens_before: before,
            tokens_after: 0,
            usage,
            error,
        };
        let mut after = self.messages.clone();
        let mut sent = self.sent;
        compaction
            .apply(&mut after, &mut sent)
            .map_err(AgentError::Inconsistent)?;
        compaction.tokens_after = context::estimate(&after, tools);
        self.record(Payload::Compaction(JournaledCompaction {
            compaction,
            through_step,
        }))
        .await?;
        self.messages = after;
        self.sent = sent;
        self.compacted_steps = through_step;
        // What the compaction freed lies between live allocations; give it
        // back, so that a session of days keeps a flat resident set.
        crate::process::release_free_memory();
        if self.time_left().is_some_and(|left| left.is_zero()) {
            return self.pause(self.out_of_time()).await.map(Some);
        }
        Ok(None)
    }

    async fn pause(&mut self, exceeded: BudgetExceeded) -> Result<SessionStatus, AgentError> {
        self.record(Payload::BudgetEvent(BudgetEvent::Exhausted {
            exhausted: exceeded.kind,
            used: exceeded.used.clone(),
            limit: exceeded.limit.clone(),
        }))
        .await?;
        Ok(SessionStatus::BudgetExhausted(exceeded))
    }
}

/// The record of a call's outcome, as every host that runs tools journals
/// it (the agent loop, the MCP server): the output inline when short, else
/// in a blob, stored here, whose hash the record must reference.
pub fn tool_result(
    journal: &Journal,
    call_id: &str,
    outcome: &Result<String, String>,
    elapsed: Duration,
) -> Result<(ToolResult, Vec<crate::journal::Hash>), AgentError> {
    let mut result = ToolResult {
        call_id: call_id.to_owned(),
        output: None,
        output_blob: None,
        error: None,
        elapsed_ms: elapsed.as_millis() as u64,
        view_bytes: None,
    };
    let mut blobs = Vec::new();
    match outcome {
        Ok(output) if output.len() > INLINE_OUTPUT => {
            let hash = journal.put_blob(output.as_bytes())?;
            result.output_blob = Some(blake3::Hash::from_bytes(hash).to_hex().to_string());
            blobs.push(hash);
        }
        Ok(output) => result.output = Some(output.clone()),
        Err(e) => result.error = Some(e.clone()),
    }
    Ok((result, blobs))
}

/// The model's answer to `request`, or `None` when the session is
/// cancelled or halted while it is awaited. (A free function: a future that
/// held the whole session across the wait would need the session `Sync`.)
async fn ask_model(
    model: &dyn Model,
    steering: Option<&Steering>,
    request: &ModelRequest,
) -> Option<Result<crate::model::ModelResponse, ModelError>> {
    match steering {
        None => Some(model.complete(request).await),
        Some(steering) => tokio::select! {
            outcome = model.complete(request) => Some(outcome),
            () = steering.interrupted() => None,
        },
    }
}

/// Count a model call's tokens and cost against the budgets.
fn charge(ledger: &mut Ledger, price: &Price, usage: &Usage) {
    ledger.record_model_call(
        usage.input_tokens,
        usage.output_tokens,
        price.cost_of(usage),
    );
}

/// The whole output a tool-result record holds (inline or in its blob).
pub fn output_of(
    journal: &Journal,
    record: &crate::journal::Record,
    result: &ToolResult,
) -> Result<Option<String>, AgentError> {
    Ok(match (&result.output, record.blobs.first()) {
        (Some(output), _) => Some(output.clone()),
        (None, Some(blob)) => Some(String::from_utf8_lossy(&journal.blob(blob)?).into_owned()),
        (None, None) => None,
    })
}

/// What the model call came to.
enum Completion {
    Response(crate::model::ModelResponse),
    /// The wall-time budget ran out while waiting for the model.
    OutOfTime(BudgetExceeded),
    /// The session was cancelled or halted while waiting for the model.
    Interrupted,
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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
