//! A parallel map over a slice with scoped threads, in input order.
//!
//! Loading and hashing a tree is tens of thousands of small, uneven jobs (a manifest of a few
//! hundred bytes, a folder with one big patch): threads take batches from a shared counter
//! rather than one fixed chunk each, so one slow folder does not leave the other cores idle.
//! Plain `std::thread::scope` is enough for that; it spares the workspace a thread-pool
//! dependency for the one place that needs one.

use std::sync::atomic::{AtomicUsize, Ordering};

/// How many threads to use: the machine's parallelism (1 when it cannot be known).
pub(crate) fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `items.iter().map(f)` on all cores, results in input order. `init` makes each thread's
/// scratch state (a visit-stamp array, a read buffer) once rather than once per item.
pub(crate) fn map_with<T, R, S>(
    items: &[T],
    init: impl Fn() -> S + Sync,
    f: impl Fn(&mut S, &T) -> R + Sync,
) -> Vec<R>
where
    T: Sync,
    R: Send,
{
    let threads = threads().min(items.len().div_ceil(64)).max(1);
    if threads == 1 {
        let mut state = init();
        return items.iter().map(|item| f(&mut state, item)).collect();
    }
    let batch = (items.len() / (threads * 16)).clamp(16, 1024);
    let batches = items.len().div_ceil(batch);
    let next = AtomicUsize::new(0);
    let mut done: Vec<(usize, Vec<R>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut state = init();
                    let mut out = Vec::new();
                    loop {
                        let b = next.fetch_add(1, Ordering::Relaxed);
                        if b >= batches {
                            break;
                        }
                        let chunk = &items[b * batch..((b + 1) * batch).min(items.len())];
                        out.push((b, chunk.iter().map(|item| f(&mut state, item)).collect()));
                    }
                    out
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    done.sort_unstable_by_key(|(b, _)| *b);
    let mut out = Vec::with_capacity(items.len());
    for (_, results) in done {
        out.extend(results);
    }
    out
}

/// [`map_with`] without per-thread state.
pub(crate) fn map<T, R>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R>
where
    T: Sync,
    R: Send,
{
    map_with(items, || (), |(), item| f(item))
}
