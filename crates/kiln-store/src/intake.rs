//! The intake journal of the embedded (SQLite) store: how a webhook delivery is recorded
//! durably without waiting for SQLite's one writer.
//!
//! Measured under a stream of signed pushes, an acknowledgement spent most of its time
//! waiting for the writer, behind the transaction that creates the runs of the deliveries
//! before it. With the journal, a delivery that this server processes itself (accepted and
//! claimed by it, see `NewDelivery::claim`) is appended to a file instead, and the sender is
//! answered; the processor stores the journaled deliveries in one transaction before it
//! creates their runs ([`Store::flush_intake`]). Every read of deliveries stores what is
//! journaled first, so the API never shows less than was answered.
//!
//! - **Durability**: an append is one `write(2)`, without `fsync` — as durable as a commit
//!   under `synchronous=NORMAL`, which the embedded store uses: it survives the process
//!   being killed, not the machine losing power.
//! - **Once per delivery id**: the journal keeps the delivery ids it holds; a delivery is
//!   new only when neither the journal nor the database has its id. A delivery stored while
//!   its id was being looked up in the database (the look-up reads a snapshot) is caught by
//!   a counter of keys that left the journal: the look-up is then made again.
//! - **Recovery**: the server opens the journal at start ([`Store::open_intake_journal`]),
//!   under a lock file, and first stores every whole record a previous process left (a
//!   record cut short by a crash was never answered, and is dropped, as is everything after
//!   a record whose checksum fails). They are then accepted deliveries claimed by a process
//!   that is gone, which the server's sweep processes.
//! - **Files**: `<data dir>/intake/intake-<n>.log`, each record
//!   `[len u32][crc32 u32][header len u32][header JSON][payload]` (little-endian; the
//!   payload as the store keeps it, see [`crate::hooks`]). A file is removed once all its
//!   records are stored; a new one is started past [`SEGMENT_BYTES`].
//!
//! PostgreSQL stores never journal: replicas share the deliveries table, and only the
//! database can tell them apart.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use jiff::Timestamp;
use kiln_core::ids::ProjectId;
use kiln_proto::{DeliveryStatus, DeliveryView, HookProvider};
use serde::{Deserialize, Serialize};

use crate::hooks::{DeliveryClaim, NewDelivery, PackedBody, Recorded};
use crate::{Backend, Store, StoreError};

/// A delivery's (project, provider delivery id) in [`State::known`]. A collision only costs
/// a database look-up.
fn known_hash(project: &str, delivery: &str) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::hash::DefaultHasher::new();
    project.hash(&mut h);
    delivery.hash(&mut h);
    h.finish()
}

/// A journal file is closed for appends past this size.
pub(crate) const SEGMENT_BYTES: u64 = 16 << 20;
/// Records stored per transaction when a previous process's journal is read back.
const REPLAY_BATCH: usize = 512;
/// How often a delivery's id is looked up again when deliveries were stored meanwhile,
/// before the delivery is recorded straight into the database instead.
const LOOKUPS: usize = 3;

/// A delivery answered from the journal and not stored yet.
#[derive(Clone, Debug)]
pub(crate) struct Journaled {
    pub id: String,
    pub project: ProjectId,
    pub provider: HookProvider,
    pub delivery: String,
    pub event: String,
    pub received_at: Timestamp,
    /// The payload's own length.
    pub size: i64,
    /// The payload as the store keeps it ([`crate::hooks::pack_payload`]).
    pub payload: bytes::Bytes,
    pub claim: Option<DeliveryClaim>,
    /// The journal file that holds it.
    segment: u64,
}

impl Journaled {
    fn view(&self) -> DeliveryView {
        DeliveryView {
            id: self.id.clone(),
            project: self.project,
            provider: self.provider,
            delivery: self.delivery.clone(),
            event: self.event.clone(),
            status: DeliveryStatus::Accepted,
            reason: None,
            runs: Vec::new(),
            size: self.size,
            received_at: self.received_at,
            processed_at: None,
        }
    }
}

/// A record's header: everything but the payload.
#[derive(Serialize, Deserialize)]
struct Header {
    id: String,
    project: ProjectId,
    provider: HookProvider,
    delivery: String,
    event: String,
    /// Milliseconds since the epoch.
    received_at: i64,
    size: i64,
    claim_owner: Option<String>,
    /// Milliseconds since the epoch.
    claim_until: Option<i64>,
}

