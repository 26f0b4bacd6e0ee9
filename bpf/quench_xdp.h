/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Constants and structs shared by quench_xdp.bpf.c and the Rust loader
 * (engine/src/io/xdp/loader.rs and stats.rs). A Rust test parses this file and checks
 * every value below against its Rust twin: change both together. */
#ifndef QUENCH_XDP_H
#define QUENCH_XDP_H

/* Map sizes. */
#define QUENCH_MAX_WORKERS 64
#define QUENCH_MAX_QUEUES 256
#define QUENCH_MAX_PORTS 16
#define QUENCH_MAX_LOCAL_ADDRS 256

/* QUIC constants the program needs. */
#define QUENCH_MAX_CID_LEN 20
#define QUENCH_MIN_INITIAL_DATAGRAM 1200
/* Bytes after the DCID of a short-header packet: 4 (packet number room) + 16 (header
 * protection sample), RFC 9001 §5.4.2. Anything shorter cannot be unprotected. */
#define QUENCH_SHORT_TAIL_MIN 20

/* Per-CPU counter slots (index into the `stats` PERCPU_ARRAY). */
#define QUENCH_STAT_PASS_NOT_IP 0
#define QUENCH_STAT_PASS_NOT_UDP 1
#define QUENCH_STAT_PASS_OTHER_PORT 2
#define QUENCH_STAT_PASS_MALFORMED 3
#define QUENCH_STAT_DROP_SHORT_INITIAL 4
#define QUENCH_STAT_DROP_FIXED_BIT 5
#define QUENCH_STAT_DROP_BAD_SHORT 6
#define QUENCH_STAT_DROP_BAD_LONG 7
#define QUENCH_STAT_REDIRECT 8
#define QUENCH_STAT_REDIRECT_MISSTEERED 9
#define QUENCH_STAT_REDIRECT_FAILED 10
#define QUENCH_STAT_PASS_NO_SOCKET 11
#define QUENCH_STAT_PASS_NOT_LOCAL 12
#define QUENCH_STAT_COUNT 13

/* worker_map[worker]: where that worker's socket is bound. Its XSK sits in
 * xsks_map[worker]. */
struct quench_worker_info {
	__u32 queue;
	__u32 active;
};

/* queue_map[rx queue]: the worker whose socket takes packets arriving on that queue that
 * belong to a worker bound elsewhere (mis-steered; user space hands them on). */
struct quench_queue_owner {
	__u32 worker;
	__u32 active;
};

/* queue_workers[rx queue]: the workers whose sockets are bound to that queue, ascending.
 * A client-chosen DCID (Initial, 0-RTT) goes to workers[hash % count], so a new
 * connection belongs to a worker on the queue its 4-tuple arrives on. */
struct quench_queue_workers {
	__u32 count;
	__u32 workers[QUENCH_MAX_WORKERS];
};

/* local_addrs key: an address we serve. An IPv4 address fills addr[0..4], the rest
 * zero; the family keeps an IPv6 packet to ::ffff:a.b.c.d from matching a.b.c.d. */
struct quench_local_addr {
	__u32 family; /* 4 or 6 */
	__u8 addr[16];
};

/* Settings fixed before load (the program's only `const volatile` global, so it is the
 * whole .rodata section and user space writes it as one struct). */
struct quench_config {
	__u32 cid_len;            /* length of server-issued CIDs */
	__u32 worker_offset;      /* offset of the worker byte in them */
	__u32 n_workers;          /* workers to spread over (>= 1) */
	__u32 drop_small_initial; /* server role: RFC 9000 §14.1 */
};

#endif /* QUENCH_XDP_H */
