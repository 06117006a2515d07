/* Shared constants and small helpers for every enforcer tc program.
 *
 * Everything that Python must agree with lives in a header of its own
 * (reasons.h and the map headers); this file only holds what the C side needs.
 */
#ifndef ENFORCER_COMMON_H
#define ENFORCER_COMMON_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/in6.h>

/* Address families as stored in map keys. Our own small numbers rather than
 * AF_INET/AF_INET6 so a key dump reads naturally (4 and 6). */
#define FAMILY_V4 4
#define FAMILY_V6 6

/* Direction of a packet relative to the pod whose interface it crosses, and
 * so the NetworkPolicy direction that governs it. tc ingress on the
 * host-side interface sees what the pod sends (its egress policy); tc egress
 * sees what is delivered into the pod (its ingress policy). */
#define DIR_INGRESS 0
#define DIR_EGRESS 1

/* Reserved identities. 0 is never an identity of a peer: in the policy map it
 * is the wildcard "any peer". Pods and CIDRs get identities from
 * IDENTITY_FIRST_ALLOCATED upwards, allocated by the daemon. */
#define IDENTITY_ANY 0
#define IDENTITY_HOST 1   /* addresses of this node (kubelet probes pass; enforce.h) */
#define IDENTITY_WORLD 2  /* an address the ipcache does not know */
/* A Service address whose frontends the services map could not hold: its
 * packets are judged before DNAT, and no peer rule (only "any peer") allows
 * this identity, so an ipBlock around it opens nothing. */
#define IDENTITY_SERVICE_UNWRITTEN 3
/* Never in the ipcache: the policy map's peer for a pod's own traffic back
 * to it through a Service (hairpin), which cluster policies judge
 * (ClusterNetworkPolicy: a pod reaching itself through a Service is
 * subject to them; through its own address it is not). */
#define IDENTITY_SELF 4
#define IDENTITY_FIRST_ALLOCATED 256

#ifndef IPPROTO_SCTP
#define IPPROTO_SCTP 132
#endif
#define IPPROTO_ICMPV6_ 58

#undef NSEC_PER_SEC
#define NSEC_PER_SEC 1000000000ULL

/* Map facts come from the loader as -D flags, derived from one table
 * (enforcer/datapath/registry.py), with no defaults here: PIN_DIR; per map,
 * NAME_MAX (its capacity) and NAME_PIN (its pin name, layout version
 * included), used as `BPF_TABLE_PINNED(..., name, NAME_MAX,
 * PIN_DIR "/" NAME_PIN)`; and the LPM keys' prefix lengths, which the map
 * headers check against their structs. The loader also appends a
 * _Static_assert of every key and value struct's size and fields against
 * their Python mirrors (enforcer/datapath/layout.py). */

#define ADDR_LEN 16

static __always_inline void addr_copy(__u8 *dst, const __u8 *src)
{
	__builtin_memcpy(dst, src, ADDR_LEN);
}

static __always_inline int addr_equal(const __u8 *a, const __u8 *b)
{
	const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;
	return x[0] == y[0] && x[1] == y[1];
}

#endif
