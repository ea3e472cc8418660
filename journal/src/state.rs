//! One session's state, folded from its records: the one place where what
//! the records mean for a session's status, usage and cost is decided. The
//! agent's resume, the server's restart scan and replay's summary all read
//! it, so they cannot drift apart.
//!
//! A record that cannot follow the ones before it (a result for a call that
//! was never proposed, anything before `session_created` or after
//! `session_ended` but a fork) is an error, not ignored: a journal that
//! says something impossible is not accounted as if it were fine.
//!
//! Consumers that need more than the state (a timeline, statistics, an
//! audit) implement [`Visitor`], which has a method per record kind.

use std::collections::BTreeMap;

use crate::payload::{
    BudgetEvent, BudgetKind, ControlAction, EndStatus, Input, JournaledCompaction, ModelFailure,
    ModelResponse, NewMessages, Payload, PayloadError, PolicyChanged, Refusal, RepeatedFailure,
    SessionCreated, SessionEnded, ToolCall, ToolIntent, ToolResult, Usage, Verdict,
};
use crate::payload::{
    ChangesApplied, ChildEnded, ChildStarted, Control, Forked, LeaseTaken, Spent, TrajectoryChosen,
};
use crate::record::{Hash, Record, RecordKind, SessionId};
use crate::{Journal, JournalError};

/// Where a session stands. Stored nowhere: always derived by
/// [`SessionState`] from the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Not ended, and nothing stops it: it runs, or a host will resume it.
    Running,
    /// A person paused it.
    Paused,
    /// A call waits for a person's approval.
    AwaitingApproval,
    /// The next action would exceed a budget.
    BudgetExhausted,
    /// The model answered; ended.
    Completed,
    /// A person cancelled it; ended.
    Cancelled,
    /// The model failed for good at its last request; a host that resumes
    /// it asks again.
    Failed,
    /// The model repeated a failing call past the policy's limit; ended.
    Stuck,
}

impl Status {
    pub const ALL: [Status; 8] = [
        Status::Running,
        Status::Paused,
        Status::AwaitingApproval,
        Status::BudgetExhausted,
        Status::Completed,
        Status::Cancelled,
        Status::Failed,
        Status::Stuck,
    ];

    /// The status's name in APIs and listings, stable.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Paused => "paused",
            Status::AwaitingApproval => "awaiting_approval",
            Status::BudgetExhausted => "budget_exhausted",
            Status::Completed => "completed",
            Status::Cancelled => "cancelled",
            Status::Failed => "failed",
            Status::Stuck => "stuck",
        }
    }

    /// The status [`Status::as_str`] names.
    pub fn parse(name: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Whether the session has ended (nothing can be added but a fork).
    pub fn ended(self) -> bool {
        matches!(self, Status::Completed | Status::Cancelled | Status::Stuck)
    }
}

/// What a session's model calls cost: the host knows the prices (they are
/// in the policy in force, which this crate does not parse).
pub trait Pricing {
    /// The cost in US dollars of a model call of `model` that used `usage`,
    /// under the policy whose text is `policy_text`.
    fn cost_usd(&mut self, policy_text: &str, model: &str, usage: &Usage) -> f64;
}

/// Prices nothing (free models, or no prices known).
pub struct Unpriced;

impl Pricing for Unpriced {
    fn cost_usd(&mut self, _: &str, _: &str, _: &Usage) -> f64 {
        0.0
    }
}

/// What a session has used, summaries included.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Used {
    pub steps: u64,
    pub tool_calls: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
    pub reasoning_tokens: u64,
    pub cost_usd: f64,
    pub compactions: u64,
}

impl Used {
    /// Count what a child spent (or what was reserved for it). Steps are
    /// each session's own (a step is one of its model calls, numbered), so
    /// a child's are not counted.
    fn add(&mut self, spent: &Spent) {
        self.tool_calls += spent.tool_calls;
        self.input_tokens += spent.input_tokens;
        self.output_tokens += spent.output_tokens;
        self.cost_usd += spent.cost_usd;
    }

    /// Count `other` too (what another session used itself).
    pub fn plus(&mut self, other: &Used) {
        self.steps += other.steps;
        self.tool_calls += other.tool_calls;
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cached_input_tokens += other.cached_input_tokens;
        self.reasoning_tokens += other.reasoning_tokens;
        self.cost_usd += other.cost_usd;
        self.compactions += other.compactions;
    }

