//! `kiln build`'s slots, given by priority: a package prepared ahead waits for a slot, and a
//! slot that frees goes to the waiting package with the highest remaining critical path, not
//! to the one that asked first. A critical package that became ready after a lesser one was
//! prepared thus still runs next.

use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// The slots of one build.
pub(crate) struct Slots {
    inner: Mutex<Inner>,
}

struct Inner {
    free: usize,
    /// Highest priority first, then the earliest asked.
    waiting: BinaryHeap<Waiter>,
    asked: u64,
}

struct Waiter {
    priority: u64,
    /// Reversed ask order: of equal priorities, the earliest asked is the greatest.
    order: std::cmp::Reverse<u64>,
    give: oneshot::Sender<Slot>,
}

impl PartialEq for Waiter {
    fn eq(&self, other: &Self) -> bool {
        (self.priority, self.order) == (other.priority, other.order)
    }
}

impl Eq for Waiter {}

impl PartialOrd for Waiter {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Waiter {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.priority, self.order).cmp(&(other.priority, other.order))
    }
}

/// A slot held; dropping it gives it to the best waiter, or frees it.
pub(crate) struct Slot {
    /// `None` only for a slot that was never handed over (see [`Slots::give_back`]).
    slots: Option<Arc<Slots>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(slots) = self.slots.take() {
            slots.give_back();
        }
    }
}

impl Slots {
    pub(crate) fn new(n: usize) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner {
                free: n,
                waiting: BinaryHeap::new(),
                asked: 0,
            }),
        })
    }

    /// A slot, once one is free and no waiter of a higher priority (or of the same one,
    /// asked earlier) wants it. Cancel-safe: a waiter dropped before its turn takes nothing,
    /// and a slot given to it as it was dropped goes on to the next.
    pub(crate) async fn acquire(self: &Arc<Self>, priority: u64) -> Slot {
        let rx = {
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            if inner.free > 0 && inner.waiting.is_empty() {
                inner.free -= 1;
                return Slot {
                    slots: Some(self.clone()),
                };
            }
            let (give, rx) = oneshot::channel();
            inner.asked += 1;
            let order = std::cmp::Reverse(inner.asked);
            inner.waiting.push(Waiter {
                priority,
                order,
                give,
            });
            rx
        };
        // The sender goes only with a slot, or when `give_back` finds this waiter gone,
        // which it is not while this future waits.
        rx.await.expect("a waiting slot request is answered")
    }

    /// A slot came back: to the best waiter still waiting, else to the free ones.
    fn give_back(self: &Arc<Self>) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(w) = inner.waiting.pop() {
            let slot = Slot {
                slots: Some(self.clone()),
            };
            match w.give.send(slot) {
                Ok(()) => return,
                // Dropped in between: this slot was never handed over; disarm it (its drop
                // would take this lock) and try the next waiter.
                Err(mut slot) => slot.slots = None,
            }
        }
        inner.free += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `fut` is ready without waiting.
    async fn now<T>(fut: impl std::future::Future<Output = T>) -> Option<T> {
        tokio::time::timeout(std::time::Duration::from_millis(20), fut)
            .await
            .ok()
    }

    #[tokio::test]
    async fn a_freed_slot_goes_to_the_highest_priority_waiter_then_the_earliest() {
        let slots = Slots::new(1);
        let held = slots.acquire(0).await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for (name, priority) in [
            ("low", 1),
            ("high-first", 9),
            ("mid", 5),
            ("high-second", 9),
        ] {
            let slots = slots.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let slot = slots.acquire(priority).await;
                tx.send(name).expect("the test listens");
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                drop(slot);
            });
            // Each asks before the next.
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(now(rx.recv()).await, None, "the one slot is held");
        drop(held);
        let mut order = Vec::new();
        for _ in 0..4 {
            order.push(rx.recv().await.expect("every waiter gets a slot"));
        }
        assert_eq!(order, ["high-first", "high-second", "mid", "low"]);
    }

    #[tokio::test]
    async fn a_waiter_dropped_takes_no_slot_with_it() {
        let slots = Slots::new(1);
        let held = slots.acquire(0).await;
        // Dropped while waiting: it must not keep the slot it would have been given.
        assert!(now(slots.acquire(7)).await.is_none());
        drop(held);
        let again = now(slots.acquire(1)).await;
        assert!(again.is_some(), "the slot came back");
        drop(again);
        // Two slots at most at once.
        let two = Slots::new(2);
        let a = two.acquire(0).await;
        let b = two.acquire(0).await;
        assert!(now(two.acquire(0)).await.is_none());
        drop((a, b));
        let (c, d) = (now(two.acquire(0)).await, now(two.acquire(0)).await);
        assert!(c.is_some() && d.is_some());
    }
}
