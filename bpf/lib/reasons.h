/* Verdict reasons: why a packet passed or was dropped.
 *
 * APPEND-ONLY. Values are stored in counters and events and mirrored in the
 * Python package and the gRPC API; a value, once published, never changes
 * meaning. tests/datapath/reasons.golden holds every published entry and a
 * test fails if one is changed or removed. Names start with ALLOW_ or DROP_;
 * that prefix is how Python tells the two apart.
 *
 * This file is parsed by enforcer/datapath/reasons.py: keep one
 * "NAME = value," per line.
 */
#ifndef ENFORCER_REASONS_H
#define ENFORCER_REASONS_H

enum verdict_reason {
	REASON_UNSPEC = 0,
	ALLOW_POLICY = 1,             /* new flow: a policy entry allows it */
	ALLOW_NOT_ISOLATED = 2,       /* new flow: pod not isolated in this direction */
	ALLOW_HOST = 3,               /* peer is this node (kubelet probes) */
	ALLOW_ESTABLISHED = 4,        /* conntrack: more of an allowed flow */
	ALLOW_REPLY = 5,              /* conntrack: reply of an allowed flow */
	ALLOW_RELATED = 6,            /* ICMP error about an allowed flow */
	ALLOW_NEIGHBOR_DISCOVERY = 7, /* IPv6 ND/MLD on the link */
	ALLOW_NON_IP = 8,             /* ARP (the only non-IP frame that passes: parse.h) */
	DROP_POLICY = 9,              /* isolated and no policy entry allows it */
	DROP_SPOOFED_SOURCE = 10,     /* pod sent with an address not its own */
	DROP_UNKNOWN_ENDPOINT = 11,   /* destination is not this interface's pod */
	DROP_MALFORMED = 12,          /* truncated or invalid headers */
	DROP_FRAGMENT_UNKNOWN = 13,   /* non-first fragment, first one never seen */
	DROP_EXT_HEADERS = 14,        /* IPv6 extension header chain too long */
	ALLOW_SERVICE_DEFERRED = 15,  /* to a Service frontend: judged after DNAT (services.h) */
	ALLOW_SELF = 16,              /* the pod's own packet back to it through a Service */
	DROP_NON_IP = 17,             /* neither IP nor ARP: MPLS, PPPoE, LLC, ... (parse.h) */
	ALLOW_ADMIN = 18,             /* new flow: an Admin-tier cluster policy rule accepts it */
	ALLOW_BASELINE = 19,          /* new flow: a Baseline-tier cluster policy rule accepts it */
	DROP_ADMIN = 20,              /* new flow: an Admin-tier cluster policy rule denies it */
	DROP_BASELINE = 21,           /* new flow: a Baseline-tier cluster policy rule denies it */
	ALLOW_AUDIT = 22,             /* new flow: passed; a policy in audit mode would drop it */
	__REASON_MAX = 23,
};

/* Counter slots per endpoint and direction; leaves room to append. */
#define REASON_SLOTS 32

#endif
