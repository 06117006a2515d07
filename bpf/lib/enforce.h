/* The decision for one packet on a pod's host-side interface, shared by both
 * attach points; dir says which policy direction of the pod it is.
 *
 * Order, cheapest and most common first:
 *   parse (fast path, else full; ARP: its sender checked, then passes)
 *   -> IPv6 link control -> fragments
 *   -> [to_pod: a sender's egress deferred to here, services.h;
 *       the pod's own packet back through a Service: passes]
 *   -> conntrack (established/reply: done, no other lookup)
 *   -> endpoint + anti-spoofing -> ICMP error of a tracked flow
 *   -> [from_pod: to a Service frontend? defer, services.h]
 *   -> peer identity (ipcache) -> own node -> isolation -> policy
 *   -> track the new connection; its event says it passed or, when the
 *      entry holds an audited drop (policy.h), that it would be dropped.
 *
 * "Own node" is the node's addresses as the source of a packet the node
 * itself sent (skb->ingress_ifindex 0: kubelet probes, host-network pods)
 * or as the destination of what a pod sends. The first always passes; the
 * second passes unless a cluster policy governs the pod's egress
 * (EP_F_EGRESS_HOST_JUDGED): then the policy map judges it with peer
 * IDENTITY_HOST, where NetworkPolicy's tier still allows it and Admin and
 * Baseline rules on nodes and networks may not. A packet that only carries a
 * node address because netfilter masqueraded it on the way through
 * (NodePort with externalTrafficPolicy=Cluster, hairpin) came from
 * somewhere else: it is judged as that address, by ipBlock, like the same
 * packet SNATed by another node. Otherwise any client, bar or the world,
 * would pass as "the node" through a NodePort on the backend's own node.
 */
#ifndef ENFORCER_ENFORCE_H
#define ENFORCER_ENFORCE_H

#include "common.h"
#include "reasons.h"
#include "parse.h"
#include "ipcache.h"
#include "endpoints.h"
#include "policy.h"
#include "conntrack.h"
#include "fragments.h"
#include "metrics.h"
#include "events.h"
#include "clock.h"
#include "services.h"

/* Pass means "no objection": TC_ACT_UNSPEC lets a later tc filter (a CNI's
 * own program) still run; with none, the packet continues. */
#define VERDICT_PASS TC_ACT_UNSPEC
#define VERDICT_DROP TC_ACT_SHOT

/* ICMPv6 types of neighbour discovery (RFC 4861) and MLD (RFC 2710, 3810). */
#define ICMPV6_MLD_QUERY 130
#define ICMPV6_MLD_REPORT 131
#define ICMPV6_MLD_DONE 132
#define ICMPV6_ND_RS 133
#define ICMPV6_ND_RA 134
#define ICMPV6_ND_NS 135
#define ICMPV6_ND_NA 136
#define ICMPV6_ND_REDIRECT 137
#define ICMPV6_MLD2_REPORT 143

static __always_inline int ipv6_is_link_local(const __u8 *a)
{
	return a[0] == 0xfe && (a[1] & 0xc0) == 0x80; /* fe80::/10 */
}

static __always_inline int ipv6_is_multicast(const __u8 *a)
{
	return a[0] == 0xff;
}

static __always_inline int ipv6_is_link_multicast(const __u8 *a)
{
	return a[0] == 0xff && a[1] == 0x02; /* ff02::/16 */
}

static __always_inline int ipv6_is_unspecified(const __u8 *a)
{
	const __u64 *w = (const __u64 *)a;
	return (w[0] | w[1]) == 0;
}

/* Is addr the address of the pod behind interface ifindex? The
 * anti-spoofing test of endpoint_of, for any address. */
static __always_inline int is_pod_address(__u8 family, const __u8 *addr, __u32 ifindex)
{
	struct endpoint_info *ep = endpoint_lookup(family, addr);
	return ep && ep->ifindex == ifindex;
}

/* On its way to a pod, may addr be the source? Not when it is another local
 * pod's address and the packet did not come in through that pod's
 * interface (on a bridge, a pod's frame to another enters the node on the
 * sender's host-side interface: skb->ingress_ifindex). */
static __always_inline int may_come_from(struct __sk_buff *skb, const __u8 *addr)
{
	struct endpoint_info *ep = endpoint_lookup(FAMILY_V6, addr);
	return !ep || ep->ifindex == skb->ingress_ifindex;
}