    /// Take back what [`Used::add`] counted.
    fn take(&mut self, spent: &Spent) {
        self.tool_calls = self.tool_calls.saturating_sub(spent.tool_calls);
        self.input_tokens = self.input_tokens.saturating_sub(spent.input_tokens);
        self.output_tokens = self.output_tokens.saturating_sub(spent.output_tokens);
        self.cost_usd = (self.cost_usd - spent.cost_usd).max(0.0);
    }
}

/// A call that asked for a person's approval.
#[derive(Debug, Clone, PartialEq)]
pub struct Approval {
    /// The `approval_asked` record.
    pub asked_at: u64,
    pub call: String,
    /// The `approval_given` record and the decision, once made.
    pub decided: Option<(u64, Verdict)>,
}

/// How often each failing call failed in a session: a call fails "the same
/// way" as an earlier one when its tool, its arguments (as JSON, whatever
/// their spacing and key order) and its error are the same. The agent loop
/// counts with it as it runs and [`SessionState`] from the records, so a
/// resumed session goes on counting where it stopped.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RepeatedFailures {
    counts: std::collections::HashMap<Hash, u64>,
    /// The call that failed last, and how many times it has failed so.
    last: Option<(String, String, u64)>,
}

impl RepeatedFailures {
    /// Count one more failure of `call` with `error`; returns how many times
    /// it has now failed so (1 the first time).
    pub fn failed(&mut self, call: &ToolCall, error: &str) -> u64 {
        let arguments = serde_json::from_str::<serde_json::Value>(&call.arguments)
            .map_or_else(|_| call.arguments.clone(), |v| v.to_string());
        let mut key = blake3::Hasher::new();
        for part in [call.name.as_str(), arguments.as_str(), error] {
            key.update(&(part.len() as u64).to_le_bytes());
            key.update(part.as_bytes());
        }
        let count = self.counts.entry(*key.finalize().as_bytes()).or_insert(0);
        *count += 1;
        self.last = Some((call.id.clone(), call.name.clone(), *count));
        *count
    }

    /// The last failed call (its id and tool) and its count.
    pub fn last(&self) -> Option<(&str, &str, u64)> {
        self.last
            .as_ref()
            .map(|(id, tool, count)| (id.as_str(), tool.as_str(), *count))
    }
}

/// A session, as its records so far say.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionState {
    pub session: SessionId,
    /// The first record, once read.
    pub created: Option<Box<SessionCreated>>,
    pub created_unix_millis: u64,
    pub last_unix_millis: u64,
    /// How many records were folded, and the last one's hash.
    pub records: u64,
    pub head: Option<Hash>,
    /// The policy in force (the first record's, or the last change's).
    pub policy_text: String,
    pub policy_hash: String,
    pub status: Status,
    /// The model's answer, once completed.
    pub answer: Option<String>,
    pub used: Used,
    /// The budget that stopped the session, while it is stopped by one.
    pub budget_exhausted: Option<BudgetKind>,
    /// The model's last error, while the session is failed.
    pub error: Option<String>,
    /// Calls of the last response that have no answer yet, in order.
    pub pending: Vec<ToolCall>,
    /// Calls whose intent is recorded and whose result is not: a host that
    /// stopped interrupted them.
    pub interrupted: BTreeMap<String, ToolIntent>,
    /// Calls that asked for approval, by call id.
    pub approvals: BTreeMap<String, Approval>,
    /// Whether a person paused the session.
    pub paused: bool,
    /// Steps folded into the context's summary by the last compaction.
    pub compacted_through: u64,
    /// Sessions forked from this one.
    pub forks: Vec<Forked>,
    /// How often each failing call failed.
    pub failures: RepeatedFailures,
    /// The host that writes the session now, as its last `lease_taken`
    /// record says (none for a session no shared store's host took).
    pub writer: Option<LeaseTaken>,
    /// The child sessions it started, by id.
    pub children: BTreeMap<SessionId, Child>,
    /// Heavy mode: the trajectory chosen, once chosen.
    pub chosen: Option<TrajectoryChosen>,
    /// Heavy mode: the chosen changes as applied, once applied.
    pub applied: Option<ChangesApplied>,
}

