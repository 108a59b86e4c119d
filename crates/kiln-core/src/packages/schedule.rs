//! The ready queue of a package build, as a plain state machine: which package to start
//! next, and what a finished package makes ready or skips.
//!
//! The executor owns the slots, the processes and the clock; it asks [`Schedule::start_next`] when
//! a slot is free and reports with [`Schedule::finish`]. It may also start a package ahead,
//! while the last packages it needs still run ([`Schedule::pre_start_next`]), so that
//! preparing its build is not on the critical path; [`Schedule::take_released`] tells it when
//! such a package may go on. Keeping the decisions here, pure,
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
    /// Everything it needs has started and some of it still runs; started ahead
    /// ([`Schedule::pre_start_next`]): its build may be prepared but not run yet.
    PreStarted,
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
    /// Per package: how many of what it waits for are not started yet.
    unstarted: Vec<u32>,
    priorities: Vec<u64>,
    ready: BinaryHeap<(u64, Reverse<PackageId>)>,
    /// Waiting packages whose needs have all started (some may have become ready or been
    /// skipped since: [`Schedule::pre_start_next`] passes over those).
    early: BinaryHeap<(u64, Reverse<PackageId>)>,
    /// Pre-started packages whose needs have all finished, not yet taken.
    released: Vec<PackageId>,
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
            unstarted: remaining.clone(),
            remaining,
            priorities,
            ready,
            early: BinaryHeap::new(),
            released: Vec::new(),
            unfinished: selection.len(),
        }
    }

    /// The ready package with the highest priority, now `Running`; `None` when nothing is
    /// ready (wait for a running one to finish, or the build is over: [`Schedule::is_done`]).
    pub fn start_next(&mut self) -> Option<PackageId> {
        let (_, Reverse(p)) = self.ready.pop()?;
        self.run(p);
        Some(p)
    }

    /// `p` is `Running` now: what waits for it may be pre-started once all it needs runs.
    fn run(&mut self, p: PackageId) {
        self.state[p.index()] = State::Running;
        for &w in self.waiters.get(p.index()) {
            if self.state[w.index()] != State::Waiting {
                continue;
            }
            let u = &mut self.unstarted[w.index()];
            *u -= 1;
            if *u == 0 {
                self.early.push((self.priorities[w.index()], Reverse(w)));
            }
        }
    }

    /// Of the waiting packages whose needs have all started (and not all finished), the one
    /// with the highest priority, now `PreStarted`: its build may be prepared, not run. It
    /// becomes `Running` when its needs have finished, and is then listed by
    /// [`Schedule::take_released`]; a failure among them skips it like a waiting package.
    pub fn pre_start_next(&mut self) -> Option<PackageId> {
        while let Some((_, Reverse(p))) = self.early.pop() {
            if self.state[p.index()] == State::Waiting {
                self.state[p.index()] = State::PreStarted;
                return Some(p);
            }
        }
        None
    }

    /// The pre-started packages whose needs have all finished since the last call: now
    /// `Running`, to be let go on.
    pub fn take_released(&mut self) -> Vec<PackageId> {
        std::mem::take(&mut self.released)
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

    /// Records how `p` (returned by [`Schedule::start_next`], or by
    /// [`Schedule::pre_start_next`]) ended; a pre-started package can end before it was
    /// released only by failing. After a failure, returns the packages skipped because of it
    /// (each waiting on `p` or pre-started after it, transitively), sorted.
    pub fn finish(&mut self, p: PackageId, outcome: Outcome) -> Vec<PackageId> {
        let state = self.state[p.index()];
        assert!(
            state == State::Running || (state == State::PreStarted && outcome == Outcome::Failed),
            "finish is called once for a package start_next or pre_start_next returned"
        );
        self.state[p.index()] = State::Finished(outcome);
        self.unfinished -= 1;
        let mut skipped = Vec::new();
        if outcome == Outcome::Failed {
            let mut stack = vec![p];
            while let Some(x) = stack.pop() {
                for &w in self.waiters.get(x.index()) {
                    if matches!(self.state[w.index()], State::Waiting | State::PreStarted) {
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
        // By index: a released package's own waiters are updated on the way.
        for i in 0..self.waiters.get(p.index()).len() {
            let w = self.waiters.get(p.index())[i];
            let state = self.state[w.index()];
            if !matches!(state, State::Waiting | State::PreStarted) {
                continue;
            }
            let r = &mut self.remaining[w.index()];
            *r -= 1;
            if *r > 0 {
                continue;
            }
            if state == State::PreStarted {
                self.run(w);
                self.released.push(w);
            } else {
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

    /// Selected packages neither finished nor skipped (ready, running, pre-started or waiting): what a
    /// cancelled build records as cancelled or never started.
    pub fn unfinished(&self) -> impl Iterator<Item = PackageId> + '_ {
        self.state
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                matches!(
                    s,
                    State::Waiting | State::PreStarted | State::Ready | State::Running
                )
            })
            .map(|(i, _)| PackageId::new(i))
    }
}
