//! Child sessions: a session whose policy has `[children]` may start
//! sessions of its own, each on a model the policy lists and under a
//! narrowing of its policy ([`crate::narrow`]), through two host tools:
//! `start_child` (returns at once with the child's id) and
//! `wait_children` (waits for children to end, and returns their answers).
//!
//! A child is a session in the same journal with its own hash chain. The
//! parent's `child_started` record is durable before the child's first
//! record, and the child's first record names it back, so a parent resumed
//! after a crash finds every child it started and starts none twice (a
//! child whose first record was never written is started then, under the
//! policy the parent recorded for it). Budgets roll up: what a parent
//! reserves for a child counts as spent by the parent until the child
//! ends, and then what the child spent does (`child_ended`).

use std::collections::BTreeMap;
use std::sync::Arc;

use longrun_journal::payload::{SpawnedBy, Spent};
use serde::Deserialize;

use crate::agent::{AgentConfig, AgentError, Resumed, Session, SessionStatus};
use crate::budget::Usage;
use crate::journal::{Journal, SessionId, Status};
use crate::model::{Model, ToolDef};
use crate::narrow::{ChildBudgets, ChildMount, ChildRequest};
use crate::policy::Policy;
use crate::sandbox::Toolbox;

pub const START_CHILD: &str = "start_child";
pub const WAIT_CHILDREN: &str = "wait_children";

/// Whether `tool` is one of the host's children tools (answered by the
/// host, not run in the sandbox).
pub fn is_children_tool(tool: &str) -> bool {
    tool == START_CHILD || tool == WAIT_CHILDREN
}

/// What a session needs to start children: the journal and tools they
/// share with it, the models they may run on (by name), and the loop's
/// settings.
pub struct Workers {
    pub journal: Arc<Journal>,
    pub toolbox: Arc<Toolbox>,
    pub models: BTreeMap<String, Arc<dyn Model>>,
    pub config: AgentConfig,
}

/// The arguments of `start_child`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartChildArgs {
    pub goal: String,
    pub model: String,
    #[serde(default)]
    pub tools: Option<Vec<String>>,
    #[serde(default)]
    pub mounts: Option<Vec<ChildMount>>,
    #[serde(default)]
    pub budgets: ChildBudgets,
}

impl StartChildArgs {
    pub fn request(&self) -> ChildRequest {
        ChildRequest {
            tools: self.tools.clone(),
            mounts: self.mounts.clone(),
            budgets: self.budgets.clone(),
        }
    }
}

/// The arguments of `wait_children`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitArgs {
    /// The children to wait for; all that have not been collected when
    /// left out.
    #[serde(default)]
    pub children: Option<Vec<SessionId>>,
}

/// The definition of `start_child` that the model is given.
pub fn start_child_def(models: &[String]) -> ToolDef {
    ToolDef {
        name: START_CHILD.to_owned(),
        description: format!(
            "Start a child session that works on `goal` on its own, with its own context, \
             and return its id at once (collect its answer with {WAIT_CHILDREN}). `model` is one \
             of {models:?}. It may use only `tools` (patterns; default: yours), only `mounts` \
             (guest paths at or beneath yours; default: yours) and the `budgets` you give it, \
             out of yours (default: a share of what you have left)."
        ),
        parameters: serde_json::json!({
            "type": "object",
            "properties": {
                "goal": {"type": "string"},
                "model": {"type": "string", "enum": models},
                "tools": {"type": "array", "items": {"type": "string"}},
                "mounts": {"type": "array", "items": {
                    "type": "object",
                    "properties": {
                        "path": {"type": "string"},
                        "access": {"type": "string", "enum": ["read-only", "read-write"]}
                    },
                    "required": ["path", "access"]
                }},
                "budgets": {"type": "object", "properties": {
                    "max_steps": {"type": "integer", "minimum": 0},
                    "max_tool_calls": {"type": "integer", "minimum": 0},
                    "max_input_tokens": {"type": "integer", "minimum": 0},
                    "max_output_tokens": {"type": "integer", "minimum": 0},
                    "max_cost_usd": {"type": "number", "minimum": 0}
                }}
            },
            "required": ["goal", "model"]
        }),
    }
}

/// The definition of `wait_children` that the model is given.
pub fn wait_children_def() -> ToolDef {
    ToolDef {
        name: WAIT_CHILDREN.to_owned(),
        description: format!(
            "Wait until the children you started with {START_CHILD} (all not yet collected, or \
             those in `children`) end, and return each one's status and answer."
        ),
        parameters: serde_json::json!({
            "type": "object",
            "properties": {
                "children": {"type": "array", "items": {"type": "integer", "minimum": 0}}
            }
        }),
    }
}

/// How a child's run ended, as its parent records it.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub status: Status,
    pub answer: Option<String>,
    pub error: Option<String>,
    pub spent: Spent,
}

/// What a child spent, from its ledger.
pub fn spent(used: &Usage) -> Spent {
    Spent {
        steps: used.steps,
        tool_calls: used.tool_calls,
        input_tokens: used.input_tokens,
        output_tokens: used.output_tokens,
        cost_usd: used.cost_usd,
    }
}