/// A child session, as its parent's records say.
#[derive(Debug, Clone, PartialEq)]
pub struct Child {
    /// The `child_started` record.
    pub started_at: u64,
    pub started: ChildStarted,
    pub ended: Option<ChildEnded>,
}

/// A record that cannot follow the ones before it, or does not decode.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("session {session}: record {seq} ({kind}) cannot follow the records before it: {why}", kind = .kind.as_str())]
    OutOfOrder {
        session: SessionId,
        seq: u64,
        kind: RecordKind,
        why: String,
    },
    #[error("session {session}: record {seq}: {source}")]
    Payload {
        session: SessionId,
        seq: u64,
        #[source]
        source: PayloadError,
    },
    #[error(transparent)]
    Journal(#[from] JournalError),
}

impl SessionState {
    /// A session with no records yet.
    pub fn new(session: SessionId) -> SessionState {
        SessionState {
            session,
            created: None,
            created_unix_millis: 0,
            last_unix_millis: 0,
            records: 0,
            head: None,
            policy_text: String::new(),
            policy_hash: String::new(),
            status: Status::Running,
            answer: None,
            used: Used::default(),
            budget_exhausted: None,
            error: None,
            pending: Vec::new(),
            interrupted: BTreeMap::new(),
            approvals: BTreeMap::new(),
            paused: false,
            compacted_through: 0,
            forks: Vec::new(),
            failures: RepeatedFailures::default(),
            writer: None,
            children: BTreeMap::new(),
            chosen: None,
            applied: None,
        }
    }

    /// What the session used itself: [`SessionState::used`] less what its
    /// children spent (or have reserved while they run).
    pub fn own_used(&self) -> Used {
        let mut own = self.used.clone();
        for child in self.children.values() {
            own.take(
                child
                    .ended
                    .as_ref()
                    .map_or(&child.started.reserved, |ended| &ended.spent),
            );
        }
        own
    }

    /// Fold every readable record of `session`.
    pub fn fold(
        journal: &Journal,
        session: SessionId,
        pricing: &mut dyn Pricing,
    ) -> Result<SessionState, StateError> {
        let mut state = SessionState::new(session);
        for record in journal.records(session) {
            let record = record?;
            let payload = decode(&record)?;
            state.apply(&record, &payload, pricing)?;
        }
        Ok(state)
    }

    /// The model the session runs on.
    pub fn model(&self) -> &str {
        self.created.as_ref().map_or("", |c| c.model.as_str())
    }

    /// The call that waits for a person's approval, if one does.
    pub fn awaiting_approval(&self) -> Option<&ToolCall> {
        self.pending.first().filter(|c| {
            self.approvals
                .get(&c.id)
                .is_some_and(|a| a.decided.is_none())
        })
    }