/// `entry` as one journal record.
fn encode(entry: &Journaled) -> Vec<u8> {
    let header = Header {
        id: entry.id.clone(),
        project: entry.project,
        provider: entry.provider,
        delivery: entry.delivery.clone(),
        event: entry.event.clone(),
        received_at: entry.received_at.as_millisecond(),
        size: entry.size,
        claim_owner: entry.claim.as_ref().map(|c| c.owner.clone()),
        claim_until: entry.claim.as_ref().map(|c| c.until.as_millisecond()),
    };
    let header = serde_json::to_vec(&header).unwrap_or_default();
    let body_len = 4 + header.len() + entry.payload.len();
    let mut record = Vec::with_capacity(8 + body_len);
    record.extend_from_slice(&u32::try_from(body_len).unwrap_or(u32::MAX).to_le_bytes());
    record.extend_from_slice(&[0; 4]);
    record.extend_from_slice(
        &u32::try_from(header.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    record.extend_from_slice(&header);
    record.extend_from_slice(&entry.payload);
    let crc = crc32fast::hash(&record[8..]);
    record[4..8].copy_from_slice(&crc.to_le_bytes());
    record
}

/// The records of one journal file, up to the first that is cut short or fails its checksum
/// (`Err` says where, with the records before it).
fn decode(bytes: &[u8], segment: u64) -> (Vec<Journaled>, Option<String>) {
    let mut entries = Vec::new();
    let mut at = 0;
    let word = |b: &[u8], i: usize| -> usize {
        u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]) as usize
    };
    while at < bytes.len() {
        let rest = &bytes[at..];
        if rest.len() < 12 {
            return (entries, Some(format!("a record cut short at byte {at}")));
        }
        let len = word(rest, 0);
        if len < 4 || rest.len() < 8 + len {
            return (entries, Some(format!("a record cut short at byte {at}")));
        }
        let body = &rest[8..8 + len];
        if crc32fast::hash(body) != word(rest, 4) as u32 {
            return (
                entries,
                Some(format!("a record at byte {at} fails its checksum")),
            );
        }
        let header_len = word(body, 0);
        let header = body
            .get(4..4 + header_len)
            .map(serde_json::from_slice::<Header>);
        let Some(Ok(h)) = header else {
            return (
                entries,
                Some(format!("a record at byte {at} has an unreadable header")),
            );
        };
        let stamp = |ms: i64| Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH);
        entries.push(Journaled {
            id: h.id,
            project: h.project,
            provider: h.provider,
            delivery: h.delivery,
            event: h.event,
            received_at: stamp(h.received_at),
            size: h.size,
            payload: bytes::Bytes::copy_from_slice(&body[4 + header_len..]),
            claim: h.claim_owner.map(|owner| DeliveryClaim {
                owner,
                until: stamp(h.claim_until.unwrap_or(0)),
            }),
            segment,
        });
        at += 8 + len;
    }
    (entries, None)
}

/// Who holds a delivery id while it is not (or not surely) in the database.
enum Slot {
    /// Journaled, not stored yet.
    Journaled(DeliveryView),
    /// Being recorded straight into the database by this many requests.
    Direct(usize),
}

type Key = (ProjectId, String);

struct State {
    /// The journal file appended to, and its number.
    file: File,
    segment: u64,
    /// Bytes in `file`.
    written: u64,
    /// Journaled and not stored, in the order they came.
    pending: Vec<Journaled>,
    keys: HashMap<Key, Slot>,
    /// Records not stored yet, per journal file.
    unstored: BTreeMap<u64, usize>,
    /// Bumped whenever a key leaves `keys` (its delivery is then in the database).
    left: u64,
    /// Journaled deliveries (by row id) dropped when stored: another process had recorded
    /// their provider delivery id meanwhile (see [`Store::dropped_from_intake`]).
    dropped: HashSet<String>,
    /// Hashes of every (project, provider delivery id) in the database when the journal was
    /// opened or recorded by this process since ([`known_hash`]): a delivery whose hash is
    /// not here is new, and its acknowledgement skips the database look-up. Only another
    /// process writing the database straight can record one this misses; the journal's
    /// store then drops ours ([`Store::dropped_from_intake`]).
    known: HashSet<u64>,
}

