//! What a client that GETs a list of paths one after another keeps (`hq-interop`, `h3`):
//! the next path, the bodies hashed in request order, counts, and the latest failure.

use sha2::{Digest, Sha256};

pub struct Fetches {
    paths: Vec<String>,
    next: usize,
    hasher: Sha256,
    pub bytes_down: u64,
    /// Bodies received whole.
    pub fetched: u64,
    pub failed: Option<String>,
    done: bool,
}

impl Fetches {
    pub fn new(paths: Vec<String>) -> Self {
        Self {
            paths,
            next: 0,
            hasher: Sha256::new(),
            bytes_down: 0,
            fetched: 0,
            failed: None,
            done: false,
        }
    }

    /// Every path fetched, or a failure.
    pub fn is_done(&self) -> bool {
        self.done || self.failed.is_some()
    }

    /// Hex SHA-256 of every body, concatenated in request order.
    pub fn digest(&self) -> String {
        hex::encode(self.hasher.clone().finalize())
    }

    /// The next path to request; `None` (and done) when all were requested.
    pub fn next_path(&mut self) -> Option<String> {
        let Some(path) = self.paths.get(self.next) else {
            self.done = true;
            return None;
        };
        self.next += 1;
        Some(path.clone())
    }

    /// Whether paths are left to request.
    pub fn has_more(&self) -> bool {
        self.next < self.paths.len()
    }

    /// Part of the current body arrived.
    pub fn body(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.bytes_down += bytes.len() as u64;
    }

    /// The current body is complete.
    pub fn complete(&mut self) {
        self.fetched += 1;
    }

    /// Records a failure; the latest is the one reported (a reset stream reports the read
    /// that found it, "reset by peer", after the reset event's own line).
    pub fn fail(&mut self, why: String) {
        self.failed = Some(why);
    }

    /// The connection closed: a failure unless every path was fetched.
    pub fn on_closed(&mut self, reason: &crate::conn::CloseReason) {
        if !self.is_done() {
            self.fail(format!("connection closed early: {reason:?}"));
        }
    }
}
