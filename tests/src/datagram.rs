//! `--alpn echo --datagrams N`: the numbered DATAGRAM frames (RFC 9221) a peer client sends,
//! and the check of each echo, byte for byte, shared by every peer that speaks `echo`.

use anyhow::{bail, Result};

/// Datagram `i`: 5 to 1,100 bytes, its number in the first four, then a pattern of it.
pub fn pattern(i: u32) -> Vec<u8> {
    let len = 5 + (i as usize * 37) % 1096;
    let mut d = vec![0u8; len];
    d[..4].copy_from_slice(&i.to_be_bytes());
    for (j, b) in d[4..].iter_mut().enumerate() {
        *b = (i as usize * 31 + j * 7) as u8;
    }
    d
}

/// The number of the datagram `echo` returns, if it is one of the first `count` sent and
/// came back unchanged.
pub fn check_echo(echo: &[u8], count: u32) -> Result<u32> {
    if echo.len() < 4 {
        bail!("a {}-byte echo", echo.len());
    }
    let i = u32::from_be_bytes([echo[0], echo[1], echo[2], echo[3]]);
    if i >= count || echo != pattern(i).as_slice() {
        bail!("echo of datagram {i} differs from what was sent");
    }
    Ok(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoes_are_checked_byte_for_byte() {
        let d = pattern(7);
        assert_eq!(check_echo(&d, 10).unwrap(), 7);
        assert!(check_echo(&d, 7).is_err(), "not one of those sent");
        let mut bad = d.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(check_echo(&bad, 10).is_err());
        assert!(check_echo(&d[..3], 10).is_err());
        assert!((0..2000).all(|i| (5..=1100).contains(&pattern(i).len())));
    }
}
