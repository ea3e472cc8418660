//! longrun's step journal: what happened in each agent session, as a
//! hash-chained sequence of records, kept durable on a [`Store`] and
//! checked on every read that matters.
//!
//! - [`record`]: the on-disk record format and the hash chain;
//! - [`store`]: the storage interface, with [`SegmentStore`] (the embedded
//!   default), [`SledStore`], [`PostgresStore`] and [`MemoryStore`];
//! - [`copy`]: a journal copied from one store to another, verified;
//! - [`heads`]: each session's acknowledged head, kept outside the store so
//!   that a store that loses its tail is caught ([`Loss`]);
//! - [`Journal`]: sessions, writers, group commit, durable-only readers and
//!   verification;
//! - [`payload`]: what each record kind says, typed;
//! - [`state`]: a session's status, usage and cost folded from its records
//!   ([`SessionState`]), and [`Visitor`] for consumers that need more.
//!
//! This crate depends on neither the sandbox (wasmtime) nor the local model
//! (mistral.rs): auditors and store implementations build it alone.

pub mod copy;
pub mod heads;
mod journal;
pub mod payload;
pub mod record;
pub mod state;
pub mod store;
pub mod tree;

pub use heads::Head;
pub use journal::{
    CLOSE_DEADLINE, Journal, JournalError, JournalOptions, Lessee, Location, Loss, SessionWriter,
    VerifyError,
};
pub use record::{Appended, Hash, Record, RecordKind, SessionId, hex, parse_hex};
pub use state::{
    Pricing, RepeatedFailures, SessionState, StateError, Status, Unpriced, Visitor, visit,
};
pub use store::memory::MemoryStore;
pub use store::postgres::PostgresStore;
pub use store::segments::SegmentStore;
pub use store::sled::{SET_ASIDE_PREFIX, SledStore, open_storage};
pub use store::{Acquired, CommitListener, Fenced, Lease, Store, StoreError, Synced};
