//! The sessions a server runs: one task per session drives the agent loop,
//! steered by the API through the session's [`Steering`], and keeps a
//! summary (status, usage, the call that waits for approval) that the API
//! reads without touching the journal.
//!
//! The journal stays the truth: a session's tenant, policy, model and
//! budgets are labels of its first record, so a restarted server finds its
//! sessions again ([`load`]) and resumes the unfinished ones.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use longrun_host::agent::{AgentError, Resumed, Session, SessionCreated, SessionStatus};
use longrun_host::budget::Usage;
use longrun_host::journal::{
    Acquired, Fenced, Journal, JournalError, SessionId, SessionState, StateError,
};
use longrun_host::model::{Model, ToolCall};
use longrun_host::policy::{HumanDuration, NonNegative, Policy, RecordedPrices, SessionBudgets};
use longrun_host::steer::{Steering, Wanted};
use serde::{Deserialize, Serialize};

use crate::Shared;
use crate::problem::{ApiError, Problem};
use longrun_host::journal::payload::SteeringRequest;

/// Where a session stands, as the API reports it: the journal's one
/// status, which the restart scan folds from the records.
pub use longrun_host::journal::Status;

/// A call that waits for a person's decision.
#[derive(Debug, Clone, Serialize)]
pub struct Awaiting {
    /// The sequence number of the journal's `approval_asked` record: the
    /// `{step}` of the approvals endpoint.
    pub step: u64,
    pub call_id: String,
    pub tool: String,
    pub arguments: String,
}

/// Budgets a request may ask for; each can only tighten the policy's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budgets {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tool_calls: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_input_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wall_time_secs: Option<u64>,
}

impl Budgets {
    /// The budgets in force: for each, the smaller of the policy's and the
    /// request's.
    pub fn tighten(&self, policy: &SessionBudgets) -> SessionBudgets {
        fn min<T: PartialOrd + Copy>(a: Option<T>, b: Option<T>) -> Option<T> {
            match (a, b) {
                (Some(a), Some(b)) => Some(if b < a { b } else { a }),
                (a, b) => a.or(b),
            }
        }
        SessionBudgets {
            max_steps: min(policy.max_steps, self.max_steps),
            max_tool_calls: min(policy.max_tool_calls, self.max_tool_calls),
            max_input_tokens: min(policy.max_input_tokens, self.max_input_tokens),
            max_output_tokens: min(policy.max_output_tokens, self.max_output_tokens),
            max_cost_usd: min(policy.max_cost_usd.map(|c| c.0), self.max_cost_usd).map(NonNegative),
            max_wall_time: min(
                policy.max_wall_time.map(|t| t.0),
                self.max_wall_time_secs.map(std::time::Duration::from_secs),
            )
            .map(HumanDuration),
            max_repeated_failures: policy.max_repeated_failures,
        }
    }

    /// The budgets in force, as the API shows them.
    pub fn of(budgets: &SessionBudgets) -> Budgets {
        Budgets {
            max_steps: budgets.max_steps,
            max_tool_calls: budgets.max_tool_calls,
            max_input_tokens: budgets.max_input_tokens,
            max_output_tokens: budgets.max_output_tokens,
            max_cost_usd: budgets.max_cost_usd.map(|c| c.0),
            max_wall_time_secs: budgets.max_wall_time.map(|t| t.0.as_secs()),
        }
    }
}

/// What the API knows of a session without reading its journal.
#[derive(Debug, Clone)]
pub struct Summary {
    pub status: Status,
    pub usage: Usage,
    pub awaiting: Option<Awaiting>,
    pub answer: Option<String>,
    pub error: Option<String>,
    pub budget_exhausted: Option<String>,
}

/// One session of the server.
pub struct Entry {
    pub id: SessionId,
    pub tenant: String,
    pub goal: String,
    pub model: String,
    /// The policy's name, or `"inline"`.
    pub policy: String,
    pub created_unix_millis: u64,
    pub budgets: Budgets,
    pub steering: Arc<Steering>,
    summary: Mutex<Summary>,
    /// The host that runs the session, when it is not this one (hosts
    /// sharing a store): its summary is then read from the store.
    elsewhere: Mutex<Option<String>>,
}

impl Entry {
    pub fn summary(&self) -> Summary {
        self.lock().clone()
    }

    /// The host that runs the session, if another one does.
    pub fn elsewhere(&self) -> Option<String> {
        self.elsewhere
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn run_elsewhere(&self, host: Option<String>) {
        *self.elsewhere.lock().unwrap_or_else(|e| e.into_inner()) = host;
    }

    fn lock(&self) -> MutexGuard<'_, Summary> {
        // Plain data: valid after a panic of any holder.
        self.summary.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut Summary)) {
        f(&mut self.lock());
    }
}

