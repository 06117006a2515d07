/* services: egress to a Service is judged after kube-proxy's DNAT.
 *
 * A pod's host-side tc ingress (from_pod) sees a packet before the node's
 * netfilter PREROUTING, so a packet to a ClusterIP (or to this node's
 * NodePort) still carries the Service address. NetworkPolicy judges the
 * backend pod the packet is delivered to, which only exists after kube-proxy
 * picked it. So from_pod does not judge such a packet: it records who sent
 * it in skb->mark and lets it through to netfilter; the first hook that sees
 * it after DNAT judges the sender's egress with the translated destination:
 *
 *   - to_pod of a local backend (tc egress of its host-side interface),
 *   - to_network (tc egress of every other node interface: the uplink, an
 *     overlay device, a bridge) for a backend elsewhere.
 *
 * Why the mark: it survives NAT (NodePort and hairpin traffic is also
 * SNATed, which erases the sender's address) and stays on the skb across
 * the node's forwarding path; a pod cannot set it (veth scrubs the mark
 * when a packet changes network namespace). Why the sender's endpoint id in
 * it rather than a flag: the hook after DNAT needs the sender, and after
 * SNAT the packet no longer says who it is. The field is MARK_EP_BITS wide
 * at MARK_EP_SHIFT (configurable: a CNI or kube-proxy must not use those
 * bits; kube-proxy uses 0x4000 and 0x8000, Calico 0xffff0000 by default).
 * A mark another component sets in those bits only adds a check, with one
 * exception: a packet from this node's address carrying the receiving
 * pod's own id passes as that pod's hairpin (enforce.h).
 *
 * Replies come back un-DNATed (source: the Service address), so once the
 * sender's egress is allowed the conntrack entry is written keyed by the
 * Service address on the sender's interface: more of the connection and its
 * replies then take from_pod's and to_pod's one-lookup established path.
 * The Service address is recovered from svc_pending, written by from_pod and
 * keyed by what DNAT leaves alone (the client's address and port). If the
 * same client port was deferred towards two Service addresses the entry is
 * marked ambiguous and no conntrack entry is written: every packet of those
 * flows is then judged after DNAT, slower but never wrong. Likewise when
 * the packet was SNATed on the way (the client address is gone).
 *
 * Service conntrack entries of connectionless protocols live shorter than
 * netfilter's (CT_TIMEOUT_SERVICE_OTHER < nf_conntrack_udp_timeout, 30 s):
 * while ours is live, netfilter still maps the flow to the backend that was
 * judged, so kube-proxy cannot move it to another backend unchecked. TCP
 * picks a backend per connection, and a new connection on a tuple is
 * judged again (conntrack.h: ct_is_new_connection).
 */
#ifndef ENFORCER_SERVICES_H
#define ENFORCER_SERVICES_H

#include "common.h"
#include "parse.h"
#include "conntrack.h"

#ifndef MARK_EP_SHIFT
#define MARK_EP_SHIFT 20
#endif
#define MARK_EP_BITS 10
#define MARK_EP_MASK (((1u << MARK_EP_BITS) - 1) << MARK_EP_SHIFT)

/* A Service frontend kube-proxy DNATs on this node: a ClusterIP port, or a
 * NodePort on one of this node's addresses. */
struct service_key {
	__u8 family;
	__u8 proto;
	__be16 port;
	__u8 addr[ADDR_LEN];
};

struct service_value {
	__u32 flags; /* reserved */
};

#define SVC_PENDING_F_AMBIGUOUS 0x1

/* What DNAT leaves of a deferred packet: its source. */
struct svc_pending_key {
	__u8 client[ADDR_LEN];
	__be16 client_port;
	__u8 family;
	__u8 proto;
};

struct svc_pending_value {
	__u8 service_addr[ADDR_LEN];
	__be16 service_port;
	__u16 flags; /* SVC_PENDING_F_* */
};

/* Not preallocated: sized for a large cluster, filled by its Service count. */
BPF_TABLE_PINNED7("hash", struct service_key, struct service_value, services,
		  SERVICES_MAX, PIN_DIR "/" SERVICES_PIN, BPF_F_NO_PREALLOC);