/* IPv6 link control: neighbour discovery and MLD, which keep a link working
 * and never leave it, pass before policy (ALLOW_NEIGHBOR_DISCOVERY), but
 * only what really is link-scoped and claims no address but the sender's:
 * anything else that looks like it would be a way past policy (a payload
 * in an ND option, routed on by the node) or past anti-spoofing (another
 * pod's address in a solicitation or advertisement: neighbour cache
 * poisoning on a bridge).
 *
 *   Never fragmented (RFC 6980): a fragment is judged as any packet.
 *   MLD (130-132, 143): link-local source, hop limit 1 (RFC 3810), to a
 *     multicast or link-local address. Such a packet cannot leave the
 *     link: the node neither forwards a link-local source off its link nor
 *     anything with hop limit 1. Other MLD-typed packets are judged as any
 *     packet (a link-local source is then spoofed).
 *   ND (133-137) must have hop limit 255 (RFC 4861): a router decrements
 *     it, so a receiver knows ND from its link. One with any other hop
 *     limit is invalid, and is dropped (DROP_MALFORMED) rather than judged
 *     as any packet: a pod's solicitation that the node routed to another
 *     pod arrives with 254, and must not reach it under that pod's policy.
 *   From the pod (dir EGRESS), the source passes the anti-spoofing that
 *     any packet from the pod does (its own address: endpoints, this
 *     interface), with two additions for ND alone: a link-local source
 *     (the pod's own link-local address is not in the endpoints map, so
 *     any fe80::/10), and the unspecified address for NS and RS to
 *     ff02::/16 (DAD, RFC 4862; a host without an address yet). The
 *     destination must be link-scoped (ff02::/16, fe80::/10) or, for NS
 *     and NA only, another local pod's address: on a bridge, pods resolve
 *     and probe each other by their global addresses (the unicast answer
 *     to a solicitation; RFC 4861 NUD probes, which Linux sends from the
 *     link-local address when no packet of its own is waiting). Routed
 *     there instead (the pod's next hop is the node in routed mode), it
 *     reaches that pod with hop limit 254 and is dropped there (above),
 *     or, from a link-local source, not at all (the node does not forward
 *     those). Any other unicast destination is judged as any packet: ND
 *     to a remote address has no business leaving the link, and with a
 *     link-local source it is spoofed.
 *     An NA's target must also be the pod's (its own address or a
 *     link-local one): an advertisement for another pod's address is how a
 *     pod would poison its neighbours' caches (DROP_SPOOFED_SOURCE).
 *     RA and Redirect are a router's: a pod is a host, so they are judged
 *     as any packet (RFC 4861 wants a link-local source, hence spoofed).
 *   To the pod (dir INGRESS), from the node or a pod on the same bridge:
 *     to a link-scoped destination or this pod's own address; from a
 *     link-local or unspecified (only to ff02::/16) source, or from an
 *     address that, if it is a local pod's, came in through that pod's
 *     interface; an NA about a local pod's address likewise. The sender's
 *     own hook has already checked a pod's ND; this holds if it did not.
 *
 * Returns 0 when f is not link control (judge it as any packet),
 * ALLOW_NEIGHBOR_DISCOVERY, or a DROP_ reason. */