/// The sessions by id.
#[derive(Default)]
pub struct Registry {
    sessions: RwLock<BTreeMap<SessionId, Arc<Entry>>>,
}

impl Registry {
    pub fn get(&self, id: SessionId) -> Option<Arc<Entry>> {
        self.sessions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
    }

    fn insert(&self, entry: Arc<Entry>) {
        self.sessions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(entry.id, entry);
    }

    /// Every session, in id order.
    pub fn all(&self) -> Vec<Arc<Entry>> {
        self.sessions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

/// What a new or resumed session runs with.
pub struct Launch {
    pub tenant: String,
    pub goal: String,
    pub policy_name: String,
    pub policy: Arc<Policy>,
    pub model_name: String,
    pub model: Arc<dyn Model>,
    pub budgets: Budgets,
    /// Heavy mode: how many trajectories a new session runs.
    pub trajectories: Option<u32>,
}

impl Launch {
    /// The labels of the session's first record: what a restarted server
    /// needs to find the session's owner and run it as it was asked.
    fn labels(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut labels = serde_json::Map::new();
        labels.insert("tenant".into(), self.tenant.clone().into());
        labels.insert("policy".into(), self.policy_name.clone().into());
        labels.insert("model".into(), self.model_name.clone().into());
        if let Ok(budgets) = serde_json::to_value(&self.budgets) {
            labels.insert("budgets".into(), budgets);
        }
        labels
    }

    fn entry(&self, id: SessionId, created_unix_millis: u64, steering: Arc<Steering>) -> Entry {
        Entry {
            id,
            tenant: self.tenant.clone(),
            goal: self.goal.clone(),
            model: self.model_name.clone(),
            policy: self.policy_name.clone(),
            created_unix_millis,
            budgets: Budgets::of(&self.policy.session),
            steering,
            summary: Mutex::new(Summary {
                status: Status::Running,
                usage: Usage::default(),
                awaiting: None,
                answer: None,
                error: None,
                budget_exhausted: None,
            }),
            elsewhere: Mutex::new(None),
        }
    }
}

/// Start a new session: its first record is durable when this returns.
pub async fn create(shared: &Arc<Shared>, launch: Launch) -> Result<Arc<Entry>, String> {
    let (reply, created) = tokio::sync::oneshot::channel();
    let task_shared = shared.clone();
    shared.spawn(async move {
        let shared = task_shared;
        let journal = shared.journal.clone();
        let toolbox = shared.toolbox.clone();
        let (policy, model) = (launch.policy.clone(), launch.model.clone());
        let session = Session::start_labelled(
            &journal,
            &toolbox,
            &policy,
            &*model,
            shared.agent.clone(),
            &launch.goal,
            launch.labels(),
            launch.trajectories,
        )
        .await;
        let mut session = match session {
            Ok(session) => session,
            Err(e) => {
                let _ = reply.send(Err(e.to_string()));
                return;
            }
        };
        if policy.children.is_some() {
            session.with_workers(shared.workers(&model));
        }
        let entry = Arc::new(launch.entry(session.id(), unix_millis(), Steering::new()));
        shared.sessions.insert(entry.clone());
        let _ = reply.send(Ok(entry.clone()));
        drive(&shared, &entry, session).await;
    });
    created
        .await
        .map_err(|_| "the session's task ended before it started".to_owned())?
}

/// Resume an unfinished session found in the journal.
fn resume(shared: &Arc<Shared>, entry: Arc<Entry>, launch: Launch) {
    let task_shared = shared.clone();
    shared.spawn(async move {
        let shared = task_shared;
        let journal = shared.journal.clone();
        let toolbox = shared.toolbox.clone();
        let (policy, model) = (launch.policy.clone(), launch.model.clone());
        let resumed = Session::resume(
            &journal,
            entry.id,
            &toolbox,
            &policy,
            &*model,
            shared.agent.clone(),
        )
        .await;
        match resumed {
            Ok(Resumed::Session(mut session)) => {
                if policy.children.is_some() {
                    session.with_workers(shared.workers(&model));
                }
                drive(&shared, &entry, *session).await
            }
            Ok(Resumed::Ended) => {
                entry.update(|s| s.status = Status::Completed);
                retire_lease(&shared, entry.id);
            }
            Err(e) => match fenced_by(&e) {
                Some(fenced) => taken_over(&entry, fenced),
                None => entry.update(|s| {
                    s.status = Status::Failed;
                    s.error = Some(e.to_string());
                }),
            },
        }
    });
}

/// Run a session until it ends, the server halts it, or it fails; while it
/// is paused or waits for approval, sleep until the API steers it.
async fn drive(shared: &Shared, entry: &Arc<Entry>, mut session: Session<'_>) {
    session.steer_by(entry.steering.clone());
    if session.paused_by_person() {
        entry.steering.want(Wanted::Pause);
    }
    let progress = entry.clone();
    session.on_step(move |p| progress.update(|s| s.usage = p.usage.clone()));
    let mut changes = entry.steering.subscribe();
    loop {
        entry.update(|s| {
            s.status = Status::Running;
            s.awaiting = None;
            s.budget_exhausted = None;
        });
        let outcome = session.run().await;
        let usage = session.ledger().used.clone();
        let status = match outcome {
            Ok(SessionStatus::Completed { answer }) => {
                entry.update(|s| s.answer = Some(answer));
                Status::Completed
            }
            Ok(SessionStatus::Cancelled) => Status::Cancelled,
            Ok(SessionStatus::Stuck { .. }) => Status::Stuck,
            Ok(SessionStatus::Halted) => return,
            Ok(SessionStatus::Paused) => Status::Paused,
            Ok(SessionStatus::AwaitingApproval { call }) => {
                let awaiting = approval_step(&shared.journal, entry.id, &call);
                entry.update(|s| s.awaiting = awaiting);
                Status::AwaitingApproval
            }
            Ok(SessionStatus::BudgetExhausted(e)) => {
                entry.update(|s| s.budget_exhausted = Some(e.to_string()));
                Status::BudgetExhausted
            }
            Err(e) => {
                if let Some(fenced) = fenced_by(&e) {
                    return taken_over(entry, fenced);
                }
                tracing::warn!(session = entry.id, "session failed: {e}");
                entry.update(|s| s.error = Some(e.to_string()));
                Status::Failed
            }
        };
        entry.update(|s| {
            s.status = status;
            s.usage = usage;
        });
        if status.ended() {
            retire_lease(shared, entry.id);
            return;
        }
        if status == Status::Failed {
            return;
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// Hand `request` to the session: here, if this host runs it; otherwise
/// left in the store for the host that does, which takes it at its next
/// lease round. Either way it is accepted, not yet journaled: the session
/// journals it at its next step boundary.
pub fn steer(shared: &Shared, entry: &Entry, request: SteeringRequest) -> Result<(), ApiError> {
    if entry.elsewhere().is_none() {
        apply(entry, request);
        return Ok(());
    }
    shared
        .journal
        .post_request(entry.id, &request)
        .map_err(|e| {
            Problem::Unavailable.with(format!(
                "session {} runs on another host, and the request could not be left for it: {e}",
                entry.id
            ))
        })
}

/// Hand a request to a session this host runs.
pub(crate) fn apply(entry: &Entry, request: SteeringRequest) {
    match request {
        SteeringRequest::Message(input) => entry.steering.say(input),
        SteeringRequest::Decision(verdict) => entry.steering.decide(verdict),
        SteeringRequest::Pause => entry.steering.want(Wanted::Pause),
        SteeringRequest::Resume => {
            if entry.steering.wanted() == Wanted::Pause {
                entry.steering.want(Wanted::Run);
            }
        }
        SteeringRequest::Cancel => entry.steering.want(Wanted::Cancel),
    }
}

/// The host that took the session over, if `error` is this host's writer
/// being refused for that.
fn fenced_by(error: &AgentError) -> Option<&Fenced> {
    match error {
        AgentError::Journal(JournalError::Fenced(fenced)) => Some(fenced),
        _ => None,
    }
}

/// Another host took the session over: this host stops running it and
/// reads it from the store from now on.
pub(crate) fn taken_over(entry: &Entry, fenced: &Fenced) {
    tracing::warn!(
        session = entry.id,
        "stopped here: {fenced}; {} runs it now",
        fenced.owner
    );
    entry.run_elsewhere(Some(fenced.owner.clone()));
}

/// An ended session is nobody's to run again: its lease, if it has one,
/// never lapses now.
fn retire_lease(shared: &Shared, session: SessionId) {
    if let Err(e) = shared.journal.retire_lease(session) {
        tracing::warn!(session, "retiring the lease: {e}");
    }
}

/// The `approval_asked` record of `call`, as the session's state holds it
/// (the same reading as for a session another host runs: [`awaiting`]).
fn approval_step(journal: &Journal, session: SessionId, call: &ToolCall) -> Option<Awaiting> {
    let state = SessionState::fold(journal, session, &mut longrun_host::journal::Unpriced).ok()?;
    awaiting(&state).filter(|a| a.call_id == call.id)
}

/// Find the server's sessions in the journal (those with a tenant label),
/// register them, and resume the unfinished ones (sharing a store: those
/// whose lease this host can take).
pub fn load(shared: &Arc<Shared>) -> Result<usize, longrun_host::journal::JournalError> {
    let mut resumed = 0;
    for id in shared.journal.sessions()? {
        if adopt(shared, id) {
            resumed += 1;
        }
    }
    Ok(resumed)
}

/// Register session `id` of the journal if it is one of a server's, and
/// resume it if it is unfinished and, on a shared store, this host can
/// take its lease (otherwise it is registered as run elsewhere). Returns
/// whether it was resumed.
pub(crate) fn adopt(shared: &Arc<Shared>, id: SessionId) -> bool {
    let found = match scan(&shared.journal, id) {
        Ok(Some(found)) => found,
        Ok(None) => return false,
        Err(e) => {
            tracing::error!(session = id, "not resumed: {e}");
            return false;
        }
    };
    if let Some(loss) = shared.journal.loss(id) {
        let why = format!("{loss}: not resumed automatically (see `longrun replay verify`)");
        register_broken(shared, id, &found, why);
        return false;
    }
    let clustered = shared.journal.lessee().is_some();
    // An ended session whose host stopped before retiring its lease: retired
    // here, so that no host looks at it again.
    if found.ended.is_some()
        && clustered
        && let Ok(Acquired::Taken(_)) = shared.journal.take_over(id)
    {
        retire_lease(shared, id);
    }
    if found.ended.is_none() && clustered {
        match shared.journal.take_over(id) {
            Ok(Acquired::Taken(_)) => {}
            Ok(Acquired::HeldBy(lease)) => {
                register_elsewhere(shared, id, &found, lease.owner);
                return false;
            }
            Err(e) => {
                tracing::warn!(session = id, "taking the lease: {e}");
                register_elsewhere(shared, id, &found, "unknown".to_owned());
                return false;
            }
        }
    }
    let policy = match shared.recorded_policy(&found) {
        Ok(policy) => policy,
        Err(e) => {
            register_broken(shared, id, &found, e);
            return false;
        }
    };
    let Some(model) = shared.models.get(&found.model_name).cloned() else {
        let why = format!("model {:?} is not configured", found.model_name);
        register_broken(shared, id, &found, why);
        return false;
    };
    let launch = Launch {
        tenant: found.tenant.clone(),
        goal: found.created.goal.clone(),
        policy_name: found.policy_name.clone(),
        policy: Arc::new(policy),
        model_name: found.model_name.clone(),
        model,
        budgets: found.budgets.clone(),
        trajectories: found.created.trajectories,
    };
    let entry = Arc::new(launch.entry(id, found.created_unix_millis, Steering::new()));
    entry.update(|s| s.usage = found.usage.clone());
    shared.sessions.insert(entry.clone());
    match found.ended {
        Some((status, answer)) => {
            entry.update(|s| {
                s.status = status;
                s.answer = answer;
            });
            false
        }
        None => {
            resume(shared, entry, launch);
            true
        }
    }
}

/// Register session `id` (if it is one of a server's) as run by another
/// host, or refresh what this host knows of it: a request names a session
/// another host started or took over.
pub(crate) fn discover(shared: &Shared, id: SessionId) -> Option<Arc<Entry>> {
    if let Some(entry) = shared.sessions.get(id)
        && entry.elsewhere().is_none()
    {
        return Some(entry);
    }
    if shared.journal.lessee().is_none() {
        return shared.sessions.get(id);
    }
    let found = match scan(&shared.journal, id) {
        Ok(Some(found)) => found,
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!(session = id, "reading a session run elsewhere: {e}");
            return shared.sessions.get(id);
        }
    };
    let owner = match shared.journal.lease(id) {
        Ok(Some(lease)) => lease.owner,
        _ => "unknown".to_owned(),
    };
    // Taken over by this host between the lookup and now: keep its entry.
    if let Some(entry) = shared.sessions.get(id)
        && entry.elsewhere().is_none()
    {
        return Some(entry);
    }
    Some(register_elsewhere(shared, id, &found, owner))
}

/// Every session of the store, registered: those of other hosts too.
pub(crate) fn discover_all(shared: &Shared) {
    if shared.journal.lessee().is_none() {
        return;
    }
    match shared.journal.sessions() {
        Ok(ids) => {
            for id in ids {
                if shared.sessions.get(id).is_none() {
                    discover(shared, id);
                }
            }
        }
        Err(e) => tracing::warn!("listing the store's sessions: {e}"),
    }
}

/// A session another host runs, as the store shows it now.
fn register_elsewhere(shared: &Shared, id: SessionId, found: &Found, owner: String) -> Arc<Entry> {
    let summary = Summary {
        status: found.status,
        usage: found.usage.clone(),
        awaiting: found.awaiting.clone(),
        answer: found.answer.clone(),
        error: found.error.clone(),
        budget_exhausted: None,
    };
    let entry = Arc::new(found_entry(id, found, summary, Some(owner)));
    shared.sessions.insert(entry.clone());
    entry
}

/// A session of this server whose policy or model can no longer be set up:
/// listed as failed, with why.
fn register_broken(shared: &Shared, id: SessionId, found: &Found, why: String) {
    let (status, answer) = found.ended.clone().unwrap_or((Status::Failed, None));
    let summary = Summary {
        status,
        usage: found.usage.clone(),
        awaiting: None,
        answer,
        error: (status == Status::Failed).then_some(why),
        budget_exhausted: None,
    };
    shared
        .sessions
        .insert(Arc::new(found_entry(id, found, summary, None)));
}

/// The entry of a session found in the journal that this host does not
/// run: as `summary` says, run by `elsewhere` (or nobody).
fn found_entry(id: SessionId, found: &Found, summary: Summary, elsewhere: Option<String>) -> Entry {
    Entry {
        id,
        tenant: found.tenant.clone(),
        goal: found.created.goal.clone(),
        model: found.model_name.clone(),
        policy: found.policy_name.clone(),
        created_unix_millis: found.created_unix_millis,
        budgets: found.budgets.clone(),
        steering: Steering::new(),
        summary: Mutex::new(summary),
        elsewhere: Mutex::new(elsewhere),
    }
}

/// What the journal says of one of the server's sessions.
pub struct Found {
    pub created: SessionCreated,
    pub created_unix_millis: u64,
    pub tenant: String,
    pub policy_name: String,
    pub model_name: String,
    pub budgets: Budgets,
    pub usage: Usage,
    pub ended: Option<(Status, Option<String>)>,
    /// Where it stands now, its answer and its error (a session another
    /// host runs is shown as these say).
    pub status: Status,
    pub answer: Option<String>,
    pub error: Option<String>,
    pub awaiting: Option<Awaiting>,
}

/// What the journal says of session `id`, if it is one of a server's
/// (it has a tenant label and is not a fork): folded by [`SessionState`],
/// so status, usage and cost are what every other reader finds.
fn scan(journal: &Journal, id: SessionId) -> Result<Option<Found>, StateError> {
    let state = SessionState::fold(journal, id, &mut RecordedPrices::default())?;
    let Some(created) = state.created.as_deref() else {
        return Ok(None);
    };
    // A fork belongs to the replay command that made it, not to a tenant.
    if created.parent.is_some() {
        return Ok(None);
    }
    let label = |name: &str| {
        created
            .labels
            .get(name)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    let Some(tenant) = label("tenant") else {
        return Ok(None);
    };
    let budgets = created
        .labels
        .get("budgets")
        .and_then(|b| serde_json::from_value(b.clone()).ok())
        .unwrap_or_default();
    Ok(Some(Found {
        created_unix_millis: state.created_unix_millis,
        tenant,
        policy_name: label("policy").unwrap_or_else(|| "inline".into()),
        model_name: label("model").unwrap_or_default(),
        budgets,
        usage: Usage::from(&state.used),
        ended: state
            .status
            .ended()
            .then(|| (state.status, state.answer.clone())),
        status: state.status,
        answer: state.answer.clone(),
        error: state.error.clone(),
        awaiting: awaiting(&state),
        created: created.clone(),
    }))
}

/// The call that waits for a person's decision, as the records say.
fn awaiting(state: &SessionState) -> Option<Awaiting> {
    if state.status != Status::AwaitingApproval {
        return None;
    }
    let approval = state.approvals.values().find(|a| a.decided.is_none())?;
    let call = state.pending.iter().find(|c| c.id == approval.call)?;
    Some(Awaiting {
        step: approval.asked_at,
        call_id: call.id.clone(),
        tool: call.name.clone(),
        arguments: call.arguments.clone(),
    })
}

pub fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
