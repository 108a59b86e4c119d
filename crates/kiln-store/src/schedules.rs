//! Schedules (`on.schedule`) as the store keeps them: what a sync of a project's workflow
//! files says, and the fires schedulers claim.
//!
//! A fire is claimed by inserting (schedule, fire time) — unique — in the transaction that
//! moves the schedule's `next_fire_at` on from that very fire time; so however many replicas
//! tick at once, one of them runs a fire and the others find it gone (DESIGN.md "Storage":
//! replicas share one PostgreSQL). Deciding when a fire is due, what a missed fire does and
//! starting its run is the engine's (`kiln_engine::schedule`). Next fire times are computed
//! here, with `kiln_core::cron`, whenever a schedule is new, changed or started again.

use jiff::Timestamp;
use kiln_core::ids::RunId;
use kiln_core::workflow::CatchUp;
use kiln_proto::ScheduleId;
use uuid::Uuid;

/// One `on.schedule` entry of a workflow file, as a sync reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduleDef {
    /// The workflow file (`.kiln/workflows/nightly.yml`).
    pub workflow: String,
    /// The entry's index in the file's `on.schedule` list.
    pub index: u32,
    pub cron: String,
    /// An IANA zone name (`UTC` when the entry names none).
    pub timezone: String,
    pub catch_up: CatchUp,
}

/// What a sync changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// New schedules (or ones back in their file).
    pub added: usize,
    /// Schedules whose pattern, zone or catch-up changed.
    pub changed: usize,
    /// Schedules whose entry left its file.
    pub removed: usize,
}

/// What a claimed fire does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FireKind {
    /// Start a run (recorded as `claimed` until [`crate::Store::finish_fire`]).
    Run,
    /// Nothing: the fire was missed while no server ran and the schedule says
    /// `catch-up: none` (recorded as `skipped`).
    Skip,
}

/// One claimed fire, as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fire {
    pub id: Uuid,
    pub schedule: ScheduleId,
    pub fire_at: Timestamp,
    pub claimed_at: Timestamp,
    /// The replica (engine owner id) that claimed it.
    pub claimed_by: String,
    /// `claimed`, `started`, `skipped` or `failed`.
    pub outcome: String,
    pub run: Option<RunId>,
    pub error: Option<String>,
}
