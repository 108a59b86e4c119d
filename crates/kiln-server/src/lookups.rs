//! What `POST /hooks/{hook_id}` reads for every delivery — the hook's project with its
//! secret, and the bans in force — kept in memory for up to [`FRESH`], so that a burst of
//! deliveries costs no query each (two of the nine statements a delivery cost).
//!
//! Changes made through this server (a hook rotated, a project removed, a ban added or
//! lifted) forget what is kept at once. Changes made elsewhere — another replica on the same
//! database — are seen within [`FRESH`]: a secret rotated there is still accepted here for
//! at most that long, and a ban made there is honoured here at most that late. A lookup that
//! began before something was forgotten does not keep what it read.
//!
//! Unknown hook ids are kept too (as unknown): a hook id is drawn at random when a project
//! is made or its hook moved, so none becomes known after being asked for.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use kiln_proto::Ban;
use kiln_store::{HookTarget, Store, StoreError};

/// How long what is read stays in use.
pub(crate) const FRESH: Duration = Duration::from_secs(1);

#[derive(Default)]
pub(crate) struct Lookups {
    targets: Mutex<Kept<Option<HookTarget>>>,
    /// The ban in force (or none) by (address, hook id).
    bans: Mutex<Kept<Option<Ban>>>,
}

/// What is kept by key, when each was read, and how many times all was forgotten: a lookup
/// keeps what it read only when nothing was forgotten while it read.
struct Kept<T> {
    value: HashMap<String, (Instant, T)>,
    generation: u64,
}

impl<T> Default for Kept<T> {
    fn default() -> Self {
        Self {
            value: HashMap::new(),
            generation: 0,
        }
    }
}

/// Entries kept at most, per kind; past that, the stale ones are dropped (all, if none is).
const MAX_KEPT: usize = 10_000;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `key`'s value from `kept` when read within [`FRESH`]; otherwise `read`'s, kept (unless
/// something was forgotten meanwhile). Its age counts from before the read began.
async fn kept_or<T: Clone, F>(kept: &Mutex<Kept<T>>, key: String, read: F) -> Result<T, StoreError>
where
    F: std::future::Future<Output = Result<T, StoreError>>,
{
    let generation = {
        let kept = lock(kept);
        if let Some((at, value)) = kept.value.get(&key)
            && at.elapsed() < FRESH
        {
            return Ok(value.clone());
        }
        kept.generation
    };
    let asked = Instant::now();
    let value = read.await?;
    let mut kept = lock(kept);
    if kept.generation == generation {
        if kept.value.len() >= MAX_KEPT {
            kept.value.retain(|_, (at, _)| at.elapsed() < FRESH);
            if kept.value.len() >= MAX_KEPT {
                kept.value.clear();
            }
        }
        kept.value.insert(key, (asked, value.clone()));
    }
    Ok(value)
}

fn forget<T>(kept: &Mutex<Kept<T>>) {
    let mut kept = lock(kept);
    kept.value.clear();
    kept.generation += 1;
}

impl Lookups {
    /// The project whose webhook is `hook_id` ([`Store::hook_target`]), from memory when read
    /// within [`FRESH`].
    pub(crate) async fn hook_target(
        &self,
        store: &Store,
        hook_id: &str,
    ) -> Result<Option<HookTarget>, StoreError> {
        kept_or(
            &self.targets,
            hook_id.to_owned(),
            store.hook_target(hook_id),
        )
        .await
    }

    /// Forgets every hook target: a hook changed, or a project was removed.
    pub(crate) fn forget_targets(&self) {
        forget(&self.targets);
    }

    /// The ban in force at `now` that keeps `address` from hook `hook_id`
    /// ([`Store::active_ban`]), from memory when read within [`FRESH`] (and still in force).
    pub(crate) async fn active_ban(
        &self,
        store: &Store,
        address: &str,
        hook_id: &str,
        now: Timestamp,
    ) -> Result<Option<Ban>, StoreError> {
        let key = format!("{address} {hook_id}");
        let ban = kept_or(&self.bans, key, store.active_ban(address, hook_id, now)).await?;
        Ok(ban.filter(|b| b.expires_at > now))
    }

    /// Forgets the bans read: one was added or lifted.
    pub(crate) fn forget_bans(&self) {
        forget(&self.bans);
    }
}
