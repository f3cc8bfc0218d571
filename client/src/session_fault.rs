//! The sessions' fault row (`make test-compose` and `make test-k8s`, step 4b): sessions held by
//! `poc-client sessions --json --progress-json` while one owner is killed and comes back.
//!
//! [`last_progress`] reads where the run is now from the progress file (what
//! `poc-client sessions-progress` prints and judges while the script waits), and [`judge`] decides,
//! from the final report and every progress line, whether exactly the killed owner's sessions
//! broke, each once, and all came back in time (`poc-client sessions-fault`).

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::sessions::{Percentiles, Progress, Report};

/// The last progress line of a `--progress-json` file's `text`, if it is one. A line still
/// being written (no newline yet) is not read: the line before it is the last complete one.
pub fn last_progress(text: &str) -> Option<Progress> {
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => return None,
    };
    let line = complete.rsplit('\n').next().unwrap_or_default();
    serde_json::from_str(line.trim()).ok()
}

/// Every progress line of a finished run's `text`, in order: the lines that start with `{`
/// (anything else a run may print is skipped). A `{` line that is not a progress line is an
/// error, with its line number.
pub fn progress_lines(text: &str) -> Result<Vec<Progress>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| line.starts_with('{'))
        .map(|(i, line)| {
            serde_json::from_str(line)
                .map_err(|e| format!("line {} is not a progress line ({e}): {line:.120}", i + 1))
        })
        .collect()
}

/// When every one of `sessions` was up again after the fault: the first line with all of them
/// up from the first line that shows the drop, itself after the first line with all up (the
/// owner may be running again before its clients see their sessions break, so the drop is
/// looked for only once all were up). A line shows the drop when some session is down, or when
/// more sessions have closed unexpectedly than when all were first up: a restart that beats the
/// clients (they see a killed owner only at their next ping) can have them all back before the
/// next line is written, and then that line, with all up, is when they were back. `None` if
/// they never all dropped and came back.
pub fn back_at(lines: &[Progress], sessions: usize) -> Option<u64> {
    let all_up = lines
        .iter()
        .position(|l| l.up == sessions)
        .unwrap_or(lines.len());
    let closed_before = lines.get(all_up)?.unexpected_closes;
    let down = all_up
        + lines[all_up..]
            .iter()
            .position(|l| l.up < sessions || l.unexpected_closes > closed_before)?;
    lines[down..]
        .iter()
        .find(|l| l.up == sessions)
        .map(|l| l.unix_ms)
}

/// What the fault row requires.
#[derive(Debug, Clone, Copy)]
pub struct FaultExpect {
    /// The instance that was killed.
    pub instance: u64,
    /// When it was started again (unix ms).
    pub since_ms: u64,
    /// Every session must be up again within this long of `since_ms`.
    pub within_ms: u64,
}

/// The figures of a fault row that passed (`target/bench/faults/<fault>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FaultFigures {
    pub sessions: usize,
    pub dropped: u64,
    pub refused_connects: u64,
    /// From `since_ms` to every session up again.
    pub back_ms: i64,
    pub no_session_ms: Percentiles,
}

impl FaultFigures {
    /// The line a passing row prints.
    pub fn summary(&self, instance: u64) -> String {
        format!(
            "{} of {} sessions dropped with their owner (instance {instance}), each once, no other closed; all back {} ms after it was started ({} reconnects refused meanwhile; no session for at most {} ms)",
            self.dropped, self.sessions, self.back_ms, self.refused_connects, self.no_session_ms.max
        )
    }
}

/// Why a fault row failed: what was checked, what it required and what the run saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub what: String,
    pub expected: String,
    pub received: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "FAIL: {}\nEXPECTED {}\nRECEIVED {}",
            self.what, self.expected, self.received
        )
    }
}

