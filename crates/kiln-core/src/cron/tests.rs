use jiff::Timestamp;

use super::*;

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn fires(expr: &str, zone: Option<&str>, after: &str, n: usize) -> Vec<String> {
    let s = CronSchedule::new(expr, zone).unwrap();
    let mut out = Vec::new();
    let mut cursor = ts(after);
    for _ in 0..n {
        cursor = s.next_after(cursor).expect("fires again");
        out.push(cursor.to_string());
    }
    out
}

#[test]
fn utc_is_the_default_and_next_is_strictly_after() {
    let s = CronSchedule::new("0 3 * * *", None).unwrap();
    assert_eq!(s.zone_name(), "UTC");
    assert_eq!(s.expr(), "0 3 * * *");
    assert_eq!(
        s.next_after(ts("2026-01-01T00:00:00Z")),
        Some(ts("2026-01-01T03:00:00Z"))
    );
    assert_eq!(
        s.next_after(ts("2026-01-01T03:00:00Z")),
        Some(ts("2026-01-02T03:00:00Z"))
    );
    // Sub-seconds past a fire do not make it fire again.
    assert_eq!(
        s.next_after(ts("2026-01-01T03:00:00.5Z")),
        Some(ts("2026-01-02T03:00:00Z"))
    );
}

#[test]
fn every_minute_and_names() {
    assert_eq!(
        fires("* * * * *", None, "2026-05-01T10:00:30Z", 2),
        ["2026-05-01T10:01:00Z", "2026-05-01T10:02:00Z"]
    );
    // Weekdays by name: 2026-05-01 is a Friday, the next Monday is 05-04.
    assert_eq!(
        fires("15 9 * * MON", None, "2026-05-01T00:00:00Z", 1),
        ["2026-05-04T09:15:00Z"]
    );
    // croner's `L`: the last day of the month.
    assert_eq!(
        fires("0 0 L * *", None, "2026-02-01T00:00:00Z", 2),
        ["2026-02-28T00:00:00Z", "2026-03-31T00:00:00Z"]
    );
}

#[test]
fn a_zone_shifts_fires_by_its_offset() {
    // Berlin is UTC+1 in winter and UTC+2 in summer.
    assert_eq!(
        fires(
            "0 3 * * *",
            Some("Europe/Berlin"),
            "2026-01-10T00:00:00Z",
            1
        ),
        ["2026-01-10T02:00:00Z"]
    );
    assert_eq!(
        fires(
            "0 3 * * *",
            Some("Europe/Berlin"),
            "2026-07-10T00:00:00Z",
            1
        ),
        ["2026-07-10T01:00:00Z"]
    );
}

// Europe/Berlin 2026: 03-29 02:00 CET → 03:00 CEST (02:00–02:59 never happens);
// 10-25 03:00 CEST → 02:00 CET (02:00–02:59 happens twice).

#[test]
fn spring_forward_fixed_time_in_the_gap_fires_once_after_it() {
    assert_eq!(
        fires(
            "30 2 * * *",
            Some("Europe/Berlin"),
            "2026-03-28T12:00:00Z",
            2
        ),
        [
            // 03:00 CEST, the first instant after the gap.
            "2026-03-29T01:00:00Z",
            // 02:30 CEST the next day.
            "2026-03-30T00:30:00Z",
        ]
    );
}

#[test]
fn spring_forward_interval_skips_the_missing_times() {
    assert_eq!(
        fires(
            "*/30 * * * *",
            Some("Europe/Berlin"),
            "2026-03-29T00:00:00Z",
            3
        ),
        [
            "2026-03-29T00:30:00Z", // 01:30 CET
            "2026-03-29T01:00:00Z", // 03:00 CEST (02:00 and 02:30 never happen)
            "2026-03-29T01:30:00Z", // 03:30 CEST
        ]
    );
}

#[test]
fn fall_back_fixed_time_fires_once_on_the_earlier_pass() {
    assert_eq!(
        fires(
            "30 2 * * *",
            Some("Europe/Berlin"),
            "2026-10-24T12:00:00Z",
            2
        ),
        [
            "2026-10-25T00:30:00Z", // 02:30 CEST; not again at 02:30 CET (01:30Z)
            "2026-10-26T01:30:00Z", // 02:30 CET the next day
        ]
    );
    // Asked from inside the repeated hour, after the fire: still not again that day.
    assert_eq!(
        fires(
            "30 2 * * *",
            Some("Europe/Berlin"),
            "2026-10-25T01:10:00Z",
            1
        ),
        ["2026-10-26T01:30:00Z"]
    );
}

