// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* quench XDP steering: QUIC datagrams for our listen ports go to the AF_XDP socket of
 * the worker that owns their Destination Connection ID; everything else goes to the
 * kernel (XDP_PASS) so SSH, ARP and the rest keep working.
 *
 * Worker choice mirrors engine/src/wire/steer.rs exactly (tested with
 * BPF_PROG_TEST_RUN): a short header's DCID, and a long header's DCID shaped like ours,
 * carry the worker id at cfg.worker_offset; any other DCID (client-chosen, Initial /
 * 0-RTT) is FNV-1a hashed onto a worker bound to the arrival queue. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "quench_xdp.h"

#define VLAN_HDR_LEN 4
#define ETH_P_8021Q_ 0x8100
#define ETH_P_8021AD_ 0x88A8
#define IPV4_FRAG_MASK 0x3fff /* MF flag + fragment offset */

#define QUIC_V1 0x00000001
#define QUIC_V2 0x6b3343cf
#define FNV_BASIS 0x811c9dc5u
#define FNV_PRIME 0x01000193u

/* Settings written by the loader before load; the defaults are never used in anger. */
const volatile struct quench_config cfg = {
	.cid_len = 12,
	.worker_offset = 3,
	.n_workers = 1,
	.drop_small_initial = 1,
};

/* AF_XDP sockets, indexed by worker. */
struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, QUENCH_MAX_WORKERS);
	__type(key, __u32);
	__type(value, __u32);
} xsks_map SEC(".maps");

/* Which rx queue each worker's socket is bound to. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, QUENCH_MAX_WORKERS);
	__type(key, __u32);
	__type(value, struct quench_worker_info);
} worker_map SEC(".maps");

/* Which worker's socket takes mis-steered packets arriving on each rx queue. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, QUENCH_MAX_QUEUES);
	__type(key, __u32);
	__type(value, struct quench_queue_owner);
} queue_map SEC(".maps");

/* Which workers' sockets are bound to each rx queue (client-chosen DCIDs pick one). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, QUENCH_MAX_QUEUES);
	__type(key, __u32);
	__type(value, struct quench_queue_workers);
} queue_workers SEC(".maps");

/* UDP ports we serve (host byte order); updatable while attached. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, QUENCH_MAX_PORTS);
	__type(key, __u16);
	__type(value, __u8);
} ports SEC(".maps");

/* Destination addresses we serve. A forwarding or bridging box
 * sees datagrams for other hosts on our port too: those stay the kernel's. Empty means
 * nothing is ours (the loader always fills it). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, QUENCH_MAX_LOCAL_ADDRS);
	__type(key, struct quench_local_addr);
	__type(value, __u8);
} local_addrs SEC(".maps");

/* One counter per outcome (QUENCH_STAT_*). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, QUENCH_STAT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

/* Packets steered to each worker (before any redirect), for stats and tests. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, QUENCH_MAX_WORKERS);
	__type(key, __u32);
	__type(value, __u64);
} worker_hits SEC(".maps");

static __always_inline void count(void *map, __u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(map, &idx);

	if (v)
		*v += 1; /* per-CPU slot: no atomics needed */
}

static __always_inline int verdict(__u32 stat, int action)
{
	count(&stats, stat);
	return action;
}

/* RFC 9000 §17.2.2 / RFC 9369 §3.2: Initial is type 0 in v1, type 1 in v2. */
static __always_inline int is_initial(__u32 version, __u8 first)
{
	__u8 type = (first >> 4) & 0x03;

	return (version == QUIC_V1 && type == 0) || (version == QUIC_V2 && type == 1);
}

/* The worker for a client-chosen DCID hashing to `hash`: one bound to the arrival queue,
 * so the connection never needs a hand-off while its 4-tuple holds; any worker when the
 * queue lists none (steer() then treats it as mis-steered). */
static __always_inline __u32 arrival_worker(struct xdp_md *ctx, __u32 hash, __u32 n_workers)
{
	__u32 queue = ctx->rx_queue_index;
	struct quench_queue_workers *qw = bpf_map_lookup_elem(&queue_workers, &queue);
	__u32 count, i;

	if (!qw)
		return hash % n_workers;
	count = qw->count;
	if (count == 0 || count > QUENCH_MAX_WORKERS)
		return hash % n_workers;
	i = hash % count;
	/* The verifier does not bound a modulo by a map value: check it (and keep clang
	 * from dropping the check it can prove redundant). */
	barrier_var(i);
	if (i >= QUENCH_MAX_WORKERS)
		return hash % n_workers;
	return qw->workers[i] % n_workers;
}

/* Hands the packet to `worker`'s socket if it is bound to the arrival queue, else to the
 * queue's own socket (user space forwards it), else to the kernel. */
