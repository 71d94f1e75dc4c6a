//! Pacing for things that fail and must be retried forever (binding a port, loading the
//! certificate, accepting): how long to wait, and how often to say so in the log.

use std::time::{Duration, Instant};

/// The same complaint is repeated at most this often. CF apps run for weeks; a missing file
/// retried every 5 s must not fill the log.
pub(crate) const LOG_REPEAT: Duration = Duration::from_secs(10);

/// Doubling delays between `min` and `max`.
#[derive(Debug)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            next: min,
        }
    }

    /// The delay to wait now; the one after is twice as long, up to `max`.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let now = self.next;
        self.next = (now * 2).min(self.max);
        now
    }

    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Lets a new message through at once and the same message again only after `every`.
#[derive(Debug)]
pub(crate) struct LogThrottle {
    every: Duration,
    last: Option<(String, Instant)>,
    suppressed: u64,
}

impl LogThrottle {
    pub(crate) fn new(every: Duration) -> Self {
        LogThrottle {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(n)` when `message` should be logged now, `n` being how many identical ones were
    /// held back since it was last logged.
    pub(crate) fn allow(&mut self, message: &str) -> Option<u64> {
        let now = Instant::now();
        let repeat = match &self.last {
            Some((last, at)) if last == message => now.duration_since(*at) < self.every,
            _ => false,
        };
        if repeat {
            self.suppressed += 1;
            return None;
        }
        let held_back = match &self.last {
            Some((last, _)) if last == message => self.suppressed,
            _ => 0,
        };
        self.last = Some((message.to_owned(), now));
        self.suppressed = 0;
        Some(held_back)
    }

    /// Forgets the last message, so the next failure is logged at once.
    pub(crate) fn clear(&mut self) {
        self.last = None;
        self.suppressed = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(250), Duration::from_secs(1));
        let delays: Vec<u128> = (0..4).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [250, 500, 1000, 1000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(250));
    }

    #[test]
    fn the_same_message_is_held_back_and_a_new_one_passes() {
        let mut t = LogThrottle::new(Duration::from_secs(3600));
        assert_eq!(t.allow("a"), Some(0));
        assert_eq!(t.allow("a"), None);
        assert_eq!(t.allow("b"), Some(0));
        t.clear();
        assert_eq!(t.allow("b"), Some(0));

        let mut t = LogThrottle::new(Duration::ZERO);
        assert_eq!(t.allow("a"), Some(0));
        assert_eq!(t.allow("a"), Some(0));
    }
}