/// The journal of one server (see the module doc).
pub(crate) struct Intake {
    dir: PathBuf,
    /// Held open: its lock keeps other processes out of this journal.
    _lock: File,
    state: Mutex<State>,
    /// One store of journaled deliveries at a time, so that each takes the oldest.
    storing: tokio::sync::Mutex<()>,
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("intake-{n:016}.log"))
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Intake {
        path: path.to_owned(),
        source,
    }
}

fn open_segment(dir: &Path, n: u64) -> Result<File, StoreError> {
    let path = segment_path(dir, n);
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io_error(&path))
}

/// The journal files in `dir`, by number.
fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let name = entry.file_name();
        let n = name
            .to_str()
            .and_then(|n| n.strip_prefix("intake-"))
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(n) = n {
            found.push((n, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

impl State {
    /// Appends `record`, the journal record of `entry`, and holds `entry` until it is stored.
    fn append(&mut self, dir: &Path, entry: Journaled, record: &[u8]) -> Result<(), StoreError> {
        if self.written >= SEGMENT_BYTES {
            let next = self.segment + 1;
            self.file = open_segment(dir, next)?;
            self.segment = next;
            self.written = 0;
            self.drop_stored_segments(dir);
        }
        if let Err(e) = self.file.write_all(record) {
            // A record written in part would hide the ones after it from a read-back.
            let _ = self.file.set_len(self.written);
            return Err(io_error(&segment_path(dir, self.segment))(e));
        }
        self.written += record.len() as u64;
        *self.unstored.entry(self.segment).or_default() += 1;
        let mut entry = entry;
        entry.segment = self.segment;
        self.keys.insert(
            (entry.project, entry.delivery.clone()),
            Slot::Journaled(entry.view()),
        );
        self.pending.push(entry);
        Ok(())
    }

    /// Removes the files whose records are all stored, and empties the one appended to
    /// when that holds nothing unstored.
    fn drop_stored_segments(&mut self, dir: &Path) {
        let current = self.segment;
        self.unstored.retain(|&n, count| {
            if *count > 0 || n == current {
                return true;
            }
            let path = segment_path(dir, n);
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "failed to remove a journal file whose deliveries are stored");
            }
            false
        });
        if self.unstored.get(&current).copied().unwrap_or(0) == 0
            && self.written > 0
            && self.file.set_len(0).is_ok()
        {
            self.written = 0;
        }
    }
}

impl Intake {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Every change to the state is whole before anything that can panic.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Takes a delivery id for a request recording it straight into the database; gives it back
/// when dropped (the request may be cancelled mid-way).
struct DirectGuard<'a> {
    intake: &'a Intake,
    key: Key,
}

impl Drop for DirectGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.intake.state();
        if let Some(Slot::Direct(n)) = st.keys.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                st.keys.remove(&self.key);
                st.left += 1;
            }
        }
    }
}

