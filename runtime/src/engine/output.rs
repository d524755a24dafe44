//! Guest output: what projectors write with the WIT `host.log` import (called "output" here,
//! so that "log" keeps meaning the event log), tagged with the projector's name and passed to
//! `tracing`, rate-limited per projector, and kept (the last [`KEPT_LINES`]) for
//! `GET /projectors/{name}/logs`.

use parking_lot::Mutex;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Lines kept per projector.
pub const KEPT_LINES: usize = 1000;
/// Lines a projector may write per second; more are dropped and counted.
pub const LINES_PER_SECOND: u32 = 100;
/// Longest message kept, in bytes (longer ones are cut at a character boundary).
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// One line a projector wrote.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct OutputLine {
    /// Increases by one per line kept, per projector, for paging (`?after=`).
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// `error`, `warn`, `info`, `debug` or `trace`.
    pub level: &'static str,
    /// The module (sha256) that wrote it.
    pub module: String,
    pub message: String,
}

/// Every projector's kept lines, by projector name.
#[derive(Clone, Default)]
pub struct GuestOutput {
    by_name: Arc<Mutex<HashMap<String, Arc<ProjectorOutput>>>>,
}

impl GuestOutput {
    /// The log of the projector `name`, created on first use.
    pub fn of(&self, name: &str) -> Arc<ProjectorOutput> {
        self.by_name
            .lock()
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// Forgets a deleted projector's lines.
    pub fn remove(&self, name: &str) {
        self.by_name.lock().remove(name);
    }
}

/// One projector's kept lines and rate limit.
#[derive(Default)]
pub struct ProjectorOutput {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    lines: VecDeque<OutputLine>,
    next_seq: u64,
    window_start: Option<Instant>,
    in_window: u32,
    dropped: u64,
}

impl ProjectorOutput {
    /// Records a line unless the projector is over its rate; returns the line as kept (cut to
    /// [`MAX_MESSAGE_BYTES`]) to pass on to `tracing`, or `None` when it was dropped.
    pub fn write<'m>(
        &self,
        level: tracing::Level,
        module: &str,
        message: &'m str,
    ) -> Option<&'m str> {
        let message = cut(message);
        self.write_at(Instant::now(), level, module, message)
            .then_some(message)
    }

    fn write_at(&self, now: Instant, level: tracing::Level, module: &str, message: &str) -> bool {
        let mut state = self.state.lock();
        let window_over = state
            .window_start
            .is_none_or(|start| now.duration_since(start) >= Duration::from_secs(1));
        if window_over {
            state.window_start = Some(now);
            state.in_window = 0;
        }
        if state.in_window >= LINES_PER_SECOND {
            state.dropped += 1;
            return false;
        }
        state.in_window += 1;
        let dropped = std::mem::take(&mut state.dropped);
        if dropped > 0 {
            let note = format!("{dropped} lines dropped: over {LINES_PER_SECOND} lines a second");
            tracing::warn!(module, "{note}");
            state.push(tracing::Level::WARN, module, note);
        }
        state.push(level, module, message.to_string());
        true
    }

    /// Oldest first: without `after`, the newest `limit` lines; with `after` (a `seq`), the
    /// first `limit` lines after it, so a reader paging forward misses none that are kept.
    pub fn lines(&self, after: Option<u64>, limit: usize) -> Vec<OutputLine> {
        let state = self.state.lock();
        match after {
            None => {
                let skip = state.lines.len().saturating_sub(limit);
                state.lines.iter().skip(skip).cloned().collect()
            }
            Some(after) => state
                .lines
                .iter()
                .filter(|line| line.seq > after)
                .take(limit)
                .cloned()
                .collect(),
        }
    }
}

impl State {
    fn push(&mut self, level: tracing::Level, module: &str, message: String) {
        if self.lines.len() == KEPT_LINES {
            self.lines.pop_front();
        }
        self.next_seq += 1;
        self.lines.push_back(OutputLine {
            seq: self.next_seq,
            at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            level: level_name(level),
            module: module.to_string(),
            message,
        });
    }
}

fn level_name(level: tracing::Level) -> &'static str {
    match level {
        tracing::Level::ERROR => "error",
        tracing::Level::WARN => "warn",
        tracing::Level::INFO => "info",
        tracing::Level::DEBUG => "debug",
        _ => "trace",
    }
}

/// `message` cut to [`MAX_MESSAGE_BYTES`] at a character boundary: every text a guest hands
/// the host (log lines, error messages) is cut before it is kept or shown.
pub fn cut(message: &str) -> &str {
    if message.len() <= MAX_MESSAGE_BYTES {
        return message;
    }
    let mut end = MAX_MESSAGE_BYTES;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    #[test]
    fn over_the_rate_lines_are_dropped_then_counted() {
        let log = ProjectorOutput::default();
        let start = Instant::now();
        let kept = (0..LINES_PER_SECOND + 50)
            .filter(|i| log.write_at(start, Level::INFO, "m", &format!("line {i}")))
            .count();
        assert_eq!(kept, LINES_PER_SECOND as usize);
        assert!(log.write_at(start + Duration::from_secs(1), Level::ERROR, "m", "after"));
        let lines = log.lines(Some(LINES_PER_SECOND as u64), 10);
        let messages: Vec<&str> = lines.iter().map(|l| l.message.as_str()).collect();
        assert_eq!(
            messages,
            ["50 lines dropped: over 100 lines a second", "after"]
        );
        assert_eq!(lines[1].level, "error");
    }

    #[test]
    fn only_the_last_lines_are_kept_and_paged_by_seq() {
        let log = ProjectorOutput::default();
        let mut now = Instant::now();
        for i in 0..KEPT_LINES + 10 {
            if i % 50 == 0 {
                now += Duration::from_secs(1);
            }
            assert!(log.write_at(now, Level::INFO, "m", &i.to_string()));
        }
        let all = log.lines(None, usize::MAX);
        assert_eq!(all.len(), KEPT_LINES);
        assert_eq!(all[0].message, "10");
        let last_two = log.lines(None, 2);
        assert_eq!(last_two[1].seq, (KEPT_LINES + 10) as u64);
        assert_eq!(log.lines(Some(last_two[1].seq), 10), []);
    }

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        let long = "é".repeat(MAX_MESSAGE_BYTES);
        let cut = cut(&long);
        assert!(cut.len() <= MAX_MESSAGE_BYTES && cut.len() >= MAX_MESSAGE_BYTES - 1);
    }
}
