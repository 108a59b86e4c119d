//! Schedules as the API shows them (`/api/v1/schedules`, `kiln schedule list --format json`):
//! one per `on.schedule` entry of a project's workflows, with when it fires next.
//!
//! A schedule's id is stable while its entry stays at the same place (project, workflow
//! file, index in `on.schedule`), so that `stop` survives the periodic re-read of the files.
//! Not here: computing fire times (`kiln_core::cron`), storing or claiming fires.

use jiff::Timestamp;
use kiln_core::ids::{ProjectId, RunId};
use serde::{Deserialize, Serialize};

kiln_core::typed_id!(
    /// A schedule's id.
    ScheduleId
);

/// Whether a schedule fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ScheduleState {
    /// Fires at `next_fire_at`.
    Active,
    /// Stopped by a maintainer (`POST /schedules/{id}/stop`); stays stopped until started,
    /// whatever the workflow file says.
    Stopped,
}

/// One schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ScheduleView {
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
    pub id: ScheduleId,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Uuid))]
    pub project: ProjectId,
    pub project_name: String,
    /// The workflow file (`.kiln/workflows/nightly.yml`).
    pub workflow: String,
    /// The entry's index in the file's `on.schedule` list.
    pub index: u32,
    /// The 5-field pattern, as written (`github.event.schedule` of its runs).
    pub cron: String,
    /// The IANA zone the pattern is read in (`UTC` unless the entry says `timezone:`).
    pub timezone: String,
    /// `one` (a fire missed while no server ran runs once) or `none` (it is skipped).
    pub catch_up: String,
    pub state: ScheduleState,
    /// The next fire; `null` when stopped or when the pattern never fires again.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub next_fire_at: Option<Timestamp>,
    /// The last fire that started (or tried to start) a run.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub last_fired_at: Option<Timestamp>,
    /// The run of the last fire, when it started one.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = Uuid))]
    pub last_run: Option<RunId>,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: Timestamp,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub updated_at: Timestamp,
}

/// `GET /api/v1/schedules`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ScheduleList {
    /// Soonest next fire first; stopped schedules last.
    pub schedules: Vec<ScheduleView>,
}