    /// Fold one more record (with its decoded payload) into the state.
    pub fn apply(
        &mut self,
        record: &Record,
        payload: &Payload,
        pricing: &mut dyn Pricing,
    ) -> Result<(), StateError> {
        let refuse = |why: String| StateError::OutOfOrder {
            session: record.session,
            seq: record.seq,
            kind: record.kind,
            why,
        };
        if payload.kind() != record.kind {
            return Err(refuse(format!(
                "its payload is a {} payload",
                payload.kind().as_str()
            )));
        }
        match (self.created.is_some(), payload) {
            (false, Payload::SessionCreated(_)) => {}
            (false, _) => return Err(refuse("the session has not been created".into())),
            (true, Payload::SessionCreated(_)) => {
                return Err(refuse("the session was created already".into()));
            }
            (true, Payload::Forked(_)) => {}
            (true, _) if self.status.ended() => {
                return Err(refuse("the session has ended".into()));
            }
            (true, _) => {}
        }
        let pending = |state: &SessionState, call_id: &str| {
            state.pending.iter().position(|c| c.id == call_id)
        };
        match payload {
            Payload::SessionCreated(created) => {
                self.created_unix_millis = record.unix_millis;
                self.policy_text = created.policy_text.clone();
                self.policy_hash = created.policy_hash.clone();
                self.created = Some(created.clone());
            }
            Payload::PolicyChanged(PolicyChanged {
                policy_text,
                policy_hash,
                policy_base: _,
            }) => {
                self.policy_text = policy_text.clone();
                self.policy_hash = policy_hash.clone();
            }
            Payload::ModelRequest(NewMessages(_)) => {}
            Payload::ModelResponse(ModelResponse { message, usage }) => {
                if let Some(call) = self.pending.first() {
                    return Err(refuse(format!("call {} has no answer yet", call.id)));
                }
                self.used.steps += 1;
                self.charge(usage, pricing);
                self.pending = message.tool_calls.clone();
                self.interrupted.clear();
                self.error = None;
                self.budget_exhausted = None;
                self.status = Status::Running;
            }
            Payload::ToolIntent(intent) => {
                let from_client = self.created.as_ref().is_some_and(|c| c.calls_from_client());
                if from_client && pending(self, &intent.call_id).is_none() {
                    // A client's call is proposed and intended at once.
                    self.pending.push(ToolCall {
                        id: intent.call_id.clone(),
                        name: intent.tool.clone(),
                        arguments: intent.arguments.clone(),
                    });
                }
                if pending(self, &intent.call_id).is_none() {
                    return Err(refuse(format!(
                        "call {} is not waiting to run",
                        intent.call_id
                    )));
                }
                self.used.tool_calls += 1;
                self.interrupted
                    .insert(intent.call_id.clone(), intent.clone());
            }
            Payload::ToolResult(ToolResult { call_id, error, .. }) => {
                let Some(at) = pending(self, call_id) else {
                    return Err(refuse(format!(
                        "call {call_id} is not waiting for a result"
                    )));
                };
                let call = self.pending.remove(at);
                if let Some(error) = error {
                    self.failures.failed(&call, error);
                }
                self.interrupted.remove(call_id);
                self.status = Status::Running;
            }
            Payload::PolicyDecision(Refusal {
                call_id, reason, ..
            }) => {
                let from_client = self.created.as_ref().is_some_and(|c| c.calls_from_client());
                match pending(self, call_id) {
                    Some(at) => {
                        let call = self.pending.remove(at);
                        self.failures.failed(&call, reason);
                    }
                    // A client's call is refused as it is proposed.
                    None if from_client => {}
                    None => return Err(refuse(format!("call {call_id} is not waiting to run"))),
                }
                self.status = Status::Running;
            }
            Payload::ApprovalAsked(Refusal { call_id, .. }) => {
                if pending(self, call_id).is_none() {
                    return Err(refuse(format!("call {call_id} is not waiting to run")));
                }
                self.approvals.insert(
                    call_id.clone(),
                    Approval {
                        asked_at: record.seq,
                        call: call_id.clone(),
                        decided: None,
                    },
                );
                self.status = Status::AwaitingApproval;
            }
            Payload::ApprovalGiven(verdict) => {
                let Some(approval) = self.approvals.get_mut(&verdict.call_id) else {
                    return Err(refuse(format!(
                        "no approval was asked for call {}",
                        verdict.call_id
                    )));
                };
                if approval.decided.is_some() {
                    return Err(refuse(format!(
                        "call {} was decided already",
                        verdict.call_id
                    )));
                }
                approval.decided = Some((record.seq, verdict.clone()));
                self.status = self.resting_status();
            }
            Payload::Compaction(JournaledCompaction {
                compaction,
                through_step,
            }) => {
                if let Some(usage) = &compaction.usage {
                    self.charge(usage, pricing);
                }
                self.used.compactions += 1;
                self.compacted_through = *through_step;
            }
            Payload::Error(ModelFailure {
                error, retry_in_ms, ..
            }) => {
                if retry_in_ms.is_none() {
                    self.error = Some(error.clone());
                    self.status = Status::Failed;
                }
            }
            Payload::BudgetEvent(BudgetEvent::Warning { .. }) => {}
            Payload::BudgetEvent(BudgetEvent::Exhausted { exhausted, .. }) => {
                self.budget_exhausted = Some(*exhausted);
                self.status = Status::BudgetExhausted;
            }
            Payload::UserMessage(Input { .. }) => {
                self.status = self.resting_status();
            }
            Payload::Control(Control { action }) => {
                self.paused = *action == ControlAction::Pause;
                self.status = self.resting_status();
            }
            Payload::Forked(forked) => self.forks.push(forked.clone()),
            Payload::RepeatedFailure(RepeatedFailure {
                call_id,
                tool,
                count,
                limit: _,
            }) => {
                // It follows the failure it is about, and says the count
                // the records give.
                let last = self.failures.last();
                if last != Some((call_id.as_str(), tool.as_str(), *count)) || *count < 2 {
                    return Err(refuse(format!(
                        "it says call {call_id} ({tool}) failed so {count} times, but the records say {}",
                        match last {
                            Some((id, tool, n)) =>
                                format!("call {id} ({tool}) failed last, {n} times"),
                            None => "no call failed".to_owned(),
                        }
                    )));
                }
            }
            Payload::ChildStarted(started) => {
                if self.children.contains_key(&started.child) {
                    return Err(refuse(format!(
                        "child {} was started already",
                        started.child
                    )));
                }
                // Reserved: spent, as far as the parent's budgets go, until
                // the child ends.
                self.used.add(&started.reserved);
                self.children.insert(
                    started.child,
                    Child {
                        started_at: record.seq,
                        started: started.clone(),
                        ended: None,
                    },
                );
            }
            Payload::ChildEnded(ended) => {
                let Some(child) = self.children.get_mut(&ended.child) else {
                    return Err(refuse(format!("child {} was never started", ended.child)));
                };
                if child.ended.is_some() {
                    return Err(refuse(format!("child {} ended already", ended.child)));
                }
                self.used.take(&child.started.reserved);
                self.used.add(&ended.spent);
                child.ended = Some(ended.clone());
            }
            Payload::TrajectoryChosen(chosen) => {
                let trajectories = self.created.as_ref().and_then(|c| c.trajectories);
                if trajectories.is_none() {
                    return Err(refuse("the session runs no trajectories".into()));
                }
                if self.chosen.is_some() {
                    return Err(refuse("a trajectory was chosen already".into()));
                }
                let child = self.children.get(&chosen.child);
                let index = child.and_then(|c| c.started.trajectory.as_ref().map(|t| t.index));
                if index != Some(chosen.index) {
                    return Err(refuse(format!(
                        "child {} is not the session's trajectory {}",
                        chosen.child, chosen.index
                    )));
                }
                if child.and_then(|c| c.ended.as_ref()).map(|e| e.status) != Some(Status::Completed)
                {
                    return Err(refuse(format!(
                        "trajectory {} has not completed",
                        chosen.index
                    )));
                }
                self.chosen = Some(chosen.clone());
            }
            Payload::ChangesApplied(applied) => {
                if !self.chosen.as_ref().is_some_and(|c| c.apply) {
                    return Err(refuse("no chosen changes were to be applied".into()));
                }
                if self.applied.is_some() {
                    return Err(refuse("the changes were applied already".into()));
                }
                self.applied = Some(applied.clone());
            }
            Payload::LeaseTaken(taken) => {
                taken.follows(self.writer.as_ref()).map_err(refuse)?;
                self.writer = Some(taken.clone());
            }
            Payload::SessionEnded(SessionEnded { status, answer }) => {
                self.status = match status {
                    EndStatus::Completed => Status::Completed,
                    EndStatus::Cancelled => Status::Cancelled,
                    EndStatus::Stuck => Status::Stuck,
                };
                self.answer = answer.clone();
                self.pending.clear();
            }
        }
        self.records += 1;
        self.head = Some(record.hash);
        self.last_unix_millis = record.unix_millis;
        Ok(())
    }