/// Judges a fault row, once the killed owner is back and the client has stopped: every session
/// is up on its owner; the sessions that broke were all on the killed instance, each broke once
/// (more than none, fewer than all), and none was closed as "moved"; and all were up again
/// within `within_ms` of `since_ms`.
pub fn judge(
    report: &Report,
    lines: &[Progress],
    expect: &FaultExpect,
) -> Result<FaultFigures, Failure> {
    let n = report.sessions;
    let dropped = report.unexpected_closes;
    let victim = expect.instance;
    let by_instance = |map: &BTreeMap<u64, u64>| {
        map.iter()
            .map(|(i, c)| format!("{i}: {c}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let wanted = BTreeMap::from([(victim, dropped)]);
    let right = report.up == n
        && report.on_owner == Some(n)
        && report.moved == 0
        && report.unexpected_by_instance == wanted
        && report.most_unexpected_per_session == 1
        && 0 < dropped
        && dropped < n as u64;
    if !right {
        return Err(Failure {
            what: format!("sessions through the kill of instance {victim}"),
            expected: format!(
                "up {n}, on their owner {n}, moved 0, unexpected closes by instance {{{}}}, at most 1 per session (0 < {dropped} dropped < {n})",
                by_instance(&wanted)
            ),
            received: format!(
                "up {}, on their owner {}, moved {}, unexpected closes by instance {{{}}}, at most {} per session",
                report.up,
                report.on_owner.map_or("-".to_owned(), |o| o.to_string()),
                report.moved,
                by_instance(&report.unexpected_by_instance),
                report.most_unexpected_per_session
            ),
        });
    }
    let back_ms = back_at(lines, n).map(|at| at as i64 - expect.since_ms as i64);
    match back_ms {
        Some(ms) if ms <= expect.within_ms as i64 => Ok(FaultFigures {
            sessions: n,
            dropped,
            refused_connects: report.refused_connects,
            back_ms: ms,
            no_session_ms: report.no_session_ms.clone(),
        }),
        _ => Err(Failure {
            what: "the killed owner's sessions back".to_owned(),
            expected: format!("within {} ms", expect.within_ms),
            received: back_ms.map_or_else(
                || "never all back up after they dropped".to_owned(),
                |ms| format!("{ms} ms"),
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(unix_ms: u64, up: usize) -> Progress {
        Progress {
            unix_ms,
            sessions: 10,
            up,
            moved: 0,
            unexpected_closes: 0,
            refused_connects: 0,
        }
    }

    fn closed(unix_ms: u64, up: usize, unexpected_closes: u64) -> Progress {
        Progress {
            unexpected_closes,
            ..line(unix_ms, up)
        }
    }

    fn report(by_instance: &[(u64, u64)]) -> Report {
        let dropped = by_instance.iter().map(|(_, c)| c).sum();
        Report {
            sessions: 10,
            up: 10,
            on_owner: Some(10),
            moved: 0,
            unexpected_closes: dropped,
            unexpected_by_instance: by_instance.iter().copied().collect(),
            most_unexpected_per_session: 1,
            refused_connects: 40,
            reconnect_ms: Percentiles::default(),
            no_session_ms: Percentiles::of(vec![100, 4000]),
            seconds: 12.0,
        }
    }

    fn text(lines: &[Progress]) -> String {
        lines
            .iter()
            .map(|l| serde_json::to_string(l).unwrap() + "\n")
            .collect()
    }

    #[test]
    fn the_last_complete_line_is_read() {
        let full = text(&[line(1, 3), line(2, 10)]);
        assert_eq!(last_progress(&full).map(|p| p.up), Some(10));
        // A line half written: the one before it.
        assert_eq!(
            last_progress(&(full.clone() + "{\"unix_ms\": 3, \"up")).map(|p| p.up),
            Some(10)
        );
        assert_eq!(last_progress(""), None);
        assert_eq!(last_progress("{\"unix_ms\": 3"), None);
        assert_eq!(last_progress(&(full + "thread panicked\n")), None);
    }

    #[test]
    fn progress_lines_skip_what_is_not_json() {
        let t = format!("starting\n{}", text(&[line(1, 3), line(2, 10)]));
        assert_eq!(progress_lines(&t).unwrap().len(), 2);
        let err = progress_lines("{\"up\": 1}\n").unwrap_err();
        assert!(err.starts_with("line 1 is not a progress line"), "{err}");
    }

    #[test]
    fn back_is_after_a_drop_that_follows_all_up() {
        // Coming up, all up, the drop, back at 500.
        let lines = [
            line(100, 4),
            line(200, 10),
            line(300, 10),
            line(400, 6),
            line(450, 8),
            line(500, 10),
            line(600, 10),
        ];
        assert_eq!(back_at(&lines, 10), Some(500));
        // Never dropped, or dropped and never back.
        assert_eq!(back_at(&lines[..3], 10), None);
        assert_eq!(back_at(&lines[..5], 10), None);
        // Never all up at first.
        assert_eq!(back_at(&[line(1, 4), line(2, 5)], 10), None);
    }

    #[test]
    fn a_drop_between_two_lines_is_seen_by_its_closes() {
        // All back before the next line was written: that line is when they were back.
        let lines = [
            line(100, 10),
            line(300, 10),
            closed(500, 10, 4),
            closed(700, 10, 4),
        ];
        assert_eq!(back_at(&lines, 10), Some(500));
        // Seen down, then back.
        let lines = [line(100, 10), closed(300, 7, 3), closed(500, 10, 3)];
        assert_eq!(back_at(&lines, 10), Some(500));
        // Closes from before all were up do not count as the drop.
        let lines = [closed(100, 9, 1), closed(300, 10, 1), closed(500, 10, 1)];
        assert_eq!(back_at(&lines, 10), None);
    }

    #[test]
    fn exactly_the_victims_sessions_each_once_in_time() {
        let lines = [line(1000, 10), line(1200, 7), line(4500, 10)];
        let expect = FaultExpect {
            instance: 2,
            since_ms: 3000,
            within_ms: 6000,
        };
        let figures = judge(&report(&[(2, 3)]), &lines, &expect).unwrap();
        assert_eq!(figures.back_ms, 1500);
        assert_eq!(figures.dropped, 3);
        assert_eq!(
            figures.summary(2),
            "3 of 10 sessions dropped with their owner (instance 2), each once, no other closed; all back 1500 ms after it was started (40 reconnects refused meanwhile; no session for at most 4000 ms)"
        );

        // Another instance's session broke too.
        let e = judge(&report(&[(1, 1), (2, 3)]), &lines, &expect).unwrap_err();
        assert_eq!(e.what, "sessions through the kill of instance 2");
        assert!(e.received.contains("{1: 1, 2: 3}"), "{e}");
        // None broke; every one broke.
        assert!(judge(&report(&[]), &lines, &expect).is_err());
        assert!(judge(&report(&[(2, 10)]), &lines, &expect).is_err());
        // One broke twice; one was moved; one is not on its owner.
        let mut r = report(&[(2, 3)]);
        r.most_unexpected_per_session = 2;
        assert!(judge(&r, &lines, &expect).is_err());
        let mut r = report(&[(2, 3)]);
        r.moved = 1;
        assert!(judge(&r, &lines, &expect).is_err());
        let mut r = report(&[(2, 3)]);
        r.on_owner = None;
        assert!(judge(&r, &lines, &expect).is_err());

        // Too late, or never back.
        let late = FaultExpect {
            within_ms: 1000,
            ..expect
        };
        let e = judge(&report(&[(2, 3)]), &lines, &late).unwrap_err();
        assert_eq!(e.received, "1500 ms");
        let e = judge(&report(&[(2, 3)]), &lines[..2], &expect).unwrap_err();
        assert_eq!(e.what, "the killed owner's sessions back");
    }
}