/// A child to run: who it is, what it pursues, under what.
pub struct Child {
    pub id: SessionId,
    pub goal: String,
    pub model: String,
    pub policy: Policy,
    pub spawned_by: SpawnedBy,
    /// For a trajectory of a heavy-mode session: the copies it works in,
    /// made from the parent's snapshot before its first record.
    pub copies: Option<Copies>,
}

/// A trajectory's workspace copies and the parent's snapshot (the hex hash
/// of its manifest's blob) they are made from.
pub struct Copies {
    pub snapshot: String,
    pub copies: Vec<longrun_journal::payload::MountCopy>,
}

/// Run child `child` (start it, or resume it if its first record exists)
/// until it ends or stops, on a task of its own.
pub fn spawn(workers: Arc<Workers>, child: Child) -> tokio::task::JoinHandle<Outcome> {
    tokio::spawn(run(workers, child))
}

/// Boxed, so that a child that starts children of its own is a future of
/// a known type.
fn run(
    workers: Arc<Workers>,
    child: Child,
) -> std::pin::Pin<Box<dyn Future<Output = Outcome> + Send>> {
    Box::pin(async move {
        let failed = |e: AgentError| Outcome {
            status: Status::Failed,
            answer: None,
            error: Some(e.to_string()),
            spent: Spent::default(),
        };
        let Some(model) = workers.models.get(&child.model).cloned() else {
            return failed(AgentError::Inconsistent(format!(
                "no model {:?} for child {}",
                child.model, child.id
            )));
        };
        let (journal, toolbox, config) = (
            workers.journal.clone(),
            workers.toolbox.clone(),
            workers.config.clone(),
        );
        // On a store that hosts share, the child is leased like any
        // session: the host that runs its parent takes it.
        if journal.lessee().is_some()
            && journal.held_lease(child.id).is_none()
            && journal.records(child.id).next().is_some()
        {
            match journal.take_over(child.id) {
                Ok(crate::journal::Acquired::Taken(_)) => {}
                Ok(crate::journal::Acquired::HeldBy(lease)) => {
                    return failed(AgentError::Inconsistent(format!(
                        "child {} runs on host {}",
                        child.id, lease.owner
                    )));
                }
                Err(e) => return failed(e.into()),
            }
        }
        let started = match journal.records(child.id).next() {
            None => {
                // Made afresh each time the child is started: a start a
                // crash cut short may have left a copy half made.
                if let Some(copies) = &child.copies
                    && let Err(e) = crate::trajectories::restore_copies(
                        &journal,
                        &copies.snapshot,
                        &copies.copies,
                    )
                {
                    return failed(e.into());
                }
                Session::start_as_child(
                    &journal,
                    child.id,
                    &toolbox,
                    &child.policy,
                    &*model,
                    config,
                    &child.goal,
                    child.spawned_by.clone(),
                )
                .await
            }
            Some(_) => {
                match Session::resume(&journal, child.id, &toolbox, &child.policy, &*model, config)
                    .await
                {
                    Ok(Resumed::Session(session)) => Ok(*session),
                    Ok(Resumed::Ended) => return ended(&journal, child.id),
                    Err(e) => Err(e),
                }
            }
        };
        let mut session = match started {
            Ok(session) => session,
            Err(e) => return failed(e),
        };
        if child.policy.children.is_some() {
            session.with_workers(workers.clone());
        }
        let outcome = session.run().await;
        let spent = spent(&session.ledger().used);
        let (status, answer, error) = match outcome {
            Ok(SessionStatus::Completed { answer }) => (Status::Completed, Some(answer), None),
            Ok(SessionStatus::Cancelled) => (Status::Cancelled, None, None),
            Ok(SessionStatus::Stuck { error, .. }) => (Status::Stuck, None, Some(error)),
            Ok(SessionStatus::Paused | SessionStatus::Halted) => (Status::Paused, None, None),
            Ok(SessionStatus::AwaitingApproval { .. }) => (Status::AwaitingApproval, None, None),
            Ok(SessionStatus::BudgetExhausted(e)) => {
                (Status::BudgetExhausted, None, Some(e.to_string()))
            }
            Err(e) => (Status::Failed, None, Some(e.to_string())),
        };
        Outcome {
            status,
            answer,
            error,
            spent,
        }
    })
}

/// The outcome of a child that had ended before its parent came back to
/// it, as its records say.
fn ended(journal: &Journal, child: SessionId) -> Outcome {
    match crate::journal::SessionState::fold(
        journal,
        child,
        &mut crate::policy::RecordedPrices::default(),
    ) {
        Ok(state) => Outcome {
            status: state.status,
            answer: state.answer.clone(),
            error: state.error.clone(),
            spent: spent(&Usage::from(&state.used)),
        },
        Err(e) => Outcome {
            status: Status::Failed,
            answer: None,
            error: Some(e.to_string()),
            spent: Spent::default(),
        },
    }
}