/// The intake journal (see the module doc).
impl Store {
    /// Opens the intake journal in `dir` (created if missing) for this store, first storing
    /// what a previous process left in it. `Ok(false)`: no journal — the store is
    /// PostgreSQL's, or another process (or an earlier store in this one) holds the journal;
    /// deliveries are then recorded straight into the database.
    pub async fn open_intake_journal(&self, dir: &Path) -> Result<bool, StoreError> {
        if self.backend_name() != "sqlite" || self.intake.get().is_some() {
            return Ok(false);
        }
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        let lock_path = dir.join("lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_error(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                tracing::warn!(dir = %dir.display(), "another server holds the intake journal: webhook deliveries are recorded straight into the database");
                return Ok(false);
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_error(&lock_path)(e)),
        }
        let mut next = 0;
        for (n, path) in segments(dir)? {
            let bytes = std::fs::read(&path).map_err(io_error(&path))?;
            let (entries, damage) = decode(&bytes, n);
            if let Some(damage) = damage {
                tracing::warn!(path = %path.display(), "the intake journal has {damage}: the deliveries after it were never answered, and are dropped");
            }
            let mut stored = 0;
            for chunk in entries.chunks(REPLAY_BATCH) {
                let done = with_backend!(self, b => b.insert_journaled(chunk).await)?;
                stored += done.iter().filter(|&&s| s).count();
            }
            if stored > 0 {
                tracing::info!(deliveries = stored, path = %path.display(), "stored webhook deliveries a previous server journaled");
            }
            std::fs::remove_file(&path).map_err(io_error(&path))?;
            next = n + 1;
        }
        let mut known = HashSet::new();
        with_backend!(self, b => b.each_delivery_key(|project, delivery| {
            known.insert(known_hash(project, delivery));
        }).await)?;
        let state = State {
            file: open_segment(dir, next)?,
            segment: next,
            written: 0,
            pending: Vec::new(),
            keys: HashMap::new(),
            unstored: BTreeMap::new(),
            left: 0,
            dropped: HashSet::new(),
            known,
        };
        let intake = Intake {
            dir: dir.to_owned(),
            _lock: lock,
            state: Mutex::new(state),
            storing: tokio::sync::Mutex::new(()),
        };
        Ok(self.intake.set(intake).is_ok())
    }

    /// [`Store::record_delivery`] with the journal open: an accepted delivery claimed by this
    /// process is journaled, anything else recorded straight into the database.
    pub(crate) async fn record_through(
        &self,
        intake: &Intake,
        new: &NewDelivery,
        now: Timestamp,
    ) -> Result<(Recorded, Option<PackedBody>), StoreError> {
        let key: Key = (new.project, new.delivery.clone());
        if new.status != DeliveryStatus::Accepted || new.claim.is_none() {
            return Ok((self.record_direct(intake, key, new, now).await?, None));
        }
        let mut entry = Journaled {
            id: uuid::Uuid::now_v7().to_string(),
            project: new.project,
            provider: new.provider,
            delivery: new.delivery.clone(),
            event: new.event.clone(),
            // As the database keeps it, so that the answer and every read agree.
            received_at: Timestamp::from_millisecond(now.as_millisecond()).unwrap_or(now),
            size: i64::try_from(new.payload.len()).unwrap_or(i64::MAX),
            payload: bytes::Bytes::new(),
            claim: new.claim.clone(),
            segment: 0,
        };
        let hash = known_hash(&new.project.to_string(), &new.delivery);
        let mut record = None;
        for _ in 0..LOOKUPS {
            let (left, known) = {
                let st = intake.state();
                match st.keys.get(&key) {
                    Some(Slot::Journaled(first)) => {
                        return Ok((Recorded::Duplicate(first.clone()), None));
                    }
                    Some(Slot::Direct(_)) => break,
                    None => (st.left, st.known.contains(&hash)),
                }
            };
            if known
                && let Some(first) =
                    with_backend!(self, b => b.find_delivery(new.project, &new.delivery).await)?
            {
                return Ok((Recorded::Duplicate(first), None));
            }
            if record.is_none() {
                entry.payload = crate::hooks::pack_payload(&new.payload).into_owned().into();
                record = Some(encode(&entry));
            }
            let mut st = intake.state();
            match st.keys.get(&key) {
                Some(Slot::Journaled(first)) => {
                    return Ok((Recorded::Duplicate(first.clone()), None));
                }
                Some(Slot::Direct(_)) => break,
                None if st.left != left => continue,
                None => {
                    let view = entry.view();
                    let body = PackedBody::new(entry.payload.clone(), entry.size);
                    let record = record.as_deref().unwrap_or_default();
                    st.append(&intake.dir, entry, record)?;
                    st.known.insert(hash);
                    return Ok((Recorded::New(view), Some(body)));
                }
            }
        }
        Ok((self.record_direct(intake, key, new, now).await?, None))
    }

    /// Records `new` straight into the database, holding its delivery id meanwhile so that
    /// the journal cannot take it too.
    async fn record_direct(
        &self,
        intake: &Intake,
        key: Key,
        new: &NewDelivery,
        now: Timestamp,
    ) -> Result<Recorded, StoreError> {
        {
            let mut st = intake.state();
            match st.keys.get_mut(&key) {
                Some(Slot::Journaled(first)) => return Ok(Recorded::Duplicate(first.clone())),
                Some(Slot::Direct(n)) => *n += 1,
                None => {
                    st.keys.insert(key.clone(), Slot::Direct(1));
                }
            }
        }
        let _held = DirectGuard { intake, key };
        let recorded = with_backend!(self, b => b.record_delivery(new, now).await)?;
        // Known before its key is let go (when `_held` drops).
        let hash = known_hash(&new.project.to_string(), &new.delivery);
        intake.state().known.insert(hash);
        Ok(recorded)
    }

    /// Whether the journaled delivery `id` was dropped when it was stored: another process,
    /// writing the database straight (a second server on the same data without the journal),
    /// had recorded its provider delivery id meanwhile. Its runs must not start — that
    /// delivery's do. Answered once (the processor asks before it starts runs).
    pub fn dropped_from_intake(&self, id: &str) -> bool {
        self.intake
            .get()
            .is_some_and(|intake| intake.state().dropped.remove(id))
    }

    /// Stores the deliveries the intake journal answered for and holds (if it is open), in
    /// one transaction; the processor calls it before it creates their runs, and every read
    /// of deliveries before it reads.
    pub async fn flush_intake(&self) -> Result<(), StoreError> {
        let Some(intake) = self.intake.get() else {
            return Ok(());
        };
        let _one = intake.storing.lock().await;
        // Copied (their payloads shared), not taken: if this is cancelled or fails, they stay
        // journaled and held.
        let batch = {
            let st = intake.state();
            if st.pending.is_empty() {
                return Ok(());
            }
            st.pending.clone()
        };
        let stored = with_backend!(self, b => b.insert_journaled(&batch).await)?;
        let mut st = intake.state();
        // Appends only add at the end, and stores are one at a time: the first
        // `batch.len()` are the ones stored.
        let done: Vec<Journaled> = st.pending.drain(..batch.len()).collect();
        for (entry, stored) in done.iter().zip(stored) {
            if !stored {
                tracing::warn!(
                    delivery = entry.delivery,
                    id = entry.id,
                    "a journaled webhook delivery's id was recorded meanwhile: dropped"
                );
                st.dropped.insert(entry.id.clone());
            }
            st.keys.remove(&(entry.project, entry.delivery.clone()));
            if let Some(count) = st.unstored.get_mut(&entry.segment) {
                *count = count.saturating_sub(1);
            }
        }
        st.left += 1;
        st.drop_stored_segments(&intake.dir);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(delivery: &str, payload: &[u8]) -> Journaled {
        Journaled {
            id: uuid::Uuid::now_v7().to_string(),
            project: ProjectId::new(),
            provider: HookProvider::Github,
            delivery: delivery.to_owned(),
            event: "push".to_owned(),
            received_at: Timestamp::from_millisecond(1_700_000_000_123).unwrap(),
            size: i64::try_from(payload.len()).unwrap(),
            payload: bytes::Bytes::copy_from_slice(payload),
            claim: Some(DeliveryClaim {
                owner: "engine/serve-1".to_owned(),
                until: Timestamp::from_millisecond(1_700_000_600_000).unwrap(),
            }),
            segment: 7,
        }
    }

    #[test]
    fn records_read_back_whole_up_to_damage() {
        let a = entry("d-1", b"{\"ref\":\"refs/heads/main\"}");
        let b = entry("d-2", &[0xff, 0, 1, 2]);
        let mut bytes = encode(&a);
        bytes.extend(encode(&b));
        let (read, damage) = decode(&bytes, 7);
        assert_eq!(damage, None);
        assert_eq!(read.len(), 2);
        for (got, want) in read.iter().zip([&a, &b]) {
            assert_eq!(got.id, want.id);
            assert_eq!(got.project, want.project);
            assert_eq!(got.delivery, want.delivery);
            assert_eq!(got.payload, want.payload);
            assert_eq!(got.received_at, want.received_at);
            assert_eq!(got.claim, want.claim);
            assert_eq!(got.size, want.size);
        }

        // A record cut short by a crash: the ones before it are kept.
        let whole = encode(&a).len();
        let (read, damage) = decode(&bytes[..bytes.len() - 3], 7);
        assert_eq!(read.len(), 1);
        assert_eq!(
            damage.as_deref(),
            Some(format!("a record cut short at byte {whole}").as_str())
        );

        // A flipped bit: the checksum catches it, and nothing after it is trusted.
        let mut flipped = bytes.clone();
        flipped[20] ^= 1;
        let (read, damage) = decode(&flipped, 7);
        assert!(read.is_empty());
        assert_eq!(
            damage.as_deref(),
            Some("a record at byte 0 fails its checksum")
        );
        assert_eq!(decode(&[], 0).0.len(), 0);
    }
}
