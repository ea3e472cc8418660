//! The longrun host library.
//!
//! - [`agent`]: the agent loop over the model, the sandbox and the journal.
//! - [`policy`]: operators' policy files, parsed strictly.
//! - [`narrow`]: whether a child session's policy narrows its parent's.
//! - [`children`]: child sessions, started and collected by host tools.
//! - [`budget`]: session budgets, checked before each action.
//! - [`sandbox`]: tool components run by wasmtime, one fresh instance per
//!   call, under a policy's mounts, network allow-list and limits.
//! - [`netgate`]: the check every outgoing HTTP request of a tool passes.
//! - [`journal`]: the hash-chained step journal (the `longrun-journal` crate).
//! - [`snapshot`]: the mounts' files at a session's start, kept in the
//!   journal for auditors.
//! - [`model`]: the model interface of the agent loop, and the scripted model.
//! - [`context`]: keeping a long session's context under its token limit.
//! - [`fetch`]: the default local model's file, cached once.
//! - [`openai`]: the OpenAI-compatible model backend (Kimi K2.6 and others).
//! - [`steer`]: a person's messages, pauses, cancels and approvals.
//! - [`process`]: process-wide settings made once at start.
//! - [`tooldir`]: where the built-in tool components are found.
//! - [`trajectories`]: heavy mode: N trajectories on one goal, their
//!   workspace copies, the comparison, and applying the chosen changes.

pub mod agent;
pub mod budget;
mod capture;
pub mod children;
pub mod context;
pub mod fetch;
pub mod model;
pub mod mount;
pub mod narrow;
pub mod netgate;
pub mod openai;
pub mod policy;
pub mod process;
pub mod sandbox;
pub mod snapshot;
pub mod steer;
pub mod tooldir;
pub mod trajectories;

pub use longrun_journal as journal;

pub use policy::{Policy, PolicyError};
pub use sandbox::{CallError, CallReport, CallRequest, Sandbox, SandboxConfig, Toolbox};
