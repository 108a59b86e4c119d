//! The ready queue of a package build, as a plain state machine: which package to start
//! next, and what a finished package makes ready or skips.
//!
//! The executor owns the slots, the processes and the clock; it asks [`Schedule::start_next`] when
//! a slot is free and reports with [`Schedule::finish`]. Keeping the decisions here, pure,
//! means they are tested without running anything, and the same rules serve `kiln build`
//! and the server's package jobs. A schedule owns what it needs (a copy of the
//! [`Graph::waiters`] lists, 1.3 MB for 60,000 packages) rather than borrowing the
//! tree, so a dispatcher task can own both without a self-referential struct.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::PackageId;
use super::graph::{Csr, Graph, Selection};

/// How a package's build ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Built now.
    Built,
    /// Its key matched a stored successful build: not run.
    Cached,
    /// Its build failed: whatever waits for it is skipped.
    Failed,
}

/// Where a package stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Waiting for packages it needs.
    Waiting,
    /// Everything it needs is built; not started yet.
    Ready,
    Running,
    Finished(Outcome),
    /// Not run because `cause` failed (the first failed package it waited on, transitively).
    Skipped {
        cause: PackageId,
    },
    /// Not part of this build's selection.
    NotSelected,
}

/// The ready queue of one build: highest remaining critical path first, ties by origin.
pub struct Schedule {
    waiters: Csr,
    state: Vec<State>,
    /// Per package: how many of what it waits for are not finished yet.
    remaining: Vec<u32>,
    priorities: Vec<u64>,
    ready: BinaryHeap<(u64, Reverse<PackageId>)>,
    unfinished: usize,
}

impl Schedule {
    /// A schedule of `selection` (closed under what its packages need, as
    /// [`Graph::select`] makes it) with `priorities` from [`Graph::priorities`].
    pub fn new(graph: &Graph, selection: &Selection, priorities: Vec<u64>) -> Self {
        let n = graph.len();
        let mut state = vec![State::NotSelected; n];
        let mut remaining = vec![0u32; n];
        let mut ready = BinaryHeap::new();
        for &p in selection.ids() {
            let waits = graph
                .wait_for(p)
                .iter()
                .filter(|d| selection.contains(**d))
                .count();
            remaining[p.index()] = u32::try_from(waits).unwrap_or(u32::MAX);
            if waits == 0 {
                state[p.index()] = State::Ready;
                ready.push((priorities[p.index()], Reverse(p)));
            } else {
                state[p.index()] = State::Waiting;
            }
        }
        Self {
            waiters: graph.waiters_csr().clone(),
            state,
            remaining,
            priorities,
            ready,
            unfinished: selection.len(),
        }
    }

    /// The ready package with the highest priority, now `Running`; `None` when nothing is
    /// ready (wait for a running one to finish, or the build is over: [`Schedule::is_done`]).
    pub fn start_next(&mut self) -> Option<PackageId> {
        let (_, Reverse(p)) = self.ready.pop()?;
        self.state[p.index()] = State::Running;
        Some(p)
    }

    /// The priority of the package [`Schedule::start_next`] would return, without starting
    /// it.
    pub fn next_priority(&self) -> Option<u64> {
        self.ready.peek().map(|(priority, _)| *priority)
    }

    /// `p`'s priority: its remaining critical path.
    pub fn priority(&self, p: PackageId) -> u64 {
        self.priorities[p.index()]
    }

    /// Records how `p` (returned by [`Schedule::start_next`]) ended. After a failure, returns the
    /// packages skipped because of it (each waiting on `p`, transitively), sorted.
    pub fn finish(&mut self, p: PackageId, outcome: Outcome) -> Vec<PackageId> {
        assert_eq!(
            self.state[p.index()],
            State::Running,
            "finish is called once for a package start_next returned"
        );
        self.state[p.index()] = State::Finished(outcome);
        self.unfinished -= 1;
        let mut skipped = Vec::new();
        if outcome == Outcome::Failed {
            let mut stack = vec![p];
            while let Some(x) = stack.pop() {
                for &w in self.waiters.get(x.index()) {
                    if self.state[w.index()] == State::Waiting {
                        self.state[w.index()] = State::Skipped { cause: p };
                        self.unfinished -= 1;
                        skipped.push(w);
                        stack.push(w);
                    }
                }
            }
            skipped.sort_unstable();
            return skipped;
        }
        for &w in self.waiters.get(p.index()) {
            if self.state[w.index()] != State::Waiting {
                continue;
            }
            let r = &mut self.remaining[w.index()];
            *r -= 1;
            if *r == 0 {
                self.state[w.index()] = State::Ready;
                self.ready.push((self.priorities[w.index()], Reverse(w)));
            }
        }
        skipped
    }

    pub fn state(&self, p: PackageId) -> State {
        self.state[p.index()]
    }

    /// Whether every selected package is finished or skipped.
    pub fn is_done(&self) -> bool {
        self.unfinished == 0
    }

    /// Selected packages neither finished nor skipped (ready, running or waiting): what a
    /// cancelled build records as cancelled or never started.
    pub fn unfinished(&self) -> impl Iterator<Item = PackageId> + '_ {
        self.state
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s, State::Waiting | State::Ready | State::Running))
            .map(|(i, _)| PackageId::new(i))
    }
}
