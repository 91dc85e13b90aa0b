//! hyper's HTTP/1 header-read timer, without a timer-wheel insert and removal per request.
//!
//! hyper arms `header_read_timeout` for every request head: it asks the connection builder's
//! timer for a new sleep, polls it while the head is incomplete (which registers it in tokio's
//! timer wheel, under the driver's lock) and drops it once the head is parsed (which removes
//! it, under the lock again), then does the same for the next head on the connection. This
//! timer hands out recycled sleeps instead: a dropped one goes to a small per-thread spare
//! list still registered, and the next head's deadline, always later than the one it had,
//! moves it with one atomic operation (in the steady state: a spare that was never polled
//! registers on its first poll, as a new sleep would). hyper's semantics are untouched (it
//! still arms, polls and checks the deadline per head, so a client that dribbles its head is
//! cut off as before).

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::rt::{Sleep, Timer};

/// Spare sleeps kept per thread: about the number of connections between two heads at once.
/// More are dropped (deregistered) as usual.
const MAX_SPARE: usize = 256;

static NEXT_TIMER: AtomicU64 = AtomicU64::new(1);

type TokioSleep = Pin<Box<tokio::time::Sleep>>;

thread_local! {
    /// Spare sleeps and the timer that made them: a sleep belongs to the runtime it was made
    /// in, so it is reused only by the same timer (one per server, within one runtime).
    static SPARE: RefCell<Vec<(u64, TokioSleep)>> = const { RefCell::new(Vec::new()) };
}

/// The HTTP/1 server's timer (`http1().timer(..)`): tokio time, recycled sleeps.
#[derive(Clone, Debug)]
pub struct HeadTimer {
    id: u64,
}

impl HeadTimer {
    /// Create one per server (it must live in the runtime its connections run in).
    pub fn new() -> HeadTimer {
        HeadTimer {
            id: NEXT_TIMER.fetch_add(1, Ordering::Relaxed),
        }
    }

    fn spare(&self) -> Option<TokioSleep> {
        let (id, sleep) = SPARE
            .try_with(|spare| spare.try_borrow_mut().ok()?.pop())
            .ok()
            .flatten()?;
        // Another server's (another runtime's) sleep is dropped, not reused.
        (id == self.id).then_some(sleep)
    }
}

impl Default for HeadTimer {
    fn default() -> Self {
        HeadTimer::new()
    }
}

impl Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.sleep_until(self.now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        let deadline = tokio::time::Instant::from_std(deadline);
        let sleep = match self.spare() {
            Some(mut sleep) => {
                sleep.as_mut().reset(deadline);
                sleep
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        Box::pin(Recycled {
            timer: self.id,
            sleep: Some(sleep),
        })
    }

    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn Sleep>>, new_deadline: Instant) {
        if let Some(recycled) = sleep.as_mut().downcast_mut_pin::<Recycled>() {
            if let Some(inner) = recycled.get_mut().sleep.as_mut() {
                inner
                    .as_mut()
                    .reset(tokio::time::Instant::from_std(new_deadline));
                return;
            }
        }
        *sleep = self.sleep_until(new_deadline);
    }
}

/// A sleep lent to one request head; it goes back to the spare list when hyper drops it.
struct Recycled {
    timer: u64,
    sleep: Option<TokioSleep>,
}

impl Future for Recycled {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.sleep.as_mut() {
            Some(sleep) => sleep.as_mut().poll(cx),
            None => Poll::Ready(()),
        }
    }
}

impl Sleep for Recycled {}

impl Drop for Recycled {
    fn drop(&mut self) {
        // Not polled here (a poll after the runtime shut down panics): a spare sleep keeps the
        // last connection's waker until it is reused, at most `MAX_SPARE` task references, and
        // one that expires while spare wakes that connection once, which finds nothing to do.
        let Some(sleep) = self.sleep.take() else {
            return;
        };
        let timer = self.timer;
        let _ = SPARE.try_with(move |spare| {
            if let Ok(mut spare) = spare.try_borrow_mut() {
                if spare.len() < MAX_SPARE {
                    spare.push((timer, sleep));
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test]
    async fn recycled_sleeps_keep_their_new_deadline() {
        let timer = HeadTimer::new();
        for _ in 0..3 {
            let started = Instant::now();
            let sleep = timer.sleep(30 * MS);
            // Polled, as hyper does while the head is incomplete, until it elapses.
            sleep.await;
            let took = started.elapsed();
            assert!(took >= 30 * MS && took < 1000 * MS, "{took:?}");
        }
        let spare = SPARE.with(|s| s.borrow().len());
        assert_eq!(spare, 1, "one sleep, reused");

        // A reused sleep that had a later deadline, and one reset to a later one.
        let mut late = timer.sleep(2000 * MS);
        let _ = tokio::time::timeout(MS, &mut late).await; // registered
        drop(late);
        let early = timer.sleep(20 * MS);
        let mut later = timer.sleep(20 * MS);
        timer.reset(&mut later, timer.now() + 150 * MS);
        let started = Instant::now();
        early.await;
        let took = started.elapsed();
        assert!(took >= 10 * MS && took < 140 * MS, "{took:?}");
        later.await;
        let took = started.elapsed();
        assert!(took >= 140 * MS && took < 1000 * MS, "{took:?}");
    }

    #[test]
    fn another_timers_sleep_is_not_reused() {
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap()
        };
        let first = runtime();
        first.block_on(async { drop(HeadTimer::new().sleep(1000 * MS)) });
        drop(first);
        runtime().block_on(async {
            let timer = HeadTimer::new();
            let started = Instant::now();
            timer.sleep(20 * MS).await;
            assert!(started.elapsed() >= 20 * MS);
        });
    }
}
