//! The kubelet's restart backoff, as a plain value (no clock inside): the
//! first restart is immediate, then each waits `base`, doubling up to `cap`;
//! a container that ran for `reset_after` starts over at the beginning.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    pub base: Duration,
    pub cap: Duration,
    pub reset_after: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            base: Duration::from_secs(10),
            cap: Duration::from_secs(300),
            reset_after: Duration::from_secs(600),
        }
    }
}

/// Backoff state of one container (or one image pull).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the next restart; zero until the first restart.
    next: Duration,
}

impl Backoff {
    /// How long to wait before restarting a container that ran for `ran`.
    pub fn delay(&self, policy: &BackoffPolicy, ran: Duration) -> Duration {
        if ran >= policy.reset_after { Duration::ZERO } else { self.next }
    }

    /// Records a restart of a container that ran for `ran`.
    pub fn restarted(&mut self, policy: &BackoffPolicy, ran: Duration) {
        if ran >= policy.reset_after || self.next.is_zero() {
            self.next = policy.base;
        } else {
            self.next = (self.next * 2).min(policy.cap);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_and_resets_after_a_long_run() {
        let p = BackoffPolicy::default();
        let short = Duration::from_secs(1);
        let mut b = Backoff::default();
        let mut delays = Vec::new();
        for _ in 0..8 {
            delays.push(b.delay(&p, short).as_secs());
            b.restarted(&p, short);
        }
        assert_eq!(delays, vec![0, 10, 20, 40, 80, 160, 300, 300]);
        let long = Duration::from_secs(601);
        assert_eq!(b.delay(&p, long), Duration::ZERO, "a container that ran 10 minutes restarts at once");
        b.restarted(&p, long);
        assert_eq!(b.delay(&p, short), Duration::from_secs(10), "and the doubling starts over");
    }
}