    /// The status of a session that is not ended, from what stops it.
    fn resting_status(&self) -> Status {
        if self.paused {
            Status::Paused
        } else if self.awaiting_approval().is_some() {
            Status::AwaitingApproval
        } else {
            Status::Running
        }
    }

    fn charge(&mut self, usage: &Usage, pricing: &mut dyn Pricing) {
        self.used.input_tokens += usage.input_tokens;
        self.used.output_tokens += usage.output_tokens;
        self.used.cached_input_tokens += usage.cached_input_tokens;
        self.used.reasoning_tokens += usage.reasoning_tokens;
        let model = self.created.as_ref().map_or("", |c| c.model.as_str());
        self.used.cost_usd += pricing.cost_usd(&self.policy_text, model, usage);
    }
}

/// Decode a record's payload, naming the record when it does not decode.
pub fn decode(record: &Record) -> Result<Payload, StateError> {
    Payload::decode(record.kind, &record.payload).map_err(|source| StateError::Payload {
        session: record.session,
        seq: record.seq,
        source,
    })
}

/// A consumer of records with a method per kind, each given the record and
/// its decoded payload. Every method must be written: a new record kind
/// makes every visitor name what it does with it.
pub trait Visitor {
    type Error: From<StateError>;

    fn session_created(&mut self, r: &Record, p: &SessionCreated) -> Result<(), Self::Error>;
    fn model_request(&mut self, r: &Record, p: &NewMessages) -> Result<(), Self::Error>;
    fn model_response(&mut self, r: &Record, p: &ModelResponse) -> Result<(), Self::Error>;
    fn tool_intent(&mut self, r: &Record, p: &ToolIntent) -> Result<(), Self::Error>;
    fn tool_result(&mut self, r: &Record, p: &ToolResult) -> Result<(), Self::Error>;
    fn policy_decision(&mut self, r: &Record, p: &Refusal) -> Result<(), Self::Error>;
    fn budget_event(&mut self, r: &Record, p: &BudgetEvent) -> Result<(), Self::Error>;
    fn approval_asked(&mut self, r: &Record, p: &Refusal) -> Result<(), Self::Error>;
    fn approval_given(&mut self, r: &Record, p: &Verdict) -> Result<(), Self::Error>;
    fn compaction(&mut self, r: &Record, p: &JournaledCompaction) -> Result<(), Self::Error>;
    fn error(&mut self, r: &Record, p: &ModelFailure) -> Result<(), Self::Error>;
    fn session_ended(&mut self, r: &Record, p: &SessionEnded) -> Result<(), Self::Error>;
    fn user_message(&mut self, r: &Record, p: &Input) -> Result<(), Self::Error>;
    fn control(&mut self, r: &Record, p: &Control) -> Result<(), Self::Error>;
    fn forked(&mut self, r: &Record, p: &Forked) -> Result<(), Self::Error>;
    fn policy_changed(&mut self, r: &Record, p: &PolicyChanged) -> Result<(), Self::Error>;
    fn repeated_failure(&mut self, r: &Record, p: &RepeatedFailure) -> Result<(), Self::Error>;
    fn lease_taken(&mut self, r: &Record, p: &LeaseTaken) -> Result<(), Self::Error>;
    fn child_started(&mut self, r: &Record, p: &ChildStarted) -> Result<(), Self::Error>;
    fn child_ended(&mut self, r: &Record, p: &ChildEnded) -> Result<(), Self::Error>;
    fn trajectory_chosen(&mut self, r: &Record, p: &TrajectoryChosen) -> Result<(), Self::Error>;
    fn changes_applied(&mut self, r: &Record, p: &ChangesApplied) -> Result<(), Self::Error>;
}