#[test]
fn fall_back_interval_fires_on_both_passes() {
    assert_eq!(
        fires(
            "*/30 * * * *",
            Some("Europe/Berlin"),
            "2026-10-24T23:45:00Z",
            5
        ),
        [
            "2026-10-25T00:00:00Z", // 02:00 CEST
            "2026-10-25T00:30:00Z", // 02:30 CEST
            "2026-10-25T01:00:00Z", // 02:00 CET
            "2026-10-25T01:30:00Z", // 02:30 CET
            "2026-10-25T02:00:00Z", // 03:00 CET
        ]
    );
}

// America/New_York 2026: 03-08 02:00 EST → 03:00 EDT; 11-01 02:00 EDT → 01:00 EST.

#[test]
fn new_york_both_transitions() {
    assert_eq!(
        fires(
            "0 2 * * *",
            Some("America/New_York"),
            "2026-03-07T00:00:00Z",
            2
        ),
        [
            "2026-03-07T07:00:00Z", // 02:00 EST
            "2026-03-08T07:00:00Z", // 02:00 never happens: 03:00 EDT
        ]
    );
    assert_eq!(
        fires(
            "0 2 * * *",
            Some("America/New_York"),
            "2026-03-08T12:00:00Z",
            1
        ),
        ["2026-03-09T06:00:00Z"] // 02:00 EDT
    );
    assert_eq!(
        fires(
            "30 1 * * *",
            Some("America/New_York"),
            "2026-10-31T12:00:00Z",
            2
        ),
        [
            "2026-11-01T05:30:00Z", // 01:30 EDT, once
            "2026-11-02T06:30:00Z", // 01:30 EST the next day
        ]
    );
    assert_eq!(
        fires(
            "0,30 1 * * *",
            Some("America/New_York"),
            "2026-11-01T04:00:00Z",
            4
        ),
        [
            "2026-11-01T05:00:00Z", // 01:00 EDT
            "2026-11-01T05:30:00Z", // 01:30 EDT
            "2026-11-01T06:00:00Z", // 01:00 EST
            "2026-11-01T06:30:00Z", // 01:30 EST
        ]
    );
}

#[test]
fn fires_between_is_bounded() {
    let s = CronSchedule::new("* * * * *", None).unwrap();
    let got = s.fires_between(ts("2026-01-01T00:00:00Z"), ts("2026-01-01T00:05:00Z"), 3);
    assert_eq!(
        got,
        [
            ts("2026-01-01T00:01:00Z"),
            ts("2026-01-01T00:02:00Z"),
            ts("2026-01-01T00:03:00Z")
        ]
    );
    assert_eq!(
        s.fires_between(ts("2026-01-01T00:00:00Z"), ts("2026-01-01T00:02:00Z"), 10)
            .len(),
        2
    );
}

#[test]
fn a_pattern_that_never_fires_says_so() {
    let s = CronSchedule::new("0 0 30 2 *", None).unwrap();
    assert_eq!(s.next_after(ts("2026-01-01T00:00:00Z")), None);
}

#[test]
fn bad_patterns_and_zones_are_refused() {
    for (expr, needle) in [
        ("0 0 * * * *", "5 fields"),
        ("0 * * *", "5 fields"),
        ("", "5 fields"),
        ("@daily", "nicknames"),
        ("61 * * * *", "61"),
        ("* 24 * * *", "24"),
        ("x * * * *", ""),
    ] {
        let e = CronSchedule::new(expr, None).unwrap_err();
        assert!(matches!(e, ScheduleError::Cron { .. }), "{expr}: {e}");
        assert!(e.to_string().contains(needle), "{expr}: {e}");
    }
    for zone in ["Mars/Olympus_Mons", "", "Europe/Berlín"] {
        let e = CronSchedule::new("0 3 * * *", Some(zone)).unwrap_err();
        assert!(matches!(e, ScheduleError::Zone { .. }), "{zone}: {e}");
    }
    assert!(CronSchedule::new("0 3 * * *", Some("UTC")).is_ok());
    assert!(CronSchedule::new("0 3 * * *", Some("Asia/Kolkata")).is_ok());
}
