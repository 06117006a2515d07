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
#define IDENTITY_HOST 1   /* addresses of this node: always allowed */
#define IDENTITY_WORLD 2  /* an address the ipcache does not know */
/* A Service address whose frontends the services map could not hold: its
 * packets are judged before DNAT, and no peer rule (only "any peer") allows
 * this identity, so an ipBlock around it opens nothing. */
#define IDENTITY_SERVICE_UNWRITTEN 3
#define IDENTITY_FIRST_ALLOCATED 256

#ifndef IPPROTO_SCTP
#define IPPROTO_SCTP 132
#endif
#define IPPROTO_ICMPV6_ 58

#undef NSEC_PER_SEC
#define NSEC_PER_SEC 1000000000ULL

/* Pin directory for maps. The loader passes -DPIN_DIR="..."; the default is
 * only for compiling this header on its own. */
#ifndef PIN_DIR
#define PIN_DIR "/sys/fs/bpf/enforcer"
#endif

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