static __always_inline int ipv6_link_control(struct __sk_buff *skb, const struct flow *f, int dir)
{
	if (f->family != FAMILY_V6 || f->proto != IPPROTO_ICMPV6_ || f->frag != FRAG_NONE)
		return 0;
	__u8 type = f->icmp_type;
	const __u8 *src = f->saddr, *dst = f->daddr;

	if ((type >= ICMPV6_MLD_QUERY && type <= ICMPV6_MLD_DONE) || type == ICMPV6_MLD2_REPORT) {
		if (f->hop_limit == 1 && ipv6_is_link_local(src) &&
		    (ipv6_is_multicast(dst) || ipv6_is_link_local(dst)))
			return ALLOW_NEIGHBOR_DISCOVERY;
		return 0;
	}
	if (type < ICMPV6_ND_RS || type > ICMPV6_ND_REDIRECT)
		return 0;
	if (f->hop_limit != 255)
		return DROP_MALFORMED;

	int link_dst = ipv6_is_link_multicast(dst) || ipv6_is_link_local(dst);
	__u8 target[16];
	if (type == ICMPV6_ND_NA &&
	    bpf_skb_load_bytes(skb, f->l4_off + 8, target, sizeof(target)) < 0)
		return DROP_MALFORMED;

	if (dir == DIR_EGRESS) {
		if (type == ICMPV6_ND_RA || type == ICMPV6_ND_REDIRECT)
			return 0;
		if (ipv6_is_unspecified(src)) {
			if ((type != ICMPV6_ND_NS && type != ICMPV6_ND_RS) ||
			    !ipv6_is_link_multicast(dst))
				return 0;
		} else if (!ipv6_is_link_local(src) &&
			   !is_pod_address(FAMILY_V6, src, skb->ifindex)) {
			return 0;
		}
		if (!link_dst && ((type != ICMPV6_ND_NS && type != ICMPV6_ND_NA) ||
				  !endpoint_lookup(FAMILY_V6, dst)))
			return 0;
		if (type == ICMPV6_ND_NA && !ipv6_is_link_local(target) &&
		    !is_pod_address(FAMILY_V6, target, skb->ifindex))
			return DROP_SPOOFED_SOURCE;
		return ALLOW_NEIGHBOR_DISCOVERY;
	}

	if (!link_dst && !is_pod_address(FAMILY_V6, dst, skb->ifindex))
		return 0;
	if (ipv6_is_unspecified(src)) {
		if (!ipv6_is_link_multicast(dst))
			return 0;
	} else if (!ipv6_is_link_local(src) && !may_come_from(skb, src)) {
		return DROP_SPOOFED_SOURCE;
	}
	if (type == ICMPV6_ND_NA && !may_come_from(skb, target))
		return DROP_SPOOFED_SOURCE;
	return ALLOW_NEIGHBOR_DISCOVERY;
}

/* ARP from the pod names the pod's own IPv4 address as its sender, or
 * 0.0.0.0 (an RFC 5227 probe): a claim to another address is how a pod
 * would poison its neighbours' caches on a bridge. parse_arp left the
 * sender address in f->saddr. */
static __always_inline int arp_sender_is_pods(struct __sk_buff *skb, const struct flow *f)
{
	__u32 spa;
	__builtin_memcpy(&spa, f->saddr, 4);
	return spa == 0 || is_pod_address(FAMILY_V4, f->saddr, skb->ifindex);
}

static __always_inline int pass(struct flow *f, int dir, __u16 ep_id, int reason)
{
	metrics_count(ep_id, dir, reason, f->len);
	return VERDICT_PASS;
}

/* A drop a policy rule decided (an Admin or Baseline Deny; rule_id 0 for
 * NetworkPolicy's default deny): the event names the rule. Silent, as
 * ClusterNetworkPolicy's Deny must be: no RST, no ICMP. */
static __always_inline int drop_by_rule(struct __sk_buff *skb, struct flow *f, int dir,
					__u16 ep_id, int reason, __u32 peer_id, __u32 rule_id,
					__u64 now)
{
	metrics_count(ep_id, dir, reason, f->len);
	event_emit(skb, f, EVENT_DROP, reason, dir, ep_id, peer_id, rule_id, now);
	return VERDICT_DROP;
}

static __always_inline int drop(struct __sk_buff *skb, struct flow *f, int dir,
				__u16 ep_id, int reason, __u32 peer_id, __u64 now)
{
	return drop_by_rule(skb, f, dir, ep_id, reason, peer_id, 0, now);
}

/* The endpoint a packet belongs to, if its pod address is this
 * interface's; NULL otherwise (spoofed, or not for this pod). */
static __always_inline struct endpoint_info *
endpoint_of(struct __sk_buff *skb, const struct flow *f, int dir)
{
	const __u8 *pod_addr = dir == DIR_EGRESS ? f->saddr : f->daddr;
	struct endpoint_info *ep = endpoint_lookup(f->family, pod_addr);
	if (!ep || ep->ifindex != skb->ifindex)
		return NULL;
	return ep;
}

/* What the policies in audit mode say of a new flow the enforced ones
 * allow: a DROP_ reason and its rule, or reason 0 (nothing to report). */
struct audit_verdict {
	__u32 rule_id;
	__u8 reason;
};

/* What ep's policy in direction dir says of a new flow with peer_id:
 * ALLOW_NOT_ISOLATED, or the reason the policy map's entry holds (rule_id
 * set to its rule: ALLOW_POLICY, ALLOW_ADMIN, DROP_BASELINE, ...), or
 * DROP_POLICY when no entry matches; *audit gets the entry's audited
 * verdict (policy.h). The one decision the pod hooks, the hooks after DNAT
 * (judge_deferred) and the hairpin make. */
