/* conntrack: connections a local endpoint was allowed to open or accept.
 *
 * Entries are written from the pod's point of view (pod address, peer
 * address, pod port, peer port) and scoped to the pod's host-side interface,
 * so a packet in either direction builds the same key and one lookup finds
 * the connection: the origin recorded in the value tells a reply from more
 * of the same. Being per interface matters for pod-to-pod traffic on one
 * node: the sender's egress entry must not let the packet skip the
 * receiver's ingress policy, which keeps its own entry.
 *
 * Keying by (interface, pod address) rather than endpoint id is what lets an
 * established packet skip the endpoint lookup altogether: an entry is only
 * ever created after the endpoint check (the address belongs to the pod
 * behind this interface), so a hit proves it again, spoofed sources
 * included. The value carries the endpoint id for counters.
 *
 * LRU, so a full table evicts the coldest connection rather than failing to
 * track a new one; expiry is checked on lookup because LRU alone would keep
 * a closed flow alive for as long as the table is not under pressure.
 */
#ifndef ENFORCER_CONNTRACK_H
#define ENFORCER_CONNTRACK_H

#include "common.h"
#include "parse.h"
#include "clock.h"

/* Lifetimes in seconds (Cilium's defaults); the loader may override. */
#ifndef CT_TIMEOUT_SYN
#define CT_TIMEOUT_SYN 60
#endif
#ifndef CT_TIMEOUT_TCP
#define CT_TIMEOUT_TCP 21600
#endif
#ifndef CT_TIMEOUT_CLOSE
#define CT_TIMEOUT_CLOSE 10
#endif
#ifndef CT_TIMEOUT_OTHER
#define CT_TIMEOUT_OTHER 60
#endif
/* Connectionless flows to a Service address: below netfilter's shortest
 * UDP timeout (30 s), so kube-proxy's backend choice outlives our entry
 * (services.h). */
#ifndef CT_TIMEOUT_SERVICE_OTHER
#define CT_TIMEOUT_SERVICE_OTHER 25
#endif
/* Refresh an entry's expiry only when it moved by this much: most packets
 * of a busy flow then read the entry without dirtying its cache line. */
#define CT_REFRESH_GRANULARITY_NS (1ULL * NSEC_PER_SEC)

#define CT_F_SEEN_REPLY 0x1
#define CT_F_FIN_ORIGIN 0x2 /* FIN seen in the origin direction */
#define CT_F_FIN_REPLY 0x4  /* FIN seen in the reply direction */
#define CT_F_CLOSING 0x8    /* RST, or FIN both ways: short lifetime */
#define CT_F_SERVICE 0x10   /* keyed by a Service address (services.h) */
/* A Service connection to judge again after DNAT: the daemon cannot tell
 * from the entry which backend it reached, so when policy changes it asks
 * for a new verdict instead of cutting the connection. Its replies pass
 * meanwhile; its next packet out is deferred and judged (enforce.h). */
#define CT_F_RECHECK 0x20
/* Opened by a TCP packet that was not a SYN: a connection under way before
 * it was tracked (its entry lost, evicted, or cut by revocation and brought
 * back by the pod's own next packet, a delayed ACK). Who opened it is not
 * known, so a packet in the other direction is no proven reply: it faces
 * policy, and once one passes the entry is an ordinary one. Without this, a
 * connection revocation cut came back whole: the peer's packets passed as
 * replies to the pod's ACK. */
#define CT_F_MIDSTREAM 0x40

struct ct_key {
	__u8 pod[ADDR_LEN];
	__u8 peer[ADDR_LEN];
	__u32 ifindex;    /* the pod's host-side interface */
	__be16 pod_port;  /* ICMP echo: the echo id */
	__be16 peer_port; /* ICMP echo: the echo id */
	__u8 family;
	__u8 proto;
	__u16 pad;
};

struct ct_entry {
	__u64 expires_ns; /* datapath clock: jiffies in ns (clock.h) */
	__u32 rule_id;    /* policy entry that allowed it, 0 if not isolated */
	__u16 endpoint_id;
	__u8 origin;      /* DIR_* of the packet that opened it */
	__u8 flags;       /* CT_F_* */
	__u8 reason;      /* ALLOW_* that opened it */
	__u8 pad[7];
};

BPF_TABLE_PINNED("lru_hash", struct ct_key, struct ct_entry, conntrack,
		 CONNTRACK_MAX, PIN_DIR "/" CONNTRACK_PIN);

/* Key for a packet crossing interface ifindex in direction dir. */
static __always_inline void ct_key_for(struct ct_key *key, __u32 ifindex,
				       int dir, const struct flow *f)
{
	key->ifindex = ifindex;
	key->family = f->family;
	key->proto = f->proto;
	if (dir == DIR_EGRESS) {
		addr_copy(key->pod, f->saddr);
		addr_copy(key->peer, f->daddr);
		key->pod_port = f->sport;
		key->peer_port = f->dport;
	} else {
		addr_copy(key->pod, f->daddr);
		addr_copy(key->peer, f->saddr);
		key->pod_port = f->dport;
		key->peer_port = f->sport;
	}
}

/* Key of the flow an ICMP error quotes. The quoted packet travelled the
 * other way: leaving the pod (dir EGRESS) it was sent to the pod, entering
 * the pod it was sent by the pod. Returns 0 when the quote does not concern
 * this pod's address. */
