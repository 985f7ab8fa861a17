//! Single-flight for `Cache::get_or_insert_with`: while one caller computes the value of a key,
//! the others asking for that key wait for its result instead of computing it again.
//!
//! This is the one place where the cache makes a caller wait, so it is built for clarity rather
//! than lock-freedom: flights in progress are kept in a few mutex-guarded stripes (held only to
//! look up, add or remove a flight, never while a value is computed), and each flight has a
//! mutex and condition variable that its waiters sleep on. If the computing caller panics, its
//! flight is abandoned: the waiters wake up and one of them computes instead.

use crate::sync::{Arc, Condvar, Mutex};
use std::sync::PoisonError;

/// What a flight has come to.
enum State<V> {
    Running,
    Done(V),
    Abandoned,
}

/// One computation in progress.
pub(super) struct Flight<K, V> {
    hash: u64,
    key: K,
    state: Mutex<State<V>>,
    changed: Condvar,
}

/// One stripe of flights in progress.
type Stripe<K, V> = Mutex<Vec<Arc<Flight<K, V>>>>;

/// The flights in progress, striped by hash.
pub(super) struct Flights<K, V> {
    stripes: Box<[Stripe<K, V>]>,
}

/// What joining a flight gave.
pub(super) enum Joined<'a, K, V> {
    /// This caller leads: it must compute, then `complete` (or drop the `Leader` to abandon).
    Leader(Leader<'a, K, V>),
    /// Another caller leads; `wait` on it.
    Follower(Arc<Flight<K, V>>),
}

/// The duty to finish a flight. Dropping it without `complete` (a panic in the computation)
/// abandons the flight and wakes its waiters.
pub(super) struct Leader<'a, K, V> {
    flights: &'a Flights<K, V>,
    flight: Arc<Flight<K, V>>,
    done: bool,
}

impl<K, V> Flights<K, V> {
    pub(super) fn new(stripes: usize) -> Self {
        Self {
            stripes: (0..stripes.max(1).next_power_of_two())
                .map(|_| Mutex::new(Vec::new()))
                .collect(),
        }
    }

    fn stripe(&self, hash: u64) -> &Stripe<K, V> {
        &self.stripes[(hash.rotate_right(16) as usize) & (self.stripes.len() - 1)]
    }

    /// Joins the flight for `key`, starting one if there is none.
    pub(super) fn join(&self, hash: u64, key: K) -> Joined<'_, K, V>
    where
        K: Eq,
    {
        let mut flights = self
            .stripe(hash)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(f) = flights.iter().find(|f| f.hash == hash && f.key == key) {
            return Joined::Follower(Arc::clone(f));
        }
        let flight = Arc::new(Flight {
            hash,
            key,
            state: Mutex::new(State::Running),
            changed: Condvar::new(),
        });
        flights.push(Arc::clone(&flight));
        Joined::Leader(Leader {
            flights: self,
            flight,
            done: false,
        })
    }

    fn finish(&self, flight: &Arc<Flight<K, V>>, outcome: State<V>) {
        self.stripe(flight.hash)
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|f| !Arc::ptr_eq(f, flight));
        *flight.state.lock().unwrap_or_else(PoisonError::into_inner) = outcome;
        flight.changed.notify_all();
    }
}

impl<K, V: Clone> Flight<K, V> {
    /// Waits for the leader: `Some(value)` when it completed, `None` when it abandoned the flight
    /// (the caller should try again).
    pub(super) fn wait(&self) -> Option<V> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            match &*state {
                State::Running => {
                    state = self
                        .changed
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                State::Done(v) => return Some(v.clone()),
                State::Abandoned => return None,
            }
        }
    }
}

impl<K, V> Leader<'_, K, V> {
    /// Hands `value` to every waiter and ends the flight.
    pub(super) fn complete(mut self, value: V) {
        self.done = true;
        self.flights.finish(&self.flight, State::Done(value));
    }
}

impl<K, V> Drop for Leader<'_, K, V> {
    fn drop(&mut self) {
        if !self.done {
            self.flights.finish(&self.flight, State::Abandoned);
        }
    }
}
