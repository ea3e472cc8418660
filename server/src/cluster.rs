//! Several `serve` hosts on one shared store ([`crate::config::Cluster`]).
//!
//! Each unfinished session is run by the one host that holds its lease.
//! This host renews the leases of the sessions it runs at a third of
//! their length; a session whose lease it lost (taken over while this host
//! was paused or cut off from the database) is stopped here, and its
//! writer refused, by the journal and by the store's fencing alike. Every
//! round it also looks for sessions whose lease lapsed (their host died)
//! and takes them over, resuming them under the usual rules: a call that
//! was in flight is "outcome unknown", never run twice.

use std::sync::Arc;
use std::time::Duration;

use longrun_host::journal::{Fenced, Lessee};

use crate::Shared;
use crate::config::Cluster;
use crate::sessions;

/// Lease this host's sessions to it (before any is created or resumed).
pub fn join(
    journal: &longrun_host::journal::Journal,
    cluster: &Cluster,
) -> Result<(), longrun_host::journal::JournalError> {
    journal.lease_as(Lessee {
        owner: cluster.host.clone(),
        ttl: cluster.lease,
    })
}

/// Keep this host's leases and take over lapsed ones, until the server
/// shuts down.
pub async fn keep(shared: Arc<Shared>, cluster: Cluster) {
    let round = cluster.lease / 3;
    loop {
        tokio::select! {
            () = tokio::time::sleep(jittered(round)) => {}
            () = shared.shut_down() => return,
        }
        let lost = {
            let shared = shared.clone();
            tokio::task::spawn_blocking(move || renew(&shared)).await
        };
        if matches!(lost, Ok(true)) {
            // Whatever the stopped sessions had appended is now durable or
            // refused: their readers here read the store again.
            let _ = shared.journal.sync().await;
        }
        let shared = shared.clone();
        let _ = tokio::task::spawn_blocking(move || {
            deliver(&shared);
            // A host shutting down takes nothing more over (it would not
            // wait for what it took, nor release its lease).
            if !shared.shutting_down() {
                take_lapsed(&shared);
            }
        })
        .await;
    }
}

/// Renew every lease; stop the sessions whose lease was lost. Returns
/// whether any was.
fn renew(shared: &Shared) -> bool {
    let lost = match shared.journal.renew_leases() {
        Ok(lost) => lost,
        Err(e) => {
            tracing::warn!("renewing leases: {e}");
            return false;
        }
    };
    for fenced in &lost {
        stop_here(shared, fenced);
    }
    !lost.is_empty()
}

/// A session whose lease this host lost: halted at once (a model call it
/// waits for is abandoned; anything it still appends is refused).
fn stop_here(shared: &Shared, fenced: &Fenced) {
    if let Some(entry) = shared.sessions.get(fenced.session) {
        sessions::taken_over(&entry, fenced);
        entry.steering.halt();
    }
}

/// Hand the sessions this host runs the requests other hosts left for
/// them.
fn deliver(shared: &Shared) {
    let requests = match shared.journal.take_requests() {
        Ok(requests) => requests,
        Err(e) => {
            tracing::warn!("taking requests left by other hosts: {e}");
            return;
        }
    };
    for (session, request) in requests {
        match shared.sessions.get(session) {
            Some(entry) if entry.elsewhere().is_none() => sessions::apply(&entry, request),
            _ => tracing::warn!(session, "a request for a session not run here: dropped"),
        }
    }
}

/// Take over the sessions whose lease lapsed.
fn take_lapsed(shared: &Arc<Shared>) {
    let lapsed = match shared.journal.lapsed_leases() {
        Ok(lapsed) => lapsed,
        Err(e) => {
            tracing::warn!("looking for lapsed leases: {e}");
            return;
        }
    };
    for id in lapsed {
        if shared.journal.held_lease(id).is_some() {
            continue;
        }
        if sessions::adopt(shared, id) {
            tracing::info!(session = id, "took the session over: its lease had lapsed");
        }
    }
}

/// `round`, give or take a tenth, so that hosts started together do not
/// poll the database in step.
fn jittered(round: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let fraction = 0.9 + f64::from(nanos % 1_000) / 5_000.0;
    round.mul_f64(fraction)
}
