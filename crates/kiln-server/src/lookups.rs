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
//! Unknown hook ids are not kept: they are looked up each time (and banned when they come
//! too often, see `bans.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use kiln_proto::Ban;
use kiln_store::{HookTarget, Store, StoreError};

/// How long what is read stays in use.
pub(crate) const FRESH: Duration = Duration::from_secs(1);

/// Hook targets kept at most; past that, the stale ones are dropped (all, if none is).
const MAX_TARGETS: usize = 10_000;

#[derive(Default)]
pub(crate) struct Lookups {
    targets: Mutex<Kept<HashMap<String, (Instant, HookTarget)>>>,
    /// The bans in force by address, and when they were read.
    bans: Mutex<Kept<Option<(Instant, Board)>>>,
}

/// The bans in force, by address.
type Board = Arc<HashMap<String, Vec<Ban>>>;

/// What is kept, and how many times it has been forgotten: a lookup keeps what it read only
/// when nothing was forgotten while it read.
#[derive(Default)]
struct Kept<T> {
    value: T,
    generation: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Lookups {
    /// The project whose webhook is `hook_id` ([`Store::hook_target`]), from memory when read
    /// within [`FRESH`].
    pub(crate) async fn hook_target(
        &self,
        store: &Store,
        hook_id: &str,
    ) -> Result<Option<HookTarget>, StoreError> {
        let generation = {
            let kept = lock(&self.targets);
            if let Some((at, target)) = kept.value.get(hook_id)
                && at.elapsed() < FRESH
            {
                return Ok(Some(target.clone()));
            }
            kept.generation
        };
        let found = store.hook_target(hook_id).await?;
        let mut kept = lock(&self.targets);
        if kept.generation == generation {
            match &found {
                Some(target) => {
                    if kept.value.len() >= MAX_TARGETS {
                        kept.value.retain(|_, (at, _)| at.elapsed() < FRESH);
                        if kept.value.len() >= MAX_TARGETS {
                            kept.value.clear();
                        }
                    }
                    kept.value
                        .insert(hook_id.to_owned(), (Instant::now(), target.clone()));
                }
                None => {
                    kept.value.remove(hook_id);
                }
            }
        }
        Ok(found)
    }

    /// Forgets every hook target: a hook changed, or a project was removed.
    pub(crate) fn forget_targets(&self) {
        let mut kept = lock(&self.targets);
        kept.value.clear();
        kept.generation += 1;
    }

    /// The ban in force at `now` that keeps `address` from hook `hook_id` (one from that
    /// hook or from every hook; of several, the one that lasts longest), as
    /// [`Store::active_ban`] answers, from the bans read within [`FRESH`].
    pub(crate) async fn active_ban(
        &self,
        store: &Store,
        address: &str,
        hook_id: &str,
        now: Timestamp,
    ) -> Result<Option<Ban>, StoreError> {
        let (board, generation) = {
            let kept = lock(&self.bans);
            let fresh = kept
                .value
                .as_ref()
                .filter(|(at, _)| at.elapsed() < FRESH)
                .map(|(_, board)| board.clone());
            (fresh, kept.generation)
        };
        let board = match board {
            Some(board) => board,
            None => {
                let mut by_address: HashMap<String, Vec<Ban>> = HashMap::new();
                for ban in store.list_bans(false, now).await? {
                    by_address.entry(ban.address.clone()).or_default().push(ban);
                }
                let board = Arc::new(by_address);
                let mut kept = lock(&self.bans);
                if kept.generation == generation {
                    kept.value = Some((Instant::now(), board.clone()));
                }
                board
            }
        };
        Ok(board.get(address).and_then(|bans| {
            bans.iter()
                .filter(|b| b.hook_id.as_deref().is_none_or(|h| h == hook_id))
                .filter(|b| b.lifted_at.is_none() && b.expires_at > now)
                .max_by_key(|b| b.expires_at)
                .cloned()
        }))
    }

    /// Forgets the bans read: one was added or lifted.
    pub(crate) fn forget_bans(&self) {
        let mut kept = lock(&self.bans);
        kept.value = None;
        kept.generation += 1;
    }
}