static __always_inline int policy_verdict(const struct endpoint_info *ep, int dir,
					  __u32 peer_id, const struct flow *f,
					  __u32 *rule_id, struct audit_verdict *audit)
{
	*rule_id = 0; /* no rule decided, unless an entry did (pass_hairpin asks twice) */
	if (!endpoint_isolated(ep, dir))
		return ALLOW_NOT_ISOLATED;
	struct policy_entry *pe = policy_lookup(ep->id, dir, peer_id, f->proto,
						f->has_ports ? f->dport : 0);
	if (!pe)
		return DROP_POLICY;
	*rule_id = pe->rule_id;
	if (pe->audit_reason) {
		audit->reason = pe->audit_reason;
		audit->rule_id = pe->audit_rule_id;
	}
	return pe->reason;
}

/* A new flow passes: its event says so or, when a policy in audit mode
 * would have dropped it, says that drop (EVENT_AUDIT, the drop's reason and
 * rule), and the packet is counted as ALLOW_AUDIT. */
static __always_inline int pass_new_flow(struct __sk_buff *skb, struct flow *f, int dir,
					 __u16 ep_id, int reason, __u32 peer_id, __u32 rule_id,
					 const struct audit_verdict *audit, __u64 now)
{
	if (audit->reason) {
		event_emit(skb, f, EVENT_AUDIT, audit->reason, dir, ep_id, peer_id,
			   audit->rule_id, now);
		return pass(f, dir, ep_id, ALLOW_AUDIT);
	}
#ifndef BENCH_SKIP_EVENT
	event_emit(skb, f, EVENT_ALLOW, reason, dir, ep_id, peer_id, rule_id, now);
#endif
	return pass(f, dir, ep_id, reason);
}

/* The own node as a pod's peer: passes with no lookup (ALLOW_HOST) unless
 * a cluster policy governs the pod's egress (see the top of this file). */
static __always_inline int host_egress_passes(const struct endpoint_info *ep)
{
	return !(ep->flags & EP_F_EGRESS_HOST_JUDGED);
}

/* The egress verdict from_pod deferred for a packet to a Service, now that
 * DNAT has chosen its destination (services.h). VERDICT_PASS or
 * VERDICT_DROP; the packet must carry a deferral mark. */
static __always_inline int judge_deferred(struct __sk_buff *skb, struct flow *f,
					  __u64 now)
{
	__u16 sender_id = svc_deferred_sender(skb);
	svc_clear_mark(skb);
	struct endpoint_info *sender = endpoint_by_id(sender_id);
	if (!sender) /* gone since from_pod: nobody's policy can allow it */
		return drop(skb, f, DIR_EGRESS, 0, DROP_UNKNOWN_ENDPOINT, IDENTITY_ANY, now);
	__u16 ep_id = sender->id;

	__u32 peer_id = ipcache_identity(f->family, f->daddr);
	__u32 rule_id = 0;
	struct audit_verdict audit = {};
	int reason = peer_id == IDENTITY_HOST && host_egress_passes(sender)
			     ? ALLOW_HOST
			     : policy_verdict(sender, DIR_EGRESS, peer_id, f, &rule_id, &audit);
	if (policy_reason_drops(reason)) {
		svc_forget_pending(f, f->saddr);
		return drop_by_rule(skb, f, DIR_EGRESS, ep_id, reason, peer_id, rule_id, now);
	}

	/* Track it as from_pod sees it (to the Service address) when the
	 * packet still says which client it is. */
	struct endpoint_info *src = endpoint_lookup(f->family, f->saddr);
	struct ct_key key = {};
	if (src && src->id == ep_id && svc_take_pending(&key, sender->ifindex, f, f->saddr))
		ct_create(&key, DIR_EGRESS, f, ep_id, rule_id, reason, CT_F_SERVICE, now);
	return pass_new_flow(skb, f, DIR_EGRESS, ep_id, reason, peer_id, rule_id, &audit, now);
}

