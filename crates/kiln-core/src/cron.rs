//! Cron schedules (`on.schedule`): a 5-field pattern, as GitHub takes it, evaluated in an
//! IANA time zone (UTC unless the entry names one with kiln's `timezone:` key).
//!
//! The pattern search is croner's; croner walks the wall clock and asks a time type to
//! resolve wall-clock times in a zone. kiln's zones are jiff 1's, which croner does not
//! carry, so [`At`] connects the two. The rules at daylight-saving changes are croner's (and
//! Vixie cron's):
//! - spring forward (a wall-clock range never happens): a fixed-time entry (one minute of
//!   one hour, e.g. `30 2 * * *`) whose time falls in the gap fires once, at the first
//!   instant after the gap; an interval entry (`*/15 * * * *`) skips the missing times;
//! - fall back (a wall-clock range happens twice): a fixed-time entry fires once, on the
//!   earlier pass; an interval entry fires on both passes.
//!
//! Not here: storing next fire times or claiming fires (`kiln-store`), the scheduler task
//! (`kiln-engine`). Zone names are looked up in jiff's time zone database (the system's
//! `/usr/share/zoneinfo` on Linux).

use std::cmp::Ordering;
use std::fmt;

use croner::parser::{CronParser, Seconds, Year};
use croner::time::{CivilDate, CivilDateTime, CivilTime, CronDateTime, Resolution, Weekday};
use jiff::civil::DateTime;
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{SignedDuration, Timestamp, ZonedDateTime};

/// The zone of an entry without `timezone:` (GitHub's schedules are UTC).
pub const DEFAULT_ZONE: &str = "UTC";

/// A cron pattern with its zone, ready to say when it fires next.
#[derive(Clone, Debug)]
pub struct CronSchedule {
    expr: String,
    zone_name: String,
    pattern: croner::Cron,
    zone: TimeZone,
}

/// Why a pattern or zone is refused; the message says what a person should change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScheduleError {
    /// The cron pattern is not a valid 5-field pattern.
    Cron { expr: String, reason: String },
    /// The zone is not an IANA time zone name that the time zone database knows.
    Zone { name: String, reason: String },
}

impl fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cron { expr, reason } => write!(f, "invalid cron pattern `{expr}`: {reason}"),
            Self::Zone { name, reason } => write!(f, "unknown time zone `{name}`: {reason}"),
        }
    }
}

impl std::error::Error for ScheduleError {}

impl PartialEq for CronSchedule {
    fn eq(&self, other: &Self) -> bool {
        self.expr == other.expr && self.zone_name == other.zone_name
    }
}

impl CronSchedule {
    /// Parses `expr` (5 fields: minute hour day-of-month month day-of-week; names such as
    /// `MON` and `JAN`, and croner's `L`, `W` and `#`, are accepted) in `zone` (an IANA
    /// name; `None`: UTC).
    pub fn new(expr: &str, zone: Option<&str>) -> Result<Self, ScheduleError> {
        let pattern = parse_cron(expr)?;
        let (zone_name, zone) = match zone {
            None => (DEFAULT_ZONE.to_owned(), TimeZone::UTC),
            Some(name) => (name.to_owned(), parse_zone(name)?),
        };
        Ok(CronSchedule {
            expr: expr.to_owned(),
            zone_name,
            pattern,
            zone,
        })
    }

    /// The pattern as written.
    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The zone's name (`UTC` when the entry named none).
    pub fn zone_name(&self) -> &str {
        &self.zone_name
    }

    /// The first fire strictly after `after` (whole seconds; a pattern fires on minute
    /// boundaries), or `None` when the pattern never fires again (e.g. `0 0 30 2 *`).
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        let start = Timestamp::from_second(after.as_second()).ok()?;
        let at = At(start.to_zoned_datetime(self.zone.clone()));
        self.pattern
            .find_next_occurrence(&at, false)
            .ok()
            .map(|next| next.0.timestamp())
    }

    /// The fires in `(after, until]`, oldest first, at most `limit` of them.
    pub fn fires_between(
        &self,
        after: Timestamp,
        until: Timestamp,
        limit: usize,
    ) -> Vec<Timestamp> {
        let mut out = Vec::new();
        let mut cursor = after;
        while out.len() < limit {
            match self.next_after(cursor) {
                Some(next) if next <= until => {
                    out.push(next);
                    cursor = next;
                }
                _ => break,
            }
        }
        out
    }
}

