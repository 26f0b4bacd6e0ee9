//! Frame parsing over a decrypted payload; every frame that parses must re-encode to
//! bytes that parse back to the same frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quench::wire::frame::FrameIter;
use quench::wire::varint::Writer;

fuzz_target!(|data: &[u8]| {
    let mut buf = vec![0u8; 1500];
    for frame in FrameIter::new(data).flatten() {
        let len = frame.encoded_len();
        if buf.len() < len {
            buf.resize(len, 0);
        }
        let mut w = Writer::new(&mut buf[..len]);
        frame.encode(&mut w).expect("a parsed frame must re-encode");
        let mut again = FrameIter::new(&buf[..len]);
        assert_eq!(again.next(), Some(Ok(frame)));
        assert_eq!(again.next(), None);
        let _ = (frame.ty(), frame.is_ack_eliciting());
        if let quench::wire::frame::Frame::Ack(ack) = frame {
            assert_eq!(ack.iter().last().map(|r| *r.start()), Some(ack.smallest()));
        }
    }
});
