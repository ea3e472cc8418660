//! Which connections the server serves: at most `max_connections` in all
//! and `max_connections_per_peer` from one address, so that idle or slow
//! clients cannot take every file descriptor and starve the rest.
//!
//! A connection past either cap is not left in the listen queue (where
//! `/healthz` would wait behind it) but accepted and *shed*: it gets a short
//! time to send its request head, `/healthz` and `/metrics` are answered as
//! usual and anything else gets a 503, and the connection is closed. Shed connections
//! are capped too ([`MAX_SHED`]); past that they are closed at once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How many connections may be in the shed path at once.
pub const MAX_SHED: usize = 64;

/// How long a shed connection has to send its request head: a health
/// checker sends it at once, and a flood's idle connections must not hold
/// the shed path for long.
pub const SHED_HEADER_TIMEOUT: Duration = Duration::from_millis(250);

/// File descriptors kept free for everything but connections: the journal,
/// tool components, the models, shed connections.
pub const RESERVED_FDS: u64 = 128 + MAX_SHED as u64;

/// The connection counts, total and by peer address.
#[derive(Default)]
pub struct Admission {
    limits: (usize, usize),
    total: AtomicUsize,
    shed: AtomicUsize,
    by_peer: Mutex<HashMap<IpAddr, usize>>,
    /// Connections shed and refused, ever.
    shed_total: AtomicU64,
    refused_total: AtomicU64,
}

/// What to do with a connection just accepted.
pub enum Admit {
    /// Serve it; the ticket frees its place when dropped.
    Serve(Ticket),
    /// Over a cap: answer `/healthz` and `/metrics` only, quickly, then close.
    Shed(ShedTicket),
    /// Over every cap: close it now.
    Refuse,
}

impl Admission {
    pub fn new(max_connections: usize, max_per_peer: usize) -> Arc<Admission> {
        Arc::new(Admission {
            limits: (max_connections, max_per_peer),
            ..Admission::default()
        })
    }

    /// Decide for a connection from `peer`.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Admit {
        let (max_total, max_per_peer) = self.limits;
        let mut by_peer = self.by_peer.lock().unwrap_or_else(|e| e.into_inner());
        let from_peer = by_peer.get(&peer).copied().unwrap_or(0);
        let total = self.total.load(Ordering::Relaxed);
        if from_peer < max_per_peer && total < max_total {
            by_peer.insert(peer, from_peer + 1);
            self.total.fetch_add(1, Ordering::Relaxed);
            return Admit::Serve(Ticket {
                admission: self.clone(),
                peer,
            });
        }
        drop(by_peer);
        if self.shed.fetch_add(1, Ordering::Relaxed) < MAX_SHED {
            self.shed_total.fetch_add(1, Ordering::Relaxed);
            Admit::Shed(ShedTicket(self.clone()))
        } else {
            self.shed.fetch_sub(1, Ordering::Relaxed);
            self.refused_total.fetch_add(1, Ordering::Relaxed);
            Admit::Refuse
        }
    }

    /// Connections served now.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Connections shed, ever.
    pub fn shed_total(&self) -> u64 {
        self.shed_total.load(Ordering::Relaxed)
    }

    /// Connections closed at once past every cap, ever.
    pub fn refused_total(&self) -> u64 {
        self.refused_total.load(Ordering::Relaxed)
    }
}

/// A served connection's place.
pub struct Ticket {
    admission: Arc<Admission>,
    peer: IpAddr,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut by_peer = self
            .admission
            .by_peer
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = by_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                by_peer.remove(&self.peer);
            }
        }
        self.admission.total.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A shed connection's place.
pub struct ShedTicket(Arc<Admission>);

impl Drop for ShedTicket {
    fn drop(&mut self) {
        self.0.shed.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_past_its_cap_is_shed_while_another_is_served() {
        let admission = Admission::new(10, 2);
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.2".parse().unwrap(), "127.0.0.1".parse().unwrap());
        let first = admission.admit(a);
        let second = admission.admit(a);
        assert!(matches!(first, Admit::Serve(_)) && matches!(second, Admit::Serve(_)));
        assert!(matches!(admission.admit(a), Admit::Shed(_)));
        assert!(matches!(admission.admit(b), Admit::Serve(_)));
        drop(first);
        assert!(matches!(admission.admit(a), Admit::Serve(_)));
    }

    #[test]
    fn past_the_total_cap_connections_are_shed_then_refused() {
        let admission = Admission::new(1, 5);
        let _held = admission.admit("127.0.0.1".parse().unwrap());
        let shed: Vec<Admit> = (0..MAX_SHED)
            .map(|_| admission.admit("127.0.0.3".parse().unwrap()))
            .collect();
        assert!(shed.iter().all(|a| matches!(a, Admit::Shed(_))));
        assert!(matches!(
            admission.admit("127.0.0.4".parse().unwrap()),
            Admit::Refuse
        ));
        drop(shed);
        assert!(matches!(
            admission.admit("127.0.0.4".parse().unwrap()),
            Admit::Shed(_)
        ));
        assert_eq!(admission.open(), 1);
        assert_eq!(
            (admission.shed_total(), admission.refused_total()),
            (MAX_SHED as u64 + 1, 1)
        );
    }
}