/// Hand `record` to the method of `visitor` for its kind.
pub fn visit<V: Visitor>(visitor: &mut V, record: &Record) -> Result<(), V::Error> {
    let r = record;
    match &decode(record)? {
        Payload::SessionCreated(p) => visitor.session_created(r, p),
        Payload::ModelRequest(p) => visitor.model_request(r, p),
        Payload::ModelResponse(p) => visitor.model_response(r, p),
        Payload::ToolIntent(p) => visitor.tool_intent(r, p),
        Payload::ToolResult(p) => visitor.tool_result(r, p),
        Payload::PolicyDecision(p) => visitor.policy_decision(r, p),
        Payload::BudgetEvent(p) => visitor.budget_event(r, p),
        Payload::ApprovalAsked(p) => visitor.approval_asked(r, p),
        Payload::ApprovalGiven(p) => visitor.approval_given(r, p),
        Payload::Compaction(p) => visitor.compaction(r, p),
        Payload::Error(p) => visitor.error(r, p),
        Payload::SessionEnded(p) => visitor.session_ended(r, p),
        Payload::UserMessage(p) => visitor.user_message(r, p),
        Payload::Control(p) => visitor.control(r, p),
        Payload::Forked(p) => visitor.forked(r, p),
        Payload::PolicyChanged(p) => visitor.policy_changed(r, p),
        Payload::RepeatedFailure(p) => visitor.repeated_failure(r, p),
        Payload::LeaseTaken(p) => visitor.lease_taken(r, p),
        Payload::ChildStarted(p) => visitor.child_started(r, p),
        Payload::ChildEnded(p) => visitor.child_ended(r, p),
        Payload::TrajectoryChosen(p) => visitor.trajectory_chosen(r, p),
        Payload::ChangesApplied(p) => visitor.changes_applied(r, p),
    }
}