static __always_inline int steer(struct xdp_md *ctx, __u32 worker)
{
	__u32 queue = ctx->rx_queue_index;
	__u32 slot = worker;
	__u32 stat = QUENCH_STAT_REDIRECT;
	struct quench_worker_info *wi;
	long action;

	count(&worker_hits, worker);
	wi = bpf_map_lookup_elem(&worker_map, &worker);
	if (!wi || !wi->active || wi->queue != queue) {
		struct quench_queue_owner *qo = bpf_map_lookup_elem(&queue_map, &queue);

		if (!qo || !qo->active)
			return verdict(QUENCH_STAT_PASS_NO_SOCKET, XDP_PASS);
		slot = qo->worker;
		stat = QUENCH_STAT_REDIRECT_MISSTEERED;
	}
	action = bpf_redirect_map(&xsks_map, slot, XDP_PASS);
	if (action != XDP_REDIRECT)
		stat = QUENCH_STAT_REDIRECT_FAILED;
	return verdict(stat, (int)action);
}

SEC("xdp")
int quench_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct udphdr *udp;
	__u8 *quic;
	struct quench_local_addr dst = {};
	__u16 proto, dport, udp_len;
	__u32 plen, n_workers, worker;
	__u8 first;

	if ((void *)(eth + 1) > data_end)
		return verdict(QUENCH_STAT_PASS_NOT_IP, XDP_PASS);
	proto = eth->h_proto;
	data = eth + 1;
	if (proto == bpf_htons(ETH_P_8021Q_) || proto == bpf_htons(ETH_P_8021AD_)) {
		__be16 *tag = data;

		if ((void *)(tag + 2) > data_end)
			return verdict(QUENCH_STAT_PASS_NOT_IP, XDP_PASS);
		proto = tag[1];
		data = tag + 2;
	}

	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = data;
		__u32 ihl;

		if ((void *)(ip + 1) > data_end)
			return verdict(QUENCH_STAT_PASS_MALFORMED, XDP_PASS);
		if (ip->protocol != IPPROTO_UDP)
			return verdict(QUENCH_STAT_PASS_NOT_UDP, XDP_PASS);
		if (ip->frag_off & bpf_htons(IPV4_FRAG_MASK))
			return verdict(QUENCH_STAT_PASS_MALFORMED, XDP_PASS);
		ihl = ip->ihl * 4;
		if (ihl < sizeof(*ip))
			return verdict(QUENCH_STAT_PASS_MALFORMED, XDP_PASS);
		/* Multicast and broadcast are nothing a server answers: the kernel's. */
		if ((ip->daddr & bpf_htonl(0xf0000000)) == bpf_htonl(0xe0000000) ||
		    ip->daddr == 0xffffffff)
			return verdict(QUENCH_STAT_PASS_MALFORMED, XDP_PASS);
		dst.family = 4;
		__builtin_memcpy(dst.addr, &ip->daddr, 4);
		udp = (void *)ip + ihl;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = data;

		if ((void *)(ip6 + 1) > data_end)
			return verdict(QUENCH_STAT_PASS_MALFORMED, XDP_PASS);
		if (ip6->nexthdr != IPPROTO_UDP)
			return verdict(QUENCH_STAT_PASS_NOT_UDP, XDP_PASS);
		if (ip6->daddr.in6_u.u6_addr8[0] == 0xff)
			return verdict(QUENCH_STAT_PASS_MALFORMED, XDP_PASS);
		dst.family = 6;
		__builtin_memcpy(dst.addr, ip6->daddr.in6_u.u6_addr8, 16);
		udp = (void *)(ip6 + 1);
		/* RFC 8200 §8.1: a zero UDP checksum is invalid over IPv6; the kernel drops
		 * it. (A partial checksum from a veth peer is the folded pseudo-header sum,
		 * never zero.) */
		if ((void *)(udp + 1) <= data_end && udp->check == 0)
			return verdict(QUENCH_STAT_PASS_MALFORMED, XDP_PASS);
	} else {
		return verdict(QUENCH_STAT_PASS_NOT_IP, XDP_PASS);
	}

	if ((void *)(udp + 1) > data_end)
		return verdict(QUENCH_STAT_PASS_MALFORMED, XDP_PASS);
	dport = bpf_ntohs(udp->dest);
	if (!bpf_map_lookup_elem(&ports, &dport))
		return verdict(QUENCH_STAT_PASS_OTHER_PORT, XDP_PASS);
	if (!bpf_map_lookup_elem(&local_addrs, &dst))
		return verdict(QUENCH_STAT_PASS_NOT_LOCAL, XDP_PASS);
	/* No reply can go to port 0. */
	if (udp->source == 0)
		return verdict(QUENCH_STAT_PASS_MALFORMED, XDP_PASS);
	/* Packet pointers stay valid across map lookups; only helpers that change packet
	 * data (adjust_head, ...) invalidate them, and this program calls none. */

	udp_len = bpf_ntohs(udp->len);
	if (udp_len < sizeof(*udp))
		return verdict(QUENCH_STAT_PASS_MALFORMED, XDP_PASS);
	plen = udp_len - sizeof(*udp);
	quic = (__u8 *)(udp + 1);
	if ((void *)(quic + 1) > data_end || (void *)quic + plen > data_end) {
		if (plen == 0)
			return verdict(QUENCH_STAT_DROP_BAD_SHORT, XDP_DROP);
		return verdict(QUENCH_STAT_PASS_MALFORMED, XDP_PASS);
	}

	n_workers = cfg.n_workers ? cfg.n_workers : 1;
	first = quic[0];
	if (first & 0x80) {
		__u32 version, dcid_len, known, hash = FNV_BASIS;
		__u8 *dcid;
		int i;

		/* RFC 8999 §5.1: flags, version, DCID length, DCID. */
		if ((void *)(quic + 6) > data_end || plen < 6)
			return verdict(QUENCH_STAT_DROP_BAD_LONG, XDP_DROP);
		version = ((__u32)quic[1] << 24) | ((__u32)quic[2] << 16) |
			  ((__u32)quic[3] << 8) | quic[4];
		known = version == QUIC_V1 || version == QUIC_V2;
		/* RFC 9000 §17.2, RFC 9369 §3: the fixed bit is 1 in v1 and v2. Other versions
		 * define their own bits (RFC 8999): not ours to judge. */
		if (known && !(first & 0x40))
			return verdict(QUENCH_STAT_DROP_FIXED_BIT, XDP_DROP);
		dcid_len = quic[5];
		if (6 + dcid_len > plen)
			return verdict(QUENCH_STAT_DROP_BAD_LONG, XDP_DROP);
		if (version != 0 && !known) {
			/* A version we do not speak: RFC 9000 §5.2.2 drops it under 1200 bytes;
			 * at 1200 or more userspace answers with Version Negotiation, whatever the
			 * DCID's length (RFC 8999 allows 255), so it is hashed on at most its first
			 * 20 bytes below. */
			if (cfg.drop_small_initial && plen < QUENCH_MIN_INITIAL_DATAGRAM)
				return verdict(QUENCH_STAT_DROP_SHORT_INITIAL, XDP_DROP);
		} else if (dcid_len > QUENCH_MAX_CID_LEN) {
			/* RFC 9000 §17.2: v1 and v2 DCIDs are at most 20 bytes. */
			return verdict(QUENCH_STAT_DROP_BAD_LONG, XDP_DROP);
		}
		/* RFC 9000 §14.1: a server MUST discard an Initial packet carried in a UDP
		 * datagram whose payload is smaller than 1200 bytes. */
		if (cfg.drop_small_initial && is_initial(version, first) &&
		    plen < QUENCH_MIN_INITIAL_DATAGRAM)
			return verdict(QUENCH_STAT_DROP_SHORT_INITIAL, XDP_DROP);
		dcid = quic + 6;
		/* One of our CIDs (our length, and byte 0 describing it as QUIC-LB does): the
		 * worker byte names the owner. Anything else a client chose: hashed. */
		if (dcid_len == cfg.cid_len && dcid_len > 0 && (void *)(dcid + 1) <= data_end &&
		    (dcid[0] & 0x1f) == ((cfg.cid_len - 1) & 0x1f)) {
			__u32 off = cfg.worker_offset;

			if (off >= QUENCH_MAX_CID_LEN)
				return verdict(QUENCH_STAT_DROP_BAD_LONG, XDP_DROP);
			if ((void *)(dcid + off + 1) > data_end)
				return verdict(QUENCH_STAT_DROP_BAD_LONG, XDP_DROP);
			worker = dcid[off] % n_workers;
		} else {
			for (i = 0; i < QUENCH_MAX_CID_LEN; i++) {
				__u8 *b = dcid + i;

				if (i >= dcid_len)
					break;
				/* Keep clang from folding the check into pkt_end arithmetic,
				 * which the verifier rejects. */
				barrier_var(b);
				if ((void *)(b + 1) > data_end)
					return verdict(QUENCH_STAT_DROP_BAD_LONG, XDP_DROP);
				hash = (hash ^ *b) * FNV_PRIME;
			}
			worker = arrival_worker(ctx, hash, n_workers);
		}
	} else {
		__u32 off = cfg.worker_offset;

		if (!(first & 0x40))
			return verdict(QUENCH_STAT_DROP_FIXED_BIT, XDP_DROP);
		/* A short header needs the DCID plus room for a packet number and the header
		 * protection sample (RFC 9001 §5.4.2). */
		if (plen < 1 + cfg.cid_len + QUENCH_SHORT_TAIL_MIN || off >= QUENCH_MAX_CID_LEN)
			return verdict(QUENCH_STAT_DROP_BAD_SHORT, XDP_DROP);
		if ((void *)(quic + 1 + off + 1) > data_end)
			return verdict(QUENCH_STAT_DROP_BAD_SHORT, XDP_DROP);
		worker = quic[1 + off] % n_workers;
	}
	return steer(ctx, worker);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