static __always_inline int ct_key_for_icmp_error(struct ct_key *key,
						 __u32 ifindex, int dir,
						 const struct flow *f)
{
	if (!f->inner_ok)
		return 0;
	key->ifindex = ifindex;
	key->family = f->family;
	key->proto = f->inner_proto;
	if (dir == DIR_EGRESS) {
		if (!addr_equal(f->inner_daddr, f->saddr))
			return 0;
		addr_copy(key->pod, f->saddr);
		addr_copy(key->peer, f->inner_saddr);
		key->pod_port = f->inner_dport;
		key->peer_port = f->inner_sport;
	} else {
		if (!addr_equal(f->inner_saddr, f->daddr))
			return 0;
		addr_copy(key->pod, f->daddr);
		addr_copy(key->peer, f->inner_daddr);
		key->pod_port = f->inner_sport;
		key->peer_port = f->inner_dport;
	}
	return 1;
}

static __always_inline __u64 ct_lifetime_ns(const struct flow *f, __u8 flags)
{
	if (f->proto != IPPROTO_TCP)
		return (flags & CT_F_SERVICE ? CT_TIMEOUT_SERVICE_OTHER : CT_TIMEOUT_OTHER) *
		       NSEC_PER_SEC;
	if (flags & CT_F_CLOSING)
		return CT_TIMEOUT_CLOSE * NSEC_PER_SEC;
	if (flags & CT_F_SEEN_REPLY)
		return CT_TIMEOUT_TCP * NSEC_PER_SEC;
	return CT_TIMEOUT_SYN * NSEC_PER_SEC;
}

/* A live entry for key, or NULL if none or expired. */
static __always_inline struct ct_entry *ct_lookup(const struct ct_key *key, __u64 now)
{
	struct ct_entry *e = conntrack.lookup((struct ct_key *)key);
	if (!e || e->expires_ns < now)
		return NULL;
	return e;
}

/* Account a packet of a tracked connection: TCP state and expiry.
 * Returns ALLOW_ESTABLISHED or ALLOW_REPLY. */
static __always_inline int ct_update(struct ct_entry *e, int dir,
				     const struct flow *f, __u64 now)
{
	int reply = dir != e->origin;
	__u8 flags = e->flags;

	if (f->proto == IPPROTO_TCP) {
		if (f->tcp_flags & TCP_FLAG_RST)
			flags |= CT_F_CLOSING;
		if (f->tcp_flags & TCP_FLAG_FIN)
			flags |= reply ? CT_F_FIN_REPLY : CT_F_FIN_ORIGIN;
		if ((flags & (CT_F_FIN_ORIGIN | CT_F_FIN_REPLY)) ==
		    (CT_F_FIN_ORIGIN | CT_F_FIN_REPLY))
			flags |= CT_F_CLOSING;
	}
	if (reply)
		flags |= CT_F_SEEN_REPLY;

	__u64 expires = now + ct_lifetime_ns(f, flags);
	if (flags != e->flags) {
		e->flags = flags;
		e->expires_ns = expires;
	} else if (!(flags & CT_F_CLOSING) &&
		   expires > e->expires_ns + CT_REFRESH_GRANULARITY_NS) {
		e->expires_ns = expires;
	}
	return reply ? ALLOW_REPLY : ALLOW_ESTABLISHED;
}

/* CT_F_MIDSTREAM for an entry a policy decision opens on this packet: a
 * TCP packet that is not a SYN. (Entries the Service and hairpin paths make
 * for a connection they saw open do not take it.) */
static __always_inline __u8 ct_midstream_flag(const struct flow *f)
{
	return f->proto == IPPROTO_TCP && !(f->tcp_flags & TCP_FLAG_SYN) ? CT_F_MIDSTREAM : 0;
}

/* A packet against the direction of an entry opened mid-stream: policy
 * decides it, as if it were a new flow (CT_F_MIDSTREAM). */
static __always_inline int ct_reverse_unproven(const struct ct_entry *e, int dir)
{
	return (e->flags & CT_F_MIDSTREAM) && dir != e->origin;
}

/* A pure SYN on a closing entry, or one in the reply direction, starts a new
 * connection on a reused tuple: it must face policy again. */
static __always_inline int ct_is_new_connection(const struct ct_entry *e, int dir,
						const struct flow *f)
{
	if (f->proto != IPPROTO_TCP)
		return 0;
	if ((f->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) != TCP_FLAG_SYN)
		return 0;
	return (e->flags & CT_F_CLOSING) || dir != e->origin;
}

/* flags: CT_F_SERVICE, CT_F_MIDSTREAM or 0. */
static __always_inline void ct_create(const struct ct_key *key, int dir,
				      const struct flow *f, __u16 endpoint_id,
				      __u32 rule_id, __u8 reason, __u8 flags, __u64 now)
{
	struct ct_entry e = {
		.origin = dir,
		.endpoint_id = endpoint_id,
		.rule_id = rule_id,
		.reason = reason,
		.flags = flags,
	};
	if (f->proto == IPPROTO_TCP && (f->tcp_flags & TCP_FLAG_RST))
		e.flags |= CT_F_CLOSING;
	else if (f->proto == IPPROTO_TCP && !(f->tcp_flags & TCP_FLAG_SYN))
		/* Mid-stream (tracked before a restart or before enforcement
		 * began): treat as established. */
		e.flags |= CT_F_SEEN_REPLY;
	e.expires_ns = now + ct_lifetime_ns(f, e.flags);
	conntrack.update((struct ct_key *)key, &e);
}

#endif