/* A pod's packet to a Service that DNAT sent back to the pod itself
 * (hairpin; kube-proxy masquerades it, so the source is a node address).
 * NetworkPolicy leaves a pod's traffic to itself alone (ALLOW_SELF);
 * cluster policies judge it when it goes through a Service: with a cluster
 * policy selecting the pod (EP_F_SELF_JUDGED), its egress and ingress are
 * looked up with peer IDENTITY_SELF, whose entries the compiler made for
 * the pod as its own peer (NetworkPolicy's tier: ALLOW_SELF). Tracked
 * under the masqueraded source, so the pod's answers pass (and get marked,
 * so they pass again once un-NATed); and, when masquerade kept the client
 * port, under the Service address too. */
static __always_inline int pass_hairpin(struct __sk_buff *skb, struct flow *f,
					struct endpoint_info *ep, __u64 now)
{
	svc_clear_mark(skb);
	struct audit_verdict audit = {}; /* the egress's, else the ingress's */
	if (ep->flags & EP_F_SELF_JUDGED) {
		__u32 rule_id = 0;
		int reason = policy_verdict(ep, DIR_EGRESS, IDENTITY_SELF, f, &rule_id, &audit);
		int dir = DIR_EGRESS;
		if (!policy_reason_drops(reason)) {
			struct audit_verdict in_audit = {};
			reason = policy_verdict(ep, DIR_INGRESS, IDENTITY_SELF, f, &rule_id, &in_audit);
			if (!audit.reason)
				audit = in_audit;
			dir = DIR_INGRESS;
		}
		if (policy_reason_drops(reason)) {
			svc_forget_pending(f, f->daddr); /* the pod is the client */
			return drop_by_rule(skb, f, dir, ep->id, reason, ep->identity, rule_id, now);
		}
	}
	struct ct_key key = {};
	if (svc_take_pending(&key, skb->ifindex, f, f->daddr))
		ct_create(&key, DIR_EGRESS, f, ep->id, 0, ALLOW_SELF, CT_F_SERVICE, now);
	struct ct_key back = {};
	ct_key_for(&back, skb->ifindex, DIR_INGRESS, f);
	ct_create(&back, DIR_INGRESS, f, ep->id, 0, ALLOW_SELF, 0, now);
	return pass_new_flow(skb, f, DIR_INGRESS, ep->id, ALLOW_SELF, ep->identity, 0, &audit, now);
}

