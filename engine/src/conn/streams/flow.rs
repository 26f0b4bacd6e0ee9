//! Flow-control accounting (RFC 9000 §4), used per stream and for the connection.

use std::time::{Duration, Instant};

/// Our receive window: how far the peer may send, and when to raise the limit.
///
/// The limit is raised (MAX_DATA / MAX_STREAM_DATA) once the application has consumed
/// more than half the window. The window itself doubles, up to `max_window`, when the
/// consumption rate shows a full window lasts less than two round trips: then the
/// window, not the network, is limiting the peer (RFC 9000 §4.2 leaves tuning open).
#[derive(Debug, Clone)]
pub struct RecvWindow {
    window: u64,
    max_window: u64,
    /// The limit advertised (or about to be) to the peer.
    limit: u64,
    /// Bytes the application has consumed (or we discarded on its behalf).
    consumed: u64,
    /// When the limit was last raised and `consumed` at that time.
    last_update: Option<(Instant, u64)>,
}

impl RecvWindow {
    pub fn new(window: u64, max_window: u64) -> Self {
        Self {
            window,
            max_window: max_window.max(window),
            limit: window,
            consumed: 0,
            last_update: None,
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    pub fn window(&self) -> u64 {
        self.window
    }

    #[cfg(test)]
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    pub fn consume(&mut self, n: u64) {
        self.consumed += n;
    }

    /// More than half the window has been consumed since the limit was set.
    pub fn should_update(&self) -> bool {
        self.limit.saturating_sub(self.consumed) <= self.window / 2
            && self.consumed + self.window > self.limit
    }

    /// Raises the limit to `consumed + window`, first growing the window when the
    /// peer is consuming it faster than one window per two RTTs. Returns the new limit.
    pub fn update(&mut self, now: Instant, rtt: Duration) -> u64 {
        if let Some((at, consumed_then)) = self.last_update {
            let elapsed = now.saturating_duration_since(at).as_nanos();
            let bytes = u128::from(self.consumed - consumed_then);
            // window / (bytes / elapsed) < 2 * rtt  ⇔  window * elapsed < 2 * rtt * bytes
            if rtt > Duration::ZERO
                && u128::from(self.window) * elapsed < 2 * rtt.as_nanos() * bytes
            {
                self.grow_to(self.window.saturating_mul(2));
            }
        }
        self.last_update = Some((now, self.consumed));
        self.limit = self.limit.max(self.consumed + self.window);
        self.limit
    }

    /// Raises the limit to `consumed + window` without tuning (credit returned by a
    /// reset or discarded data, where no timing is known).
    pub fn raise_limit(&mut self) -> u64 {
        self.limit = self.limit.max(self.consumed + self.window);
        self.limit
    }

    /// Raises the window (bounded by the maximum); used to keep the connection window
    /// ahead of a stream window that has grown.
    pub fn grow_to(&mut self, window: u64) {
        let w = window.min(self.max_window);
        if w > self.window {
            tracing::trace!(from = self.window, to = w, "receive window grown");
            self.window = w;
        }
    }
}

/// Credit the peer gave us for sending, and the BLOCKED signalling for it.
#[derive(Debug, Clone, Default)]
pub struct SendCredit {
    /// Peer's limit (absolute offset / byte count).
    pub max: u64,
    /// The limit at which we last queued a *_BLOCKED frame.
    blocked_at: Option<u64>,
    /// A *_BLOCKED frame is waiting to be written.
    pub blocked_pending: bool,
}

impl SendCredit {
    pub fn new(max: u64) -> Self {
        Self {
            max,
            blocked_at: None,
            blocked_pending: false,
        }
    }

    /// Applies a new limit; returns true if it increased.
    pub fn raise(&mut self, max: u64) -> bool {
        if max > self.max {
            self.max = max;
            self.blocked_pending = false;
            true
        } else {
            false
        }
    }

    /// We want to send past the limit: signal it once per limit value (§4.1).
    pub fn on_blocked(&mut self) {
        if self.blocked_at != Some(self.max) {
            self.blocked_at = Some(self.max);
            self.blocked_pending = true;
        }
    }

    /// A BLOCKED frame we sent was lost: resend only if still blocked at that limit.
    pub fn on_blocked_lost(&mut self, used: u64) {
        if self.blocked_at == Some(self.max) && used >= self.max {
            self.blocked_pending = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_after_half_window() {
        let mut w = RecvWindow::new(1000, 1000);
        assert!(!w.should_update());
        w.consume(499);
        assert!(!w.should_update());
        w.consume(1);
        assert!(w.should_update());
        let now = Instant::now();
        assert_eq!(w.update(now, Duration::from_millis(10)), 1500);
        assert!(!w.should_update());
    }

    #[test]
    fn auto_tuning_grows_window_when_fast() {
        let rtt = Duration::from_millis(50);
        let mut w = RecvWindow::new(1000, 8000);
        let t0 = Instant::now();
        w.consume(500);
        w.update(t0, rtt);
        // Half a window in 10 ms: a full window would last 20 ms < 2 RTT → grow.
        w.consume(500);
        w.update(t0 + Duration::from_millis(10), rtt);
        assert_eq!(w.window(), 2000);
        // Slow consumption: 1000 bytes in 1 s does not grow it.
        w.consume(1000);
        w.update(t0 + Duration::from_millis(1010), rtt);
        assert_eq!(w.window(), 2000);
        // Capped at the maximum.
        let mut t = t0 + Duration::from_millis(1010);
        for _ in 0..10 {
            w.consume(w.window());
            t += Duration::from_millis(1);
            w.update(t, rtt);
        }
        assert_eq!(w.window(), 8000);
    }

    #[test]
    fn blocked_once_per_limit() {
        let mut c = SendCredit::new(100);
        c.on_blocked();
        assert!(c.blocked_pending);
        c.blocked_pending = false;
        c.on_blocked();
        assert!(!c.blocked_pending);
        c.on_blocked_lost(100);
        assert!(c.blocked_pending);
        assert!(c.raise(200));
        assert!(!c.blocked_pending);
        c.on_blocked_lost(100);
        assert!(!c.blocked_pending);
        c.on_blocked();
        assert!(c.blocked_pending);
    }
}
