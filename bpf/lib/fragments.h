/* fragments: what the first fragment of a datagram says about it (the
 * upper-layer protocol and its ports), so later fragments, which carry no
 * L4 header, face the same port rules and conntrack entry as the first.
 * A later fragment whose first fragment was not seen is dropped: letting it
 * through would let a crafted fragment bypass port rules.
 *
 * The key is what every fragment of one datagram carries, and what the
 * receiving kernel reassembles by, so that a record belongs to exactly the
 * datagram a later fragment will be joined to:
 *   IPv4: (source, destination, id, protocol), as Linux's ip_frag;
 *   IPv6: (source, destination, id), as Linux's ipv6 reassembly: no
 *         protocol. A later fragment does not know its upper-layer
 *         protocol: its fragment header's next header is the first header
 *         of the fragmentable part (a destination options header, say, as
 *         RFC 8200 places one meant for the final destination only), and
 *         the receiver ignores that field in every fragment but the first.
 *         The first fragment, which has walked its headers to the upper
 *         layer, records that protocol and a later one takes it with the
 *         ports. Keyed by the next header too, later fragments behind an
 *         extension header would miss their record, and an allowed
 *         datagram would lose them.
 * A later fragment can therefore only ever take the record of the datagram
 * it is reassembled into: a second first fragment of the same datagram
 * replaces the record, and Linux drops the whole datagram anyway (its
 * fragments overlap, RFC 5722).
 */
#ifndef ENFORCER_FRAGMENTS_H
#define ENFORCER_FRAGMENTS_H

#include "common.h"
#include "parse.h"

struct frag_key {
	__u8 saddr[ADDR_LEN];
	__u8 daddr[ADDR_LEN];
	__u32 id;
	__u8 family;
	__u8 proto; /* IPv4: the header's protocol; IPv6: always 0 (above) */
	__u16 pad;
};

struct frag_record {
	__be16 sport;  /* ports, or the ICMP echo id both ways */
	__be16 dport;
	__u8 proto;    /* upper-layer protocol, after any extension headers */
	__u8 pad[3];
};

BPF_TABLE_PINNED("lru_hash", struct frag_key, struct frag_record, fragments,
		 FRAGMENTS_MAX, PIN_DIR "/" FRAGMENTS_PIN);

static __always_inline void frag_key_for(struct frag_key *key, const struct flow *f)
{
	addr_copy(key->saddr, f->saddr);
	addr_copy(key->daddr, f->daddr);
	key->id = f->frag_id;
	key->family = f->family;
	key->proto = f->family == FAMILY_V4 ? f->proto : 0;
}

/* First fragments record their protocol and ports (or ICMP echo id); later
 * ones get them back. Returns 0 or DROP_FRAGMENT_UNKNOWN. */
static __always_inline int frag_track(struct flow *f)
{
	if (f->frag == FRAG_NONE)
		return 0;
	struct frag_key key = {};
	frag_key_for(&key, f);
	if (f->frag == FRAG_FIRST) {
		struct frag_record r = { .sport = f->sport, .dport = f->dport, .proto = f->proto };
		fragments.update(&key, &r);
		return 0;
	}
	struct frag_record *r = fragments.lookup(&key);
	if (!r) {
		/* Without ports a protocol with port rules cannot be judged;
		 * any other IPv4 protocol only ever meets protocol-wide rules.
		 * An IPv6 later fragment's protocol is unknown without its
		 * first fragment. */
		return f->family == FAMILY_V6 || proto_has_ports(f->proto)
			       ? DROP_FRAGMENT_UNKNOWN : 0;
	}
	f->proto = r->proto;
	f->sport = r->sport;
	f->dport = r->dport;
	f->has_ports = proto_has_ports(r->proto);
	return 0;
}

#endif
