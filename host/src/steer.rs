//! Steering a session from outside the task that runs it: a person's
//! messages for the model, pause, resume, cancel, and decisions on calls
//! that wait for approval.
//!
//! A [`Steering`] is shared between the session (see
//! [`Session::steer_by`](crate::agent::Session::steer_by)) and whoever
//! steers it (the HTTP API). What is asked is taken by the session at its
//! step boundaries and journaled there; a cancel also cuts a model call
//! short. Each change bumps a version that [`Steering::changed`] waits on, so
//! a driver that sleeps while its session is paused wakes for the next one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// What the steering side wants of the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Wanted {
    #[default]
    Run,
    Pause,
    Cancel,
}

pub use longrun_journal::payload::{Control, ControlAction, Input, Verdict};

/// What the session took at a step boundary.
#[derive(Debug, Default)]
pub(crate) struct Taken {
    pub inputs: Vec<Input>,
    pub verdicts: Vec<Verdict>,
    pub wanted: Wanted,
    pub halted: bool,
}

#[derive(Default)]
struct State {
    inputs: Vec<Input>,
    verdicts: HashMap<String, Verdict>,
    wanted: Wanted,
    halted: bool,
}

/// The shared steering handle of one session.
pub struct Steering {
    state: Mutex<State>,
    version: tokio::sync::watch::Sender<u64>,
}

impl Steering {
    pub fn new() -> Arc<Steering> {
        Arc::new(Steering {
            state: Mutex::new(State::default()),
            version: tokio::sync::watch::channel(0).0,
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state is plain data, valid after any panic of a holder.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    /// Queue a message for the model.
    pub fn say(&self, input: Input) {
        self.state().inputs.push(input);
        self.bump();
    }

    /// Decide a call that waits for approval.
    pub fn decide(&self, verdict: Verdict) {
        self.state()
            .verdicts
            .insert(verdict.call_id.clone(), verdict);
        self.bump();
    }

    /// Ask for a pause, a resume or a cancel. A cancel is final.
    pub fn want(&self, wanted: Wanted) {
        let mut state = self.state();
        if state.wanted != Wanted::Cancel {
            state.wanted = wanted;
        }
        drop(state);
        self.bump();
    }

    pub fn wanted(&self) -> Wanted {
        self.state().wanted
    }

    /// Ask the session to stop where it is, journaling nothing: the host
    /// is shutting down and resumes the session from its journal later. A
    /// model call in flight is dropped (its answer was not journaled, so it
    /// is asked again); a tool call in flight finishes first.
    pub fn halt(&self) {
        self.state().halted = true;
        self.bump();
    }

    /// A receiver that sees each change from now on.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Wait until a cancel or a halt is asked (returns at once if one was).
    pub async fn interrupted(&self) {
        let mut changes = self.subscribe();
        while !self.is_interrupted() {
            if changes.changed().await.is_err() {
                // The sender lives in `self`, so this cannot happen; never
                // return a false cancel.
                std::future::pending::<()>().await;
            }
        }
    }

    fn is_interrupted(&self) -> bool {
        let state = self.state();
        state.halted || state.wanted == Wanted::Cancel
    }

    /// What was asked since the last take; messages only `with_inputs`.
    pub(crate) fn take(&self, with_inputs: bool) -> Taken {
        let mut state = self.state();
        Taken {
            inputs: if with_inputs {
                std::mem::take(&mut state.inputs)
            } else {
                Vec::new()
            },
            verdicts: state.verdicts.drain().map(|(_, v)| v).collect(),
            wanted: state.wanted,
            halted: state.halted,
        }
    }
}