/* LRU: an entry whose packet never reached a hook after DNAT (dropped by
 * netfilter, say) must not hold a slot for ever. */
BPF_TABLE_PINNED("lru_hash", struct svc_pending_key, struct svc_pending_value,
		 svc_pending, SVC_PENDING_MAX, PIN_DIR "/" SVC_PENDING_PIN);

static __always_inline int svc_is_frontend(const struct flow *f, const __u8 *addr,
					   __be16 port)
{
	if (!f->has_ports)
		return 0;
	struct service_key key = {
		.family = f->family,
		.proto = f->proto,
		.port = port,
	};
	addr_copy(key.addr, addr);
	return services.lookup(&key) != NULL;
}

static __always_inline int is_service_frontend(const struct flow *f)
{
	return svc_is_frontend(f, f->daddr, f->dport);
}

/* Leave the sender's endpoint id in the mark (only our bits change). */
static __always_inline void svc_mark(struct __sk_buff *skb, __u16 endpoint_id)
{
	skb->mark = (skb->mark & ~MARK_EP_MASK) |
		    (((__u32)endpoint_id << MARK_EP_SHIFT) & MARK_EP_MASK);
}

/* The svc_pending key of a flow whose sender has address client: one
 * definition for from_pod, which writes it, and the hooks after DNAT,
 * which look it up. */
static __always_inline struct svc_pending_key svc_pending_key_of(const struct flow *f,
								 const __u8 *client)
{
	struct svc_pending_key key = {
		.client_port = f->sport,
		.family = f->family,
		.proto = f->proto,
	};
	addr_copy(key.client, client);
	return key;
}

/* from_pod: hand the verdict on to the hook after DNAT. */
static __always_inline void svc_defer(struct __sk_buff *skb, const struct flow *f,
				      __u16 endpoint_id)
{
	struct svc_pending_key key = svc_pending_key_of(f, f->saddr);
	struct svc_pending_value *old = svc_pending.lookup(&key);
	if (old) {
		if (!addr_equal(old->service_addr, f->daddr) || old->service_port != f->dport)
			old->flags |= SVC_PENDING_F_AMBIGUOUS;
	} else {
		struct svc_pending_value v = { .service_port = f->dport };
		addr_copy(v.service_addr, f->daddr);
		svc_pending.update(&key, &v);
	}
	svc_mark(skb, endpoint_id);
}

/* The endpoint id from_pod left in the mark, 0 if none. */
static __always_inline __u16 svc_deferred_sender(const struct __sk_buff *skb)
{
	return (skb->mark & MARK_EP_MASK) >> MARK_EP_SHIFT;
}

static __always_inline void svc_clear_mark(struct __sk_buff *skb)
{
	skb->mark &= ~MARK_EP_MASK;
}

/* The Service address a judged packet was sent to, if it can be known:
 * fills key with the sender-side conntrack key of the connection as
 * from_pod sees it (client -> Service address) and returns 1. client is
 * the sender's address: the packet's source, or, for a pod's packet back
 * to itself (hairpin, source masqueraded), its destination. */
static __always_inline int svc_take_pending(struct ct_key *key, __u32 ifindex,
					    const struct flow *f, const __u8 *client)
{
	struct svc_pending_key pk = svc_pending_key_of(f, client);
	struct svc_pending_value *v = svc_pending.lookup(&pk);
	if (!v || (v->flags & SVC_PENDING_F_AMBIGUOUS))
		return 0;
	key->ifindex = ifindex;
	key->family = f->family;
	key->proto = f->proto;
	addr_copy(key->pod, client);
	addr_copy(key->peer, v->service_addr);
	key->pod_port = f->sport;
	key->peer_port = v->service_port;
	svc_pending.delete(&pk);
	return 1;
}

/* A deferred packet dropped after DNAT: its pending entry goes too. Left
 * behind, it would outlive its flow in the LRU, and a later flow from the
 * same client port to another Service would look ambiguous: no conntrack
 * entry, so its replies to an ingress-isolated client would face policy
 * as new flows from the Service address, and be dropped. */
static __always_inline void svc_forget_pending(const struct flow *f, const __u8 *client)
{
	struct svc_pending_key pk = svc_pending_key_of(f, client);
	svc_pending.delete(&pk);
}

#endif
