//! Typed ids and the status enums of DESIGN.md "State machines".
//!
//! Ids are UUIDv7 so that they sort by creation time in both database backends. Statuses
//! carry their wire spelling (`as_str`/`FromStr`), which is what the store writes and the
//! API prints; changing a spelling is a breaking change.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Declares a UUIDv7 id newtype: ordered by creation, `Display`/`FromStr` as the UUID, JSON
/// as the bare string. Exported for the other crates' ids (kiln-proto's tokens, schedules,
/// watches, notification receivers); they need `uuid` and `serde` as dependencies.
#[macro_export]
macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord,
            ::serde::Serialize, ::serde::Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub ::uuid::Uuid);

        impl $name {
            /// A new time-ordered id.
            pub fn new() -> Self {
                Self(::uuid::Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                self.0.fmt(f)
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = ::uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                ::uuid::Uuid::parse_str(s).map(Self)
            }
        }
    };
}

typed_id!(
    /// A project: a source of workflows.
    ProjectId
);
typed_id!(
    /// One run of one workflow.
    RunId
);
typed_id!(
    /// One job of a run (one matrix instance is one job).
    JobId
);

/// Error for a status spelling that is not one of the known ones.
#[derive(Debug, thiserror::Error)]
#[error("unknown {kind} status `{value}`")]
pub struct UnknownStatus {
    kind: &'static str,
    value: String,
}

macro_rules! status_enum {
    ($(#[$doc:meta])* $name:ident, $kind:literal, { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($variant),+
        }

        impl $name {
            /// Every status, in state-machine order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The wire spelling.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownStatus;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownStatus { kind: $kind, value: s.to_owned() }),
                }
            }
        }
    };
}

status_enum!(
    /// `pending → queued → running → {success | failure | cancelled}`; `waiting` while a job
    /// waits on a policy.
    RunStatus, "run", {
        Pending => "pending",
        Queued => "queued",
        Running => "running",
        Waiting => "waiting",
        Success => "success",
        Failure => "failure",
        Cancelled => "cancelled",
    }
);

impl RunStatus {
    /// Whether the run has ended.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Success | Self::Failure | Self::Cancelled)
    }
}

status_enum!(
    /// `pending → {queued | skipped} → (waiting) → leased → running → {success | failure |
    /// cancelled | timed_out | cached}`.
    JobStatus, "job", {
        Pending => "pending",
        Queued => "queued",
        Skipped => "skipped",
        Waiting => "waiting",
        Leased => "leased",
        Running => "running",
        Success => "success",
        Failure => "failure",
        Cancelled => "cancelled",
        TimedOut => "timed_out",
        Cached => "cached",
    }
);

impl JobStatus {
    /// Whether the job has ended.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Skipped
                | Self::Success
                | Self::Failure
                | Self::Cancelled
                | Self::TimedOut
                | Self::Cached
        )
    }

    /// Whether the job ended well enough for `success()` in its dependents.
    pub fn is_successful(self) -> bool {
        matches!(self, Self::Success | Self::Cached | Self::Skipped)
    }
}

status_enum!(
    /// What became of one step.
    StepStatus, "step", {
        Running => "running",
        Success => "success",
        Failure => "failure",
        Skipped => "skipped",
        Cancelled => "cancelled",
        TimedOut => "timed_out",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_through_their_spelling() {
        for s in JobStatus::ALL {
            assert_eq!(s.as_str().parse::<JobStatus>().unwrap(), *s);
        }
        for s in RunStatus::ALL {
            assert_eq!(s.as_str().parse::<RunStatus>().unwrap(), *s);
        }
        assert!("done".parse::<StepStatus>().is_err());
    }

    #[test]
    fn ids_parse_what_they_print() {
        let id = RunId::new();
        assert_eq!(id.to_string().parse::<RunId>().unwrap(), id);
    }
}
