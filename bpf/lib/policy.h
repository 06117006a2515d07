/* policy: what a local endpoint may exchange with which peers.
 *
 * One LPM trie for all endpoints. The key is laid out so the fields that are
 * always matched exactly come first and the ones a rule may leave open come
 * last, in the order they widen: protocol, then destination port. A prefix
 * that stops before the port matches every port of the protocol; one that
 * stops before the protocol matches every protocol. Port ranges (endPort)
 * become a few masked prefixes of the big-endian port, as Cilium does
 * (1-65535 -> 16 prefixes).
 *
 * The peer identity cannot be a trailing wildcard without also widening the
 * port, so "any peer" is identity 0 and costs a second lookup, done only when
 * the first one misses.
 *
 * An entry holds the final verdict, not a rule to evaluate: the compiler
 * runs the whole tiered pipeline (Admin cluster policies, NetworkPolicy,
 * Baseline cluster policies, default allow; compiler/tiers.py) offline and
 * writes, per endpoint, direction and peer identity, which verdict reason
 * each protocol and port gets. The longest match for the peer's own
 * identity decides, else the longest for every peer; a miss is
 * NetworkPolicy's default deny. However many tiers, priorities and rules
 * apply, a new flow costs these two lookups at most.
 *
 *   bits:  identity(32) endpoint(16) direction(8) | protocol(8) | dport(16)
 *          <------------- always exact ------------>
 */
#ifndef ENFORCER_POLICY_H
#define ENFORCER_POLICY_H

#include "common.h"
#include "reasons.h"

struct policy_key {
	__u32 prefixlen;
	__u32 identity;    /* peer identity, IDENTITY_ANY for every peer */
	__u16 endpoint_id; /* local endpoint the entry belongs to */
	__u8 direction;    /* DIR_INGRESS / DIR_EGRESS */
	__u8 protocol;     /* IPPROTO_* */
	__be16 dport;      /* big-endian so a range is a bit prefix */
	__u16 pad;
};

/* The prefix lengths come as -D flags, derived from the Python key layout;
 * they must be where this struct's fields start. */
#define POLICY_KEY_BITS_TO(field) \
	(8 * (__builtin_offsetof(struct policy_key, field) - \
	      __builtin_offsetof(struct policy_key, identity)))
_Static_assert(POLICY_PREFIX_EXACT == POLICY_KEY_BITS_TO(protocol),
	       "POLICY_PREFIX_EXACT: identity, endpoint, direction");
_Static_assert(POLICY_PREFIX_PROTO == POLICY_KEY_BITS_TO(dport),
	       "POLICY_PREFIX_PROTO: + protocol, every port");
_Static_assert(POLICY_PREFIX_FULL == POLICY_KEY_BITS_TO(pad),
	       "POLICY_PREFIX_FULL: + destination port");

/* Audit mode rides in the same entry: the compiler walks the pipeline
 * twice, without and with the policies in audit mode, and where the first
 * allows and the second drops, writes that drop as audit_reason and
 * audit_rule_id (0 elsewhere). The lookup that decides a new flow then also
 * says whether an audited policy would drop it: no extra lookup, and
 * enforced traffic pays one byte test. Keys split wherever either verdict
 * changes, so the longest match answers for both. */
struct policy_entry {
	__u32 rule_id;       /* daemon's id of the (policy, rule) that decided, 0: none */
	__u8 reason;         /* the verdict: ALLOW_POLICY, DROP_ADMIN, ... (reasons.h) */
	__u8 audit_reason;   /* 0, or the DROP_ reason the audited policies would give */
	__u16 pad;
	__u32 audit_rule_id; /* the rule of that drop, 0: none (NetworkPolicy's default deny) */
};

/* The verdict reasons a policy entry may hold that drop. */
static __always_inline int policy_reason_drops(int reason)
{
	return reason == DROP_POLICY || reason == DROP_ADMIN || reason == DROP_BASELINE;
}

BPF_TABLE_PINNED7("lpm_trie", struct policy_key, struct policy_entry,
		  policy, POLICY_MAX, PIN_DIR "/" POLICY_PIN, BPF_F_NO_PREALLOC);

/* Look the flow up for one peer identity, then for every peer.
 * Returns the entry that decides it, or NULL (NetworkPolicy's default
 * deny). */
static __always_inline struct policy_entry *
policy_lookup(__u16 endpoint_id, __u8 dir, __u32 identity, __u8 proto, __be16 dport)
{
	struct policy_key key = {
		.prefixlen = POLICY_PREFIX_FULL,
		.identity = identity,
		.endpoint_id = endpoint_id,
		.direction = dir,
		.protocol = proto,
		.dport = dport,
	};
	struct policy_entry *e = policy.lookup(&key);
	if (e)
		return e;
	key.identity = IDENTITY_ANY;
	return policy.lookup(&key);
}

#endif
