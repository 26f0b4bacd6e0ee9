//! Waking a worker asleep in its datapath's `wait` when another worker queues a datagram
//! for it (a hand-off: the datagram arrived on the wrong socket or RX queue). Used by the
//! UDP workers and by the AF_XDP datapath alike.
//!
//! Each worker has an eventfd and a `sleeping` flag. A worker about to sleep raises its
//! flag, then looks at its queue once more; a sender pushes, then swaps the owner's flag
//! down and, only if it was up, signals the owner's eventfd. Both sides put a SeqCst fence
//! between their write and their read, so one of them always sees the other: no lost
//! wake-up, and no syscall while the owner is busy.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::time::Duration;

/// One wake-up line per worker (index = worker id).
pub struct Wakers {
    sleeping: Box<[AtomicBool]>,
    eventfds: Box<[OwnedFd]>,
}

impl Wakers {
    pub fn new(workers: usize) -> io::Result<Wakers> {
        Ok(Wakers {
            sleeping: (0..workers).map(|_| AtomicBool::new(false)).collect(),
            eventfds: (0..workers).map(|_| eventfd()).collect::<io::Result<_>>()?,
        })
    }

    /// Wakes `worker` if it is asleep (call after pushing to its queue).
    pub fn wake(&self, worker: usize) {
        fence(Ordering::SeqCst);
        if self
            .sleeping
            .get(worker)
            .is_some_and(|s| s.swap(false, Ordering::Relaxed))
        {
            if let Some(fd) = self.eventfds.get(worker) {
                eventfd_signal(fd.as_fd());
            }
        }
    }

    /// Puts `worker` to sleep in `sleep` (which must also return when the eventfd it is
    /// given becomes readable, see [`poll_or_wake`]) unless `pending()` says its queue
    /// already holds something. An unknown worker returns at once.
    pub fn sleep_unless(
        &self,
        worker: usize,
        pending: impl Fn() -> bool,
        sleep: impl FnOnce(BorrowedFd<'_>) -> io::Result<()>,
    ) -> io::Result<()> {
        let (Some(flag), Some(fd)) = (self.sleeping.get(worker), self.eventfds.get(worker)) else {
            return Ok(());
        };
        if pending() {
            return Ok(());
        }
        flag.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if pending() {
            flag.store(false, Ordering::Relaxed);
            return Ok(());
        }
        let r = sleep(fd.as_fd());
        flag.store(false, Ordering::Relaxed);
        r
    }
}

/// Waits for `events` on `fd` or for `wake` (an eventfd) to be signalled, up to `timeout`
/// (`None`: no limit). EINTR counts as a wake-up. Returns whether `wake` was signalled
/// (its count is then reset).
pub fn poll_or_wake(
    fd: BorrowedFd<'_>,
    events: libc::c_short,
    wake: BorrowedFd<'_>,
    timeout: Option<Duration>,
) -> io::Result<bool> {
    // Round up so a sub-millisecond timeout sleeps rather than spins.
    let ms = timeout.map_or(-1, |t| {
        t.as_micros().div_ceil(1000).min(libc::c_int::MAX as u128) as libc::c_int
    });
    let mut p = [
        libc::pollfd {
            fd: fd.as_raw_fd(),
            events,
            revents: 0,
        },
        libc::pollfd {
            fd: wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // SAFETY: two valid pollfds in a live array of that length.
    if unsafe { libc::poll(p.as_mut_ptr(), 2, ms) } < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(e)
        };
    }
    let woken = p[1].revents & libc::POLLIN != 0;
    if woken {
        let mut v = 0u64;
        // SAFETY: reads 8 bytes into a live u64; the eventfd is non-blocking.
        unsafe { libc::read(wake.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }
    Ok(woken)
}

/// A non-blocking eventfd.
fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the returned fd is checked, then owned by us alone.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh, valid descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds one to an eventfd's counter (wakes its poller). Best effort: a full counter
/// already means "wake up".
fn eventfd_signal(fd: BorrowedFd<'_>) {
    let one = 1u64;
    // SAFETY: writes 8 bytes from a live u64 to an eventfd.
    unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use std::time::Instant;

    /// A worker asleep on an idle socket with a long timeout is woken by a hand-off, and
    /// one whose queue already holds something does not sleep at all.
    #[test]
    fn a_queued_datagram_wakes_the_sleeping_owner() {
        let wakers = Arc::new(Wakers::new(2).unwrap());
        let queued = Arc::new(AtomicUsize::new(0));
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (w, q) = (wakers.clone(), queued.clone());
        let sleeper = std::thread::spawn(move || {
            let t0 = Instant::now();
            let mut woken = false;
            w.sleep_unless(
                1,
                || q.load(Ordering::Relaxed) > 0,
                |fd| {
                    woken = poll_or_wake(
                        socket.as_fd(),
                        libc::POLLIN,
                        fd,
                        Some(Duration::from_secs(60)),
                    )?;
                    Ok(())
                },
            )
            .unwrap();
            (woken, t0.elapsed())
        });
        // Whether the sender comes before or after the sleeper raised its flag, the
        // sleeper must return long before its timeout.
        std::thread::sleep(Duration::from_millis(20));
        queued.fetch_add(1, Ordering::Relaxed);
        wakers.wake(1);
        let (_, slept) = sleeper.join().unwrap();
        assert!(
            slept < Duration::from_secs(30),
            "lost wake-up: slept {slept:?}"
        );

        // Something pending: no sleep, whatever the timeout.
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut slept = false;
        wakers
            .sleep_unless(
                1,
                || true,
                |_| {
                    slept = true;
                    poll_or_wake(socket.as_fd(), libc::POLLIN, socket.as_fd(), None).map(drop)
                },
            )
            .unwrap();
        assert!(!slept);
        // No worker 7: returns at once.
        wakers
            .sleep_unless(7, || false, |_| unreachable!())
            .unwrap();
        wakers.wake(7);
    }
}
