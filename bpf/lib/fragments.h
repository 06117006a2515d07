/* fragments: ports of fragmented datagrams, so later fragments (which carry
 * no L4 header) face the same port rules and conntrack entry as the first.
 * A later fragment whose first fragment was not seen is dropped: letting it
 * through would let a crafted fragment bypass port rules.
 */
#ifndef ENFORCER_FRAGMENTS_H
#define ENFORCER_FRAGMENTS_H

#include "common.h"
#include "parse.h"

#ifndef FRAGMENTS_MAX
#define FRAGMENTS_MAX 8192
#endif

struct frag_key {
	__u8 saddr[ADDR_LEN];
	__u8 daddr[ADDR_LEN];
	__u32 id;
	__u8 family;
	__u8 proto;
	__u16 pad;
};

struct frag_ports {
	__be16 sport;
	__be16 dport;
};

BPF_TABLE_PINNED("lru_hash", struct frag_key, struct frag_ports, fragments,
		 FRAGMENTS_MAX, PIN_DIR "/fragments_v1");

static __always_inline void frag_key_for(struct frag_key *key, const struct flow *f)
{
	addr_copy(key->saddr, f->saddr);
	addr_copy(key->daddr, f->daddr);
	key->id = f->frag_id;
	key->family = f->family;
	key->proto = f->proto;
}

/* First fragments record their ports (or ICMP echo id); later ones get them
 * back. Returns 0 or DROP_FRAGMENT_UNKNOWN. */
static __always_inline int frag_track(struct flow *f)
{
	if (f->frag == FRAG_NONE)
		return 0;
	struct frag_key key = {};
	frag_key_for(&key, f);
	if (f->frag == FRAG_FIRST) {
		struct frag_ports p = { .sport = f->sport, .dport = f->dport };
		fragments.update(&key, &p);
		return 0;
	}
	struct frag_ports *p = fragments.lookup(&key);
	if (!p) {
		/* Without ports a protocol with port rules cannot be judged;
		 * any other protocol only ever meets protocol-wide rules. */
		return proto_has_ports(f->proto) ? DROP_FRAGMENT_UNKNOWN : 0;
	}
	f->sport = p->sport;
	f->dport = p->dport;
	f->has_ports = proto_has_ports(f->proto);
	return 0;
}

#endif
