//! Steering inside the kernel for a SO_REUSEPORT group: a classic BPF program that sends a
//! short-header datagram to the socket of the worker its CID names, so a client whose
//! 4-tuple changed (NAT rebinding, migration) still reaches its connection's owner without
//! a hand-off between workers.
//!
//! Long headers (Initial, 0-RTT, Handshake) fall back to the kernel's 4-tuple hash: a new
//! connection is accepted wherever that puts it, and its packets keep that 4-tuple until
//! the handshake is confirmed (RFC 9000 §9: no migration before then). The user-space
//! hand-off stays as the fallback when the program cannot be attached.

use crate::wire::steer::CidLayout;

/// `SO_ATTACH_REUSEPORT_CBPF` runs the program with the UDP payload at offset 0 and takes
/// its result as an index into the group's sockets, in bind order; an index past the group
/// falls back to the hash.
const FALL_BACK_TO_HASH: u32 = u32::MAX;

fn insn(code: u32, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// The program for `n_workers` sockets bound in worker order, with CIDs laid out as
/// `layout`. (A short datagram whose worker byte lies past its end makes the load fail,
/// which returns 0: socket 0 gets it and treats it as the garbage it is.)
pub fn cid_steering_program(layout: &CidLayout, n_workers: u32) -> Vec<libc::sock_filter> {
    use libc::{
        BPF_A, BPF_ABS, BPF_ALU, BPF_B, BPF_JMP, BPF_JSET, BPF_K, BPF_LD, BPF_MOD, BPF_RET,
    };
    let worker_byte = 1 + layout.worker_offset() as u32;
    vec![
        // A = payload[0]; a long header (form bit set) skips to the fallback.
        insn(BPF_LD | BPF_B | BPF_ABS, 0, 0, 0),
        insn(BPF_JMP | BPF_JSET | BPF_K, 3, 0, 0x80),
        // A = DCID[worker_offset] % n_workers, the socket index.
        insn(BPF_LD | BPF_B | BPF_ABS, 0, 0, worker_byte),
        insn(BPF_ALU | BPF_MOD | BPF_K, 0, 0, n_workers.max(1)),
        insn(BPF_RET | BPF_A, 0, 0, 0),
        insn(BPF_RET | BPF_K, 0, 0, FALL_BACK_TO_HASH),
    ]
}
