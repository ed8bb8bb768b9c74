//! The bandwidth limit, with its optional schedule by day and hour.
//!
//! A [`Schedule`] says how many bytes per second may be sent at each hour of
//! the week (from the scenario's `[sync]` table: `bandwidth_limit_kbps` and
//! `[[sync.bandwidth_schedule]]`). A [`Limiter`] is a token bucket shared by
//! the writers of one connection: each calls [`Limiter::acquire`] before
//! sending a frame.
//!
//! ```
//! # async fn demo() {
//! use rha_transport::limit::{Limiter, Schedule};
//! let limiter = Limiter::new(Schedule::fixed(1_000_000)); // 1 MB/s
//! limiter.acquire(64 * 1024).await; // may wait
//! # }
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rha_core::scenario::{SyncSettings, Weekday};
use tokio::time::Instant;

/// Hours in a week.
const HOURS: usize = 7 * 24;

/// How often the limiter looks at the clock for a new hour of the schedule.
const RECHECK: Duration = Duration::from_secs(60);

/// The bucket holds at most this much of a second's worth of bytes.
const BURST_FRACTION: f64 = 0.1;

/// Bytes per second allowed at each hour of the week.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// Index: weekday (0 = Monday) * 24 + hour. `None` = unlimited.
    hours: Box<[Option<u64>; HOURS]>,
}

impl Schedule {
    /// No limit at any time.
    pub fn unlimited() -> Self {
        Schedule {
            hours: Box::new([None; HOURS]),
        }
    }

    /// The same limit, in bytes per second, at every hour.
    pub fn fixed(bytes_per_sec: u64) -> Self {
        Schedule {
            hours: Box::new([Some(bytes_per_sec); HOURS]),
        }
    }

    /// The schedule of a scenario's `[sync]` table: the first window of
    /// `bandwidth_schedule` that covers an hour gives its limit, and
    /// `bandwidth_limit_kbps` applies outside every window. Kilobits per
    /// second become bytes per second (`kbps * 1000 / 8`). Windows that
    /// validation rejects (hours out of range) only cover their valid hours.
    pub fn from_settings(sync: &SyncSettings) -> Self {
        let to_bytes = |kbps: u64| kbps.saturating_mul(1000) / 8;
        let default = sync.bandwidth_limit_kbps.map(to_bytes);
        let mut hours = Box::new([default; HOURS]);
        for day in Weekday::ALL {
            for hour in 0..24u8 {
                if let Some(w) = sync.bandwidth_schedule.iter().find(|w| w.covers(day, hour)) {
                    hours[usize::from(day.index()) * 24 + usize::from(hour)] =
                        w.limit_kbps.map(to_bytes);
                }
            }
        }
        Schedule { hours }
    }

    /// The limit at a weekday (0 = Monday) and hour (0..24), in bytes per
    /// second; `None` = unlimited. Out-of-range arguments wrap around.
    pub fn limit_at(&self, weekday: u8, hour: u8) -> Option<u64> {
        let i = usize::from(weekday % 7) * 24 + usize::from(hour % 24);
        self.hours[i]
    }

    /// The limit now, in the local time of this machine.
    pub fn limit_now(&self) -> Option<u64> {
        let (weekday, hour) = local_weekday_hour();
        self.limit_at(weekday, hour)
    }

    /// Whether no hour has a limit.
    pub fn is_unlimited(&self) -> bool {
        self.hours.iter().all(Option::is_none)
    }
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule::unlimited()
    }
}

/// The local weekday (0 = Monday) and hour, from `localtime_r`; Monday 00h if
/// the C library cannot say.
fn local_weekday_hour() -> (u8, u8) {
    // SAFETY: `time` with a null pointer only returns the time; `localtime_r`
    // writes into the `tm` we own and reads `now`, both valid for the call.
    unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&now, &mut tm).is_null() {
            return (0, 0);
        }
        // tm_wday: 0 = Sunday.
        let weekday = u8::try_from((tm.tm_wday + 6).rem_euclid(7)).unwrap_or(0);
        let hour = u8::try_from(tm.tm_hour.clamp(0, 23)).unwrap_or(0);
        (weekday, hour)
    }
}

/// A token bucket shared by the writers of one connection.
///
/// Cheap to clone (the state is behind an `Arc`); every clone draws from the
/// same bucket. When the schedule has no limit at any hour, [`acquire`]
/// returns at once without taking a lock.
///
/// [`acquire`]: Limiter::acquire
#[derive(Debug, Clone)]
pub struct Limiter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The schedule has no limit at all: skip everything.
    always_unlimited: AtomicBool,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    schedule: Schedule,
    /// The limit in force, as of `checked_at`.
    limit: Option<u64>,
    checked_at: Instant,
    /// Bytes that may be sent now; negative when in debt.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    refilled_at: Instant,
}

impl State {
    fn new(schedule: Schedule) -> Self {
        let now = Instant::now();
        let limit = schedule.limit_now();
        State {
            tokens: limit.map_or(0.0, burst),
            schedule,
            limit,
            checked_at: now,
            refilled_at: now,
        }
    }

