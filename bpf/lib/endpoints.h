/* endpoints: local pod IP -> endpoint. One entry per pod address (a
 * dual-stack pod has two entries with the same id).
 *
 * The same lookup serves both jobs the programs have: identifying the pod
 * and checking that a packet leaving an interface carries that interface's
 * pod address (anti-spoofing), by comparing ifindex.
 */
#ifndef ENFORCER_ENDPOINTS_H
#define ENFORCER_ENDPOINTS_H

#include "common.h"

/* ENDPOINTS_MAX counts addresses, not pods. Endpoint ids index the
 * counters array, so they are bounded (below ENDPOINT_IDS_MAX); 0 means "no
 * endpoint" (spoofed or unknown traffic). */

/* "Isolated": the policy map decides its new flows in that direction (a
 * NetworkPolicy isolates it, or a cluster policy with rules of that
 * direction selects it); otherwise they pass with no lookup. */
#define EP_F_INGRESS_ISOLATED 0x1
#define EP_F_EGRESS_ISOLATED 0x2
/* A cluster policy governs its egress: what it sends to this node's own
 * addresses is judged by the policy map too (peer IDENTITY_HOST), since
 * Admin and Baseline rules may deny it; NetworkPolicy alone never does. */
#define EP_F_EGRESS_HOST_JUDGED 0x4
/* A cluster policy selects it: its traffic back to itself through a
 * Service is judged by the policy map (peer IDENTITY_SELF) in both
 * directions instead of passing as ALLOW_SELF. */
#define EP_F_SELF_JUDGED 0x8

struct endpoint_key {
	__u8 family;
	__u8 pad[3];
	__u8 addr[ADDR_LEN];
};

struct endpoint_info {
	__u32 ifindex;  /* host-side interface the pod sits behind */
	__u32 identity; /* the pod's own identity, for events */
	__u16 id;       /* endpoint id, < ENDPOINT_IDS_MAX */
	__u8 flags;     /* EP_F_* */
	__u8 pad;
};

BPF_TABLE_PINNED("hash", struct endpoint_key, struct endpoint_info,
		 endpoints, ENDPOINTS_MAX, PIN_DIR "/" ENDPOINTS_PIN);

/* The same endpoints by id: the hook that judges a Service packet after
 * DNAT knows the sender only by the id from_pod left in the mark
 * (services.h). A hash rather than an array so a released id has no entry
 * at all instead of a zeroed one. */
BPF_TABLE_PINNED("hash", __u32, struct endpoint_info, endpoint_ids,
		 ENDPOINT_IDS_MAX, PIN_DIR "/" ENDPOINT_IDS_PIN);

static __always_inline struct endpoint_info *endpoint_by_id(__u16 id)
{
	__u32 key = id;
	return endpoint_ids.lookup(&key);
}

static __always_inline struct endpoint_info *
endpoint_lookup(__u8 family, const __u8 *addr)
{
	struct endpoint_key key = { .family = family };
	addr_copy(key.addr, addr);
	return endpoints.lookup(&key);
}

static __always_inline int endpoint_isolated(const struct endpoint_info *ep, int dir)
{
	return ep->flags & (dir == DIR_INGRESS ? EP_F_INGRESS_ISOLATED
					       : EP_F_EGRESS_ISOLATED);
}

#endif