static __always_inline int enforce(struct __sk_buff *skb, int dir)
{
	struct flow f = {};
	__u64 now = datapath_now_ns();

	if (!parse_fast(skb, &f)) {
		int ret = parse_packet(skb, &f);
		if (ret == ALLOW_NON_IP) { /* ARP */
			if (dir == DIR_EGRESS && !arp_sender_is_pods(skb, &f)) {
				f.family = FAMILY_V4; /* the event shows the addresses */
				return drop(skb, &f, dir, 0, DROP_SPOOFED_SOURCE, IDENTITY_ANY, now);
			}
			return pass(&f, dir, 0, ALLOW_NON_IP);
		}
		if (ret)
			return drop(skb, &f, dir, 0, ret, IDENTITY_ANY, now);
		ret = ipv6_link_control(skb, &f, dir);
		if (ret == ALLOW_NEIGHBOR_DISCOVERY)
			return pass(&f, dir, 0, ALLOW_NEIGHBOR_DISCOVERY);
		if (!ret)
			ret = frag_track(&f);
		if (ret) {
			struct endpoint_info *owner = endpoint_of(skb, &f, dir);
			return drop(skb, &f, dir, owner ? owner->id : 0, ret, IDENTITY_ANY, now);
		}
	}

	/* A local pod's packet to a Service, delivered to a local backend:
	 * the sender's egress first, then this pod's ingress as for any
	 * packet. */
	if (dir == DIR_INGRESS && svc_deferred_sender(skb)) {
		struct endpoint_info *self = endpoint_of(skb, &f, dir);
		if (self && self->id == svc_deferred_sender(skb)) {
			/* Hairpin: marked by this very pod, and masqueraded to
			 * a node address as kube-proxy does ... */
			if (ipcache_identity(f.family, f.saddr) == IDENTITY_HOST)
				return pass_hairpin(skb, &f, self, now);
			/* ... or the pod's answer to it, un-NATed back to the
			 * Service address (marked by from_pod, below). */
			if (svc_is_frontend(&f, f.saddr, f.sport)) {
				svc_clear_mark(skb);
				return pass(&f, dir, self->id, ALLOW_SELF);
			}
		}
		if (judge_deferred(skb, &f, now) == VERDICT_DROP)
			return VERDICT_DROP;
	}

	struct ct_key key = {};
	ct_key_for(&key, skb->ifindex, dir, &f);
	struct ct_entry *ct = ct_lookup(&key, now);
#ifndef BENCH_IGNORE_CONNTRACK_HITS
	if (ct && !ct_is_new_connection(ct, dir, &f) && !ct_reverse_unproven(ct, dir) &&
	    !(dir == DIR_EGRESS && (ct->flags & CT_F_RECHECK))) {
		/* The pod answering its own hairpin: the answer comes back to
		 * it un-NATed from the Service address; the mark says whose it
		 * is (masquerade may have changed the port, so conntrack under
		 * the Service address cannot). */
		if (dir == DIR_EGRESS && ct->reason == ALLOW_SELF && ct->origin == DIR_INGRESS)
			svc_mark(skb, ct->endpoint_id);
		return pass(&f, dir, ct->endpoint_id, ct_update(ct, dir, &f, now));
	}
#else
	/* Benchmark build only: every packet takes the new-flow path below,
	 * after paying for the conntrack lookup it would have made. */
	(void)ct;
#endif

	struct endpoint_info *ep = endpoint_of(skb, &f, dir);
	if (!ep)
		return drop(skb, &f, dir, 0,
			    dir == DIR_EGRESS ? DROP_SPOOFED_SOURCE : DROP_UNKNOWN_ENDPOINT,
			    IDENTITY_ANY, now);
	__u16 ep_id = ep->id;

	if (f.icmp_error) {
		struct ct_key quoted = {};
		if (ct_key_for_icmp_error(&quoted, skb->ifindex, dir, &f) &&
		    ct_lookup(&quoted, now))
			return pass(&f, dir, ep_id, ALLOW_RELATED);
	}

	if (dir == DIR_EGRESS && is_service_frontend(&f)) {
		svc_defer(skb, &f, ep_id);
		return pass(&f, dir, ep_id, ALLOW_SERVICE_DEFERRED);
	}

	const __u8 *peer_addr = dir == DIR_EGRESS ? f.daddr : f.saddr;
	__u32 peer_id = ipcache_identity(f.family, peer_addr);
	if (peer_id == IDENTITY_HOST) {
		if (dir == DIR_EGRESS ? host_egress_passes(ep) : skb->ingress_ifindex == 0)
			return pass(&f, dir, ep_id, ALLOW_HOST);
		if (dir == DIR_INGRESS)
			peer_id = ipcache_cidr_identity(f.family, peer_addr);
	}

	__u32 rule_id = 0;
	struct audit_verdict audit = {};
	int reason = policy_verdict(ep, dir, peer_id, &f, &rule_id, &audit);
	if (policy_reason_drops(reason))
		return drop_by_rule(skb, &f, dir, ep_id, reason, peer_id, rule_id, now);

	/* ICMP errors are not connections: nothing to track. (The BENCH_SKIP_
	 * guards exist in benchmark builds only, to price each step.) */
#ifndef BENCH_SKIP_CT_CREATE
	if (ct && ct_reverse_unproven(ct, dir) && !ct_is_new_connection(ct, dir, &f))
		ct->flags &= ~CT_F_MIDSTREAM; /* policy allows it both ways now */
	else if (!f.icmp_error)
		ct_create(&key, dir, &f, ep_id, rule_id, reason, ct_midstream_flag(&f), now);
#endif
	return pass_new_flow(skb, &f, dir, ep_id, reason, peer_id, rule_id, &audit, now);
}

/* tc egress of a node interface that is not a pod's: only packets whose
 * egress verdict from_pod deferred are looked at (a test of the mark);
 * everything else passes untouched. */
static __always_inline int enforce_node_egress(struct __sk_buff *skb)
{
	if (!svc_deferred_sender(skb))
		return VERDICT_PASS;
	struct flow f = {};
	__u64 now = datapath_now_ns();
	if (!parse_fast(skb, &f)) {
		int ret = parse_packet(skb, &f);
		if (ret) { /* it parsed at from_pod: fail closed */
			__u16 sender_id = svc_deferred_sender(skb);
			svc_clear_mark(skb);
			return drop(skb, &f, DIR_EGRESS, sender_id, ret, IDENTITY_ANY, now);
		}
		/* A later fragment (netfilter refragmented after NAT): the
		 * first fragment carries the verdict. */
		if (f.frag == FRAG_LATER)
			return VERDICT_PASS;
	}
	return judge_deferred(skb, &f, now);
}

#endif
