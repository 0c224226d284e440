//! GCRA (the generic cell rate algorithm): a token bucket kept as one number.
//!
//! The state of a key is its *theoretical arrival time* (TAT): when the next
//! request would be on schedule if requests came exactly at the sustained
//! rate. A request is admitted if admitting it keeps the TAT within `burst`
//! emission intervals of now. One integer per key, no refill timer; the
//! in-process store and the Redis script (`crate::cluster::script`) run the
//! same arithmetic, in nanoseconds and microseconds respectively.

use std::time::Duration;

use crate::config::model::QuotaLimit;

/// A limit in the units of one clock (nanoseconds or microseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// Time between requests at the sustained rate (at least one unit).
    pub interval: u64,
    /// `burst` intervals: how far ahead of now the TAT may run.
    pub tolerance: u64,
}

/// The outcome for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Requests that would still be admitted right now.
    pub remaining: u32,
    /// Until a refused request would be admitted (zero when allowed).
    pub retry_after: Duration,
    /// Until the bucket is full again (`burst` requests at once).
    pub reset: Duration,
}

impl Gcra {
    /// `rate_per_second` and `burst` in nanoseconds (tests).
    #[cfg(test)]
    pub fn per_second_ns(rate_per_second: f64, burst: u32) -> Gcra {
        Gcra::new(
            QuotaLimit {
                rate_per_second,
                burst,
            },
            1e9,
        )
    }

    /// `limit` in a clock of `units_per_second` (1e9 for ns, 1e6 for µs).
    pub fn new(limit: QuotaLimit, units_per_second: f64) -> Gcra {
        // Rates are validated (0 < rate <= 1e9): the interval is finite and
        // positive; rounding a sub-unit interval up to one unit caps the
        // rate at the clock's resolution.
        let interval = (units_per_second / limit.rate_per_second).round().max(1.0) as u64;
        Gcra {
            interval,
            tolerance: interval.saturating_mul(u64::from(limit.burst)),
        }
    }

    /// Decide for a key whose TAT is `tat` (0 for a key never seen) at
    /// `now`; returns the decision and, when admitted, the new TAT to store.
    pub fn decide(&self, tat: u64, now: u64, unit: Duration) -> (Decision, Option<u64>) {
        let tat = tat.max(now);
        let new_tat = tat.saturating_add(self.interval);
        let allow_at = new_tat.saturating_sub(self.tolerance);
        if now < allow_at {
            let d = Decision {
                allowed: false,
                remaining: 0,
                retry_after: units(allow_at - now, unit),
                reset: units(tat - now, unit),
            };
            return (d, None);
        }
        (self.admitted(new_tat - now, unit), Some(new_tat))
    }

    /// The decision for an admitted request whose new TAT is `ahead` units
    /// after now (also how the Redis answer is read).
    pub fn admitted(&self, ahead: u64, unit: Duration) -> Decision {
        let remaining = self.tolerance.saturating_sub(ahead) / self.interval;
        Decision {
            allowed: true,
            remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
            retry_after: Duration::ZERO,
            reset: units(ahead, unit),
        }
    }

    /// The decision for a refused request (how the Redis answer is read).
    pub fn refused(&self, retry_after: u64, ahead: u64, unit: Duration) -> Decision {
        Decision {
            allowed: false,
            remaining: 0,
            retry_after: units(retry_after, unit),
            reset: units(ahead, unit),
        }
    }
}

/// `n` clock units (1 ns or 1 µs) as a duration, saturating.
fn units(n: u64, unit: Duration) -> Duration {
    let unit_ns = u64::try_from(unit.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(n.saturating_mul(unit_ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: Duration = Duration::from_nanos(1);
    const SEC: u64 = 1_000_000_000;

    fn gcra(rate: f64, burst: u32) -> Gcra {
        Gcra::per_second_ns(rate, burst)
    }

    /// Run requests at the given times (seconds); return which were admitted.
    fn run(g: &Gcra, times: &[f64]) -> Vec<bool> {
        let mut tat = 0;
        times
            .iter()
            .map(|t| {
                let now = (t * 1e9) as u64 + SEC; // a clock that is not 0
                let (d, new) = g.decide(tat, now, NS);
                if let Some(n) = new {
                    tat = n;
                }
                d.allowed
            })
            .collect()
    }

    #[test]
    fn a_burst_passes_at_once_then_the_sustained_rate() {
        let g = gcra(1.0, 3);
        assert_eq!(
            run(&g, &[0.0, 0.0, 0.0, 0.0, 0.5, 1.0, 1.5, 2.0]),
            [true, true, true, false, false, true, false, true]
        );
    }

    #[test]
    fn a_quiet_period_refills_the_burst_and_no_more() {
        let g = gcra(2.0, 4);
        // 4 at once, then 10 s of quiet: again 4 at once, not 20.
        let mut times = vec![0.0; 5];
        times.extend([10.0; 6]);
        let got = run(&g, &times);
        assert_eq!(got.iter().filter(|a| **a).count(), 8, "{got:?}");
    }

    #[test]
    fn refusals_say_when_to_come_back_and_how_much_is_left() {
        let g = gcra(0.5, 1);
        let now = 5 * SEC;
        let (first, tat) = g.decide(0, now, NS);
        assert!(first.allowed);
        assert_eq!(first.remaining, 0);
        assert_eq!(first.reset, Duration::from_secs(2));
        let (second, none) = g.decide(tat.unwrap(), now + SEC / 2, NS);
        assert!(!second.allowed);
        assert!(none.is_none(), "a refusal stores nothing");
        assert_eq!(second.retry_after, Duration::from_millis(1500));
        let g = gcra(10.0, 5);
        let (d, _) = g.decide(0, now, NS);
        assert_eq!(d.remaining, 4);
    }

    #[test]
    fn a_refused_request_spends_nothing() {
        let g = gcra(1.0, 1);
        // Hammering while refused never pushes the next admission back.
        let mut times = vec![0.0];
        times.extend((1..100).map(|i| f64::from(i) * 0.009));
        times.push(1.0);
        let got = run(&g, &times);
        assert!(got[0] && *got.last().unwrap());
        assert_eq!(got.iter().filter(|a| **a).count(), 2);
    }

    #[test]
    fn extreme_limits_never_overflow() {
        let g = gcra(1e-9, 1_000_000_000);
        let (d, _) = g.decide(u64::MAX - 5, u64::MAX - 10, NS);
        assert!(!d.allowed || d.remaining <= 1_000_000_000);
        let g = gcra(1e9, 1);
        assert_eq!(g.interval, 1);
        let (d, _) = g.decide(0, u64::MAX, NS);
        assert!(d.allowed);
    }
}