/// Parses a 5-field cron pattern as GitHub takes it. Six fields (seconds) and nicknames
/// (`@daily`) are refused: GitHub refuses them, and a workflow must mean the same there.
pub fn parse_cron(expr: &str) -> Result<croner::Cron, ScheduleError> {
    let refuse = |reason: String| ScheduleError::Cron {
        expr: expr.to_owned(),
        reason,
    };
    let fields = expr.split_whitespace().count();
    if expr.trim_start().starts_with('@') {
        return Err(refuse(
            "nicknames such as `@daily` are not supported; write the 5 fields (e.g. `0 0 * * *`)"
                .to_owned(),
        ));
    }
    if fields != 5 {
        return Err(refuse(format!(
            "a pattern has 5 fields (minute hour day-of-month month day-of-week), this one has {fields}"
        )));
    }
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(expr)
        .map_err(|e| refuse(e.to_string()))
}

/// Looks up an IANA zone name (`Europe/Berlin`, `UTC`).
pub fn parse_zone(name: &str) -> Result<TimeZone, ScheduleError> {
    if name.trim().is_empty() {
        return Err(ScheduleError::Zone {
            name: name.to_owned(),
            reason: "the name is empty; write an IANA name such as `Europe/Berlin`".to_owned(),
        });
    }
    TimeZone::get(name).map_err(|e| ScheduleError::Zone {
        name: name.to_owned(),
        reason: format!("{e}; write an IANA name such as `Europe/Berlin` or `UTC`"),
    })
}

/// A zoned time as croner searches over it (croner carries an implementation for jiff 0.2
/// only).
#[derive(Clone, Debug)]
struct At(ZonedDateTime);

fn to_civil(dt: DateTime) -> CivilDateTime {
    // jiff keeps every part in range, so the unchecked constructors are sound.
    CivilDateTime::new(
        CivilDate::from_parts_unchecked(i32::from(dt.year()), dt.month() as u32, dt.day() as u32),
        CivilTime::from_parts_unchecked(dt.hour() as u32, dt.minute() as u32, dt.second() as u32),
    )
}

fn to_jiff(civil: CivilDateTime) -> Result<DateTime, croner::errors::CronError> {
    let year = i16::try_from(civil.year()).map_err(|_| croner::errors::CronError::InvalidDate)?;
    DateTime::new(
        year,
        civil.month() as i8,
        civil.day() as i8,
        civil.hour() as i8,
        civil.minute() as i8,
        civil.second() as i8,
        0,
    )
    .map_err(|_| croner::errors::CronError::InvalidDate)
}

impl CronDateTime for At {
    fn to_civil(&self) -> CivilDateTime {
        to_civil(self.0.datetime())
    }

    fn civil_weekday(&self) -> Weekday {
        Weekday::from_days_from_sunday(self.0.weekday().to_sunday_zero_offset() as u32)
    }

    fn resolve_civil(
        &self,
        civil: CivilDateTime,
    ) -> Result<Resolution<Self>, croner::errors::CronError> {
        let invalid = |_| croner::errors::CronError::InvalidTime;
        let dt = to_jiff(civil)?;
        let ambiguous = self.0.time_zone().to_ambiguous_zoned_datetime(dt);
        Ok(match ambiguous.offset() {
            AmbiguousOffset::Unambiguous { .. } => {
                Resolution::Single(At(ambiguous.unambiguous().map_err(invalid)?))
            }
            AmbiguousOffset::Fold { .. } => {
                let earlier = ambiguous.clone().earlier().map_err(invalid)?;
                let later = ambiguous.later().map_err(invalid)?;
                Resolution::Ambiguous(At(earlier), At(later))
            }
            AmbiguousOffset::Gap { .. } => Resolution::Gap,
        })
    }

    fn checked_add_seconds(&self, seconds: i64) -> Option<Self> {
        self.0
            .checked_add(SignedDuration::from_secs(seconds))
            .ok()
            .map(At)
    }

    fn cmp_instant(&self, other: &Self) -> Ordering {
        self.0.timestamp().cmp(&other.0.timestamp())
    }
}

#[cfg(test)]
mod tests;