    /// Looks at the clock again if the last look is a minute old.
    fn recheck(&mut self, now: Instant) {
        if now.duration_since(self.checked_at) >= RECHECK {
            self.checked_at = now;
            let limit = self.schedule.limit_now();
            if limit != self.limit {
                tracing::debug!(?limit, "bandwidth limit changes (bytes per second)");
                self.limit = limit;
                // Keep any debt, but not a bucket bigger than the new burst.
                if let Some(rate) = limit {
                    self.tokens = self.tokens.min(burst(rate));
                }
            }
        }
    }
}

/// The bucket's size at `rate` bytes per second: ~100 ms worth, at least one byte.
fn burst(rate: u64) -> f64 {
    (rate as f64 * BURST_FRACTION).max(1.0)
}

impl Limiter {
    /// A limiter following `schedule`.
    pub fn new(schedule: Schedule) -> Self {
        Limiter {
            inner: Arc::new(Inner {
                always_unlimited: AtomicBool::new(schedule.is_unlimited()),
                state: Mutex::new(State::new(schedule)),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the bucket inconsistent
        // in a way that matters: carry on with it.
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits until `bytes` may be sent under the current limit.
    ///
    /// The bucket holds about 100 ms worth of bytes; a frame larger than that
    /// is let through once the bucket is not in debt, and the debt it leaves
    /// delays the following frames, so the average rate holds for frames of
    /// any size.
    pub async fn acquire(&self, bytes: usize) {
        if self.inner.always_unlimited.load(Ordering::Relaxed) {
            return;
        }
        let wait = {
            let mut st = self.state();
            let now = Instant::now();
            st.recheck(now);
            let Some(rate) = st.limit else {
                st.refilled_at = now;
                return;
            };
            let rate_f = rate.max(1) as f64;
            let elapsed = now.duration_since(st.refilled_at).as_secs_f64();
            st.tokens = (st.tokens + elapsed * rate_f).min(burst(rate));
            st.refilled_at = now;
            st.tokens -= bytes as f64;
            if st.tokens >= 0.0 {
                None
            } else {
                // Sleep until the debt is paid back.
                Some(Duration::from_secs_f64(-st.tokens / rate_f))
            }
        };
        if let Some(wait) = wait {
            tokio::time::sleep(wait).await;
        }
    }

    /// The limit in force now, in bytes per second; `None` = unlimited.
    pub fn current_limit(&self) -> Option<u64> {
        if self.inner.always_unlimited.load(Ordering::Relaxed) {
            return None;
        }
        let mut st = self.state();
        st.recheck(Instant::now());
        st.limit
    }

    /// Replaces the schedule (the scenario changed); applies at once.
    pub fn set_schedule(&self, schedule: Schedule) {
        let mut st = self.state();
        let unlimited = schedule.is_unlimited();
        let now = Instant::now();
        let limit = schedule.limit_now();
        st.schedule = schedule;
        st.checked_at = now;
        if limit != st.limit {
            st.limit = limit;
            st.tokens = limit.map_or(0.0, |rate| st.tokens.min(burst(rate)));
        }
        self.inner
            .always_unlimited
            .store(unlimited, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rha_core::scenario::BandwidthWindow;

    fn window(days: &[Weekday], from: u8, to: u8, kbps: Option<u64>) -> BandwidthWindow {
        BandwidthWindow {
            days: days.to_vec(),
            from_hour: from,
            to_hour: to,
            limit_kbps: kbps,
        }
    }

    #[test]
    fn schedule_lookups() {
        let sync = SyncSettings {
            bandwidth_limit_kbps: Some(80_000),
            bandwidth_schedule: vec![
                window(&Weekday::ALL[..5], 8, 18, Some(8_000)),
                window(&[], 12, 14, None),
                window(&[Weekday::Sun], 0, 24, Some(800)),
            ],
            ..SyncSettings::default()
        };
        let s = Schedule::from_settings(&sync);
        // Outside every window: the plain limit, in bytes per second.
        assert_eq!(s.limit_at(0, 7), Some(10_000_000));
        assert_eq!(s.limit_at(0, 18), Some(10_000_000));
        // Office hours on weekdays.
        assert_eq!(s.limit_at(0, 8), Some(1_000_000));
        assert_eq!(s.limit_at(4, 17), Some(1_000_000));
        // The first window wins over the later every-day one at noon on a weekday...
        assert_eq!(s.limit_at(2, 12), Some(1_000_000));
        // ... but on Saturday the every-day window applies: unlimited.
        assert_eq!(s.limit_at(5, 12), None);
        assert_eq!(s.limit_at(5, 11), Some(10_000_000));
        // Sunday: noon is the every-day window (listed before Sunday's).
        assert_eq!(s.limit_at(6, 13), None);
        assert_eq!(s.limit_at(6, 3), Some(100_000));
        assert!(!s.is_unlimited());

        assert!(Schedule::from_settings(&SyncSettings::default()).is_unlimited());
        assert_eq!(Schedule::fixed(5).limit_at(3, 3), Some(5));
        assert_eq!(Schedule::unlimited().limit_at(3, 3), None);
        let (d, h) = local_weekday_hour();
        assert!(d < 7 && h < 24);
    }
}
