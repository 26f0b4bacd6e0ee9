//! Files a server re-reads while it runs (ticket keys, the certificate and its key): what
//! tells one version of a file from the next, and the thread that looks for changes.
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How often watched files are checked for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// What tells one version of a file from the next: its modification time, and its inode
/// and length, for a replacement that kept the time (`cp -p`, `rsync -t`, a renamed-in
/// file of the same age). `None` from [`FileStamp::of`] is a file that cannot be read.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FileStamp {
    modified: SystemTime,
    inode: u64,
    len: u64,
}

impl FileStamp {
    pub fn of(path: &Path) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            modified: meta.modified().ok()?,
            inode: meta.ino(),
            len: meta.len(),
        })
    }
}

/// What a watched file was when it was last taken, and when a read of it last failed.
///
/// Files whose read failed are read again at every check, not only after they change: the
/// failure may be the reader's (a permission, a descriptor limit) and its fix changes no
/// stamp. Only a new failure is worth logging.
#[derive(Debug)]
pub struct Reloads<S> {
    taken: S,
    failed: Option<S>,
}

impl<S: Copy + PartialEq> Reloads<S> {
    pub fn new(taken: S) -> Self {
        Self {
            taken,
            failed: None,
        }
    }

    /// Loads files stamped `now` unless they are what was last taken. Returns what was
    /// loaded; `None` if nothing changed or the load failed (logged, once per version of
    /// the files, as `what` being unusable: whatever is in use stays).
    pub fn check<T, E: std::fmt::Display>(
        &mut self,
        now: S,
        what: &str,
        load: impl FnOnce() -> Result<T, E>,
    ) -> Option<T> {
        if !self.wants(now) {
            return None;
        }
        match load() {
            Ok(loaded) => {
                self.took(now);
                Some(loaded)
            }
            Err(e) => {
                if self.failed(now) {
                    tracing::error!(error = %e, "{what} unusable; keeping what is in use");
                }
                None
            }
        }
    }

    /// Whether files stamped `now` are to be read: not what was last taken.
    fn wants(&self, now: S) -> bool {
        now != self.taken
    }

    fn took(&mut self, now: S) {
        self.taken = now;
        self.failed = None;
    }

    /// Records a failed read of files stamped `now`; true unless the last check failed on
    /// the same files.
    fn failed(&mut self, now: S) -> bool {
        self.failed.replace(now) != Some(now)
    }
}

/// Calls `check` every [`RELOAD_INTERVAL`] from a thread named `name`, until `stop`. The
/// thread wakes every 250 ms to see `stop`, so a server shuts down without waiting for it.
pub fn watch(
    name: &str,
    stop: Arc<AtomicBool>,
    mut check: impl FnMut() + Send + 'static,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let tick = Duration::from_millis(250);
            let mut waited = Duration::ZERO;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(tick);
                waited += tick;
                if waited >= RELOAD_INTERVAL {
                    waited = Duration::ZERO;
                    check();
                }
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_read_is_retried_and_logged_once() {
        let mut r = Reloads::new(1);
        assert!(!r.wants(1));
        assert!(r.wants(2));
        assert!(r.failed(2), "a new failure");
        assert!(r.wants(2), "retried though nothing changed");
        assert!(!r.failed(2), "the same failure again");
        assert!(r.failed(3), "another version of the files");
        r.took(3);
        assert!(!r.wants(3));
        assert!(r.failed(4), "after a success, a failure is new again");
    }
}
