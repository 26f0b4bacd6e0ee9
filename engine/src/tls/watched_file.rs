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
