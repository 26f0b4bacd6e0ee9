//! How a connection ended, in words for error messages and the server's log.

/// Application error code of a normal close, by either side (and of the server's at
/// shutdown).
pub const NO_ERROR: u64 = 0;

/// Why a closed connection did not end cleanly (an application close with NO_ERROR, from
/// either side), or None.
pub fn unclean_close(quic: &quiche::Connection) -> Option<String> {
    let clean = |e: &quiche::ConnectionError| e.is_app && e.error_code == NO_ERROR;
    if let Some(e) = quic.peer_error() {
        return (!clean(e)).then(|| format!("closed by the peer: {}", describe(e)));
    }
    if let Some(e) = quic.local_error() {
        return (!clean(e)).then(|| format!("closed by us: {}", describe(e)));
    }
    if quic.is_timed_out() {
        return Some("idle timeout".to_string());
    }
    None
}

/// A CONNECTION_CLOSE's contents, for error messages.
pub fn describe(e: &quiche::ConnectionError) -> String {
    let kind = if e.is_app {
        "application error"
    } else {
        "transport error"
    };
    let mut text = format!("{kind} 0x{:x}", e.error_code);
    if !e.is_app && (0x100..0x200).contains(&e.error_code) {
        text.push_str(&format!(" (TLS alert {})", e.error_code - 0x100));
    }
    if !e.reason.is_empty() {
        text.push_str(&format!(": {}", String::from_utf8_lossy(&e.reason)));
    }
    text
}
