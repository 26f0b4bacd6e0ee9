//! Session ticket keys and tickets (`quench::tls::tickets`), both hostile input: the key file
//! an operator writes, and the ticket any client presents. Input: a selector byte, then
//! either key-file text (parsed; whatever it is, no panic) or a ticket (never opens: it was
//! not sealed with the key) and a plaintext (sealed, it opens to itself, and one flipped
//! byte stops it opening).
#![no_main]

use libfuzzer_sys::fuzz_target;
use quench::tls::tickets::TicketKeyFile;
use rustls::server::ProducesTickets;

const KEYS: &str = "# two keys: the first seals\n\
    000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n\
    f0e0d0c0b0a090807060504030201000ffeeddccbbaa99887766554433221100\n";

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        if let Ok(text) = std::str::from_utf8(rest) {
            if let Ok(keys) = TicketKeyFile::from_text(text) {
                let ticket = keys.encrypt(b"state").expect("a parsed key seals");
                assert_eq!(keys.decrypt(&ticket).as_deref(), Some(&b"state"[..]));
            }
        }
        return;
    }
    let keys = TicketKeyFile::from_text(KEYS).expect("valid keys");
    assert!(keys.decrypt(rest).is_none(), "a forged ticket opened");
    let mut ticket = keys.encrypt(rest).expect("seal");
    assert_eq!(keys.decrypt(&ticket).as_deref(), Some(rest));
    let i = usize::from(mode) % ticket.len();
    ticket[i] ^= 0x80;
    assert!(keys.decrypt(&ticket).is_none(), "a tampered ticket opened");
});
