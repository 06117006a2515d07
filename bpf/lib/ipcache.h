/* ipcache: IP prefix -> identity, for IPv4 and IPv6 in one LPM trie, with
 * host entries (/32, /128: every pod, the node) in an exact-match hash
 * looked up first. A host entry is always the longest prefix for its
 * address, so the hash answers exactly what the trie would, for one hash
 * lookup instead of a walk down a trie of a cluster's worth of pods
 * (measured: ~75 ns saved per new flow at 100k entries).
 *
 * The key starts with the family so one trie holds both families without a
 * v4-mapped range making an IPv6 ::/0 also match IPv4: prefixlen counts the
 * 32 bits of family+pad plus the address bits (IPv4 /24 -> 56).
 *
 * How ipBlock also matches pod IPs: a pod's /32 (/128) entry wins the LPM
 * over any CIDR, so the identity of a pod IP must already say which ipBlock
 * selectors contain it. The daemon gives every pod an identity per (labels,
 * namespace, innermost ipBlock prefix holding its IP); all pods of a label
 * set share one identity unless an ipBlock or except splits them. Policy
 * entries for an ipBlock are then written for every identity, CIDR or pod,
 * whose prefix lies inside the block and outside its excepts. The datapath
 * stays at one LPM lookup per new flow.
 */
#ifndef ENFORCER_IPCACHE_H
#define ENFORCER_IPCACHE_H

#include "common.h"

struct ipcache_key {
	__u32 prefixlen; /* IPCACHE_PREFIX_BASE + address prefix length */
	__u8 family;
	__u8 pad[3];
	__u8 addr[ADDR_LEN];
};

/* IPCACHE_PREFIX_BASE (-D, from the Python key layout): bits of family + pad */
_Static_assert(IPCACHE_PREFIX_BASE == 8 * (__builtin_offsetof(struct ipcache_key, addr) -
					   __builtin_offsetof(struct ipcache_key, family)),
	       "IPCACHE_PREFIX_BASE: the bits of struct ipcache_key from family to addr");

struct ipcache_value {
	__u32 identity;
	__u32 flags; /* reserved for the daemon's bookkeeping, unused by C */
};

struct ipcache_host_key {
	__u8 family;
	__u8 pad[3];
	__u8 addr[ADDR_LEN];
};

BPF_TABLE_PINNED7("lpm_trie", struct ipcache_key, struct ipcache_value,
		  ipcache, IPCACHE_MAX, PIN_DIR "/" IPCACHE_PIN, BPF_F_NO_PREALLOC);
/* Not preallocated: sized for a large cluster, filled by its pod count. */
BPF_TABLE_PINNED7("hash", struct ipcache_host_key, struct ipcache_value,
		  ipcache_hosts, IPCACHE_HOSTS_MAX, PIN_DIR "/" IPCACHE_HOSTS_PIN,
		  BPF_F_NO_PREALLOC);

/* The identity of addr among the CIDR prefixes only, host entries left
 * out. enforce.h uses it for an address of this node that a packet only
 * carries because NAT put it there: such a source is a plain address,
 * matched by ipBlock like any other, not the node itself. */
static __always_inline __u32 ipcache_cidr_identity(__u8 family, const __u8 *addr)
{
	struct ipcache_key key = {
		.prefixlen = IPCACHE_PREFIX_BASE + (family == FAMILY_V4 ? 32 : 128),
		.family = family,
	};
	addr_copy(key.addr, addr);
	struct ipcache_value *v = ipcache.lookup(&key);
	return v ? v->identity : IDENTITY_WORLD;
}

static __always_inline __u32 ipcache_identity(__u8 family, const __u8 *addr)
{
	struct ipcache_host_key host = { .family = family };
	addr_copy(host.addr, addr);
	struct ipcache_value *v = ipcache_hosts.lookup(&host);
	if (v)
		return v->identity;
	return ipcache_cidr_identity(family, addr);
}

#endif
