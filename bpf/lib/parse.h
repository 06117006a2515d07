/* Packet parsing: Ethernet (+802.1Q/802.1ad), IPv4, IPv6 with extension
 * headers, TCP/UDP/SCTP ports, ICMP/ICMPv6, into one struct flow.
 *
 * All reads go through bpf_skb_load_bytes so non-linear skbs (GRO on veth)
 * parse the same as linear ones and the verifier needs no packet-range
 * proofs for variable offsets (IPv4 options, IPv6 extension chains).
 *
 * What is not IP. A pod's interface carries IP and ARP; every other kind
 * of frame is one a pod has no business sending or receiving there, and
 * some are IP in disguise: something on the way (the node's stack, the
 * bridge of a flannel-style node, a switch further on) may take the
 * wrapper off and route or deliver the IP packet inside, which nobody
 * judged. So the decision per ethertype is:
 *
 *   IPv4, IPv6        judged (the rest of the datapath).
 *   802.1Q 0x8100,    VLAN tags: walked, at most VLAN_MAX_TAGS of them in
 *   802.1ad 0x88a8,   the frame, and what they carry is judged as if
 *   0x9100            untagged. The kernel takes one outer 802.1Q/802.1ad
 *                     tag off before tc (skb->vlan_tci), so that is one
 *                     more than the frame shows. A frame still tagged after
 *                     the budget is dropped (DROP_MALFORMED): its IP header
 *                     is out of our sight but not out of the node's, which
 *                     strips VLAN 0 (priority) tags and routes what is
 *                     inside, or of a bridge, which delivers it to a pod
 *                     that does the same. 0x9100 (pre-standard QinQ) is
 *                     not a tag to Linux, but it is to some switches.
 *   ARP 0x0806        passes (ALLOW_NON_IP): IPv4 needs it (proxy ARP from
 *                     the node, pod to pod on a bridge) and it carries no
 *                     IP packet. What a pod sends must name the pod's own
 *                     IPv4 address as sender (or 0.0.0.0, an RFC 5227
 *                     probe): enforce.h, the ARP twin of the IPv6 ND checks.
 *   anything else     dropped (DROP_NON_IP), both ways:
 *                     MPLS 0x8847/0x8848: an MPLS-enabled router pops the
 *                     labels and routes the IP packet inside;
 *                     PPPoE session 0x8864: a PPPoE server (on the node,
 *                     or a pod on the same bridge) ends the session and
 *                     routes the IP inside; PPPoE discovery 0x8863 only
 *                     sets such sessions up;
 *                     802.3 length frames (LLC, SNAP, which can also wrap
 *                     IP, STP BPDUs that could reconfigure a bridge), LLDP,
 *                     802.1X, MACsec, and ethertypes of no standard at all:
 *                     none is needed for a pod's networking, and on a
 *                     bridge each would be a channel between pods that no
 *                     policy could close.
 * So ARP, bare or behind tags, is the only non-IP frame that ever passes.
 */
#ifndef ENFORCER_PARSE_H
#define ENFORCER_PARSE_H

#include "common.h"
#include "reasons.h"

#define ETH_P_8021Q_ 0x8100
#define ETH_P_8021AD_ 0x88A8
#define ETH_P_QINQ_9100_ 0x9100
#define ETH_P_ARP_ 0x0806
/* VLAN tags walked in the frame (the kernel may hold one more outside it). */
#define VLAN_MAX_TAGS 2
#define IPV6_MAX_EXT_HEADERS 8

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

/* Fragment position of the packet. */
#define FRAG_NONE 0
#define FRAG_FIRST 1 /* offset 0, more fragments: carries the L4 header */
#define FRAG_LATER 2 /* offset > 0: no L4 header, ports come from fragments.h */

struct flow {
	__u8 saddr[ADDR_LEN]; /* IPv4 in the first 4 bytes, rest zero */
	__u8 daddr[ADDR_LEN];
	__be16 sport;         /* TCP/UDP/SCTP ports; ICMP echo: the id both ways */
	__be16 dport;
	__u8 family;          /* FAMILY_V4 / FAMILY_V6, 0 when not IP */
	__u8 proto;           /* L4 protocol after extension headers */
	__u8 tcp_flags;
	__u8 frag;            /* FRAG_* */
	__u8 icmp_type;
	__u8 icmp_code;
	__u8 icmp_error;      /* ICMP error: inner_* hold the quoted packet */
	__u8 has_ports;       /* proto carries ports (TCP/UDP/SCTP) */
	__u32 frag_id;        /* IPv4 id or IPv6 fragment identification */
	__u32 l4_off;
	__u32 len;
	/* ICMP errors: the tuple of the packet the error is about, as sent. */
	__u8 inner_saddr[ADDR_LEN];
	__u8 inner_daddr[ADDR_LEN];
	__be16 inner_sport;
	__be16 inner_dport;
	__u8 inner_proto;
	__u8 inner_ok;
	__u8 hop_limit;       /* IPv4 TTL or IPv6 hop limit */
	__u8 pad;
};

struct ipv4_hdr_ {
	__u8 ihl_version;
	__u8 tos;
	__be16 tot_len;
	__be16 id;
	__be16 frag_off;
	__u8 ttl;
	__u8 protocol;
	__u16 check;
	__u8 saddr[4];
	__u8 daddr[4];
};

struct ipv6_hdr_ {
	__be32 vtc_flow;
	__be16 payload_len;
	__u8 nexthdr;
	__u8 hop_limit;
	__u8 saddr[16];
	__u8 daddr[16];
};

static __always_inline int is_vlan_tag(__be16 ethertype)
{
	return ethertype == bpf_htons(ETH_P_8021Q_) ||
	       ethertype == bpf_htons(ETH_P_8021AD_) ||
	       ethertype == bpf_htons(ETH_P_QINQ_9100_);
}

static __always_inline int is_ext_header(__u8 nh)
{
	return nh == IPPROTO_HOPOPTS || nh == IPPROTO_ROUTING ||
	       nh == IPPROTO_FRAGMENT || nh == IPPROTO_DSTOPTS ||
	       nh == IPPROTO_AH || nh == 135 /* mobility */;
}

static __always_inline int proto_has_ports(__u8 proto)
{
	return proto == IPPROTO_TCP || proto == IPPROTO_UDP ||
	       proto == IPPROTO_SCTP;
}

static __always_inline int icmp_is_error(__u8 family, __u8 type)
{
	if (family == FAMILY_V4)
		return type == 3 || type == 4 || type == 5 || type == 11 || type == 12;
	return type >= 1 && type <= 4;
}

static __always_inline int icmp_is_echo(__u8 family, __u8 type)
{
	if (family == FAMILY_V4)
		return type == 8 || type == 0;
	return type == 128 || type == 129;
}

/* Walk IPv6 extension headers starting at *off with next header *nh.
 * Leaves *off at the upper-layer header and *nh its protocol. Reports a
 * fragment header through frag/frag_id. Returns 0 or a DROP_ reason. */
static __always_inline int ipv6_skip_ext(struct __sk_buff *skb, __u32 *off,
					 __u8 *nh, __u8 *frag, __u32 *frag_id)
{
#pragma unroll
	for (int i = 0; i < IPV6_MAX_EXT_HEADERS; i++) {
		if (!is_ext_header(*nh))
			return 0;
		__u8 hdr[8];
		if (bpf_skb_load_bytes(skb, *off, hdr, sizeof(hdr)) < 0)
			return DROP_MALFORMED;
		if (*nh == IPPROTO_FRAGMENT) {
			__u16 off_flags = ((__u16)hdr[2] << 8) | hdr[3];
			*frag_id = ((__u32)hdr[4] << 24) | ((__u32)hdr[5] << 16) |
				   ((__u32)hdr[6] << 8) | hdr[7];
			if (off_flags & 0xfff8)
				*frag = FRAG_LATER;
			else if (off_flags & 1)
				*frag = FRAG_FIRST;
			*nh = hdr[0];
			*off += 8;
			if (*frag == FRAG_LATER)
				return 0; /* nothing after this is parseable */
		} else if (*nh == IPPROTO_AH) {
			*nh = hdr[0];
			*off += ((__u32)hdr[1] + 2) * 4;
		} else {
			*nh = hdr[0];
			*off += ((__u32)hdr[1] + 1) * 8;
		}
	}
	return is_ext_header(*nh) ? DROP_EXT_HEADERS : 0;
}

/* The packet quoted by an ICMP error: its addresses, protocol and the first
 * 8 bytes of its L4 header (all RFC 792 guarantees). */
static __always_inline void parse_icmp_inner(struct __sk_buff *skb,
					     struct flow *f, __u32 off)
{
	__u8 nh;
	if (f->family == FAMILY_V4) {
		struct ipv4_hdr_ ip;
		if (bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)) < 0)
			return;
		if ((ip.ihl_version & 0xf) < 5)
			return;
		__builtin_memcpy(f->inner_saddr, ip.saddr, 4);
		__builtin_memcpy(f->inner_daddr, ip.daddr, 4);
		nh = ip.protocol;
		off += (ip.ihl_version & 0xf) * 4;
	} else {
		struct ipv6_hdr_ ip6;
		__u8 frag = FRAG_NONE;
		__u32 id = 0;
		if (bpf_skb_load_bytes(skb, off, &ip6, sizeof(ip6)) < 0)
			return;
		addr_copy(f->inner_saddr, ip6.saddr);
		addr_copy(f->inner_daddr, ip6.daddr);
		nh = ip6.nexthdr;
		off += sizeof(ip6);
		if (ipv6_skip_ext(skb, &off, &nh, &frag, &id) || frag == FRAG_LATER)
			return;
	}
	f->inner_proto = nh;
	if (proto_has_ports(nh)) {
		__be16 ports[2];
		if (bpf_skb_load_bytes(skb, off, ports, sizeof(ports)) < 0)
			return;
		f->inner_sport = ports[0];
		f->inner_dport = ports[1];
	} else if (nh == IPPROTO_ICMP || nh == IPPROTO_ICMPV6_) {
		__u8 h[8];
		if (bpf_skb_load_bytes(skb, off, h, sizeof(h)) < 0)
			return;
		if (!icmp_is_echo(f->family, h[0]))
			return;
		__builtin_memcpy(&f->inner_sport, &h[4], 2);
		f->inner_dport = f->inner_sport;
	}
	f->inner_ok = 1;
}

/* Parse the L4 header at f->l4_off. Returns 0 or a DROP_ reason. */
static __always_inline int parse_l4(struct __sk_buff *skb, struct flow *f)
{
	if (f->frag == FRAG_LATER)
		return 0;
	if (proto_has_ports(f->proto)) {
		/* TCP: ports and the flags byte; UDP/SCTP: ports only. */
		__u8 h[14];
		if (f->proto == IPPROTO_TCP) {
			if (bpf_skb_load_bytes(skb, f->l4_off, h, 14) < 0)
				return DROP_MALFORMED;
			f->tcp_flags = h[13];
		} else if (bpf_skb_load_bytes(skb, f->l4_off, h, 4) < 0) {
			return DROP_MALFORMED;
		}
		__builtin_memcpy(&f->sport, &h[0], 2);
		__builtin_memcpy(&f->dport, &h[2], 2);
		f->has_ports = 1;
		return 0;
	}
	if (f->proto == IPPROTO_ICMP || f->proto == IPPROTO_ICMPV6_) {
		if ((f->proto == IPPROTO_ICMP) != (f->family == FAMILY_V4))
			return 0; /* ICMP in IPv6 or ICMPv6 in IPv4: opaque */
		__u8 h[8];
		if (bpf_skb_load_bytes(skb, f->l4_off, h, 4) < 0)
			return DROP_MALFORMED;
		f->icmp_type = h[0];
		f->icmp_code = h[1];
		if (icmp_is_echo(f->family, h[0])) {
			if (bpf_skb_load_bytes(skb, f->l4_off, h, 8) < 0)
				return DROP_MALFORMED;
			__builtin_memcpy(&f->sport, &h[4], 2);
			f->dport = f->sport;
		} else if (icmp_is_error(f->family, h[0])) {
			f->icmp_error = 1;
			parse_icmp_inner(skb, f, f->l4_off + 8);
		}
	}
	return 0;
}

/* The common case with direct packet access: untagged Ethernet, IPv4
 * without options and not a fragment, or IPv6 whose next header is the L4
 * one; TCP, UDP or SCTP; all in the linear part of the skb. Fills *f exactly
 * as parse_packet would (bpf/tests/parse_equiv.c proves it per frame) and
 * returns 1; returns 0 for anything else, which parse_packet then handles.
 * Worth ~50 ns a packet over bpf_skb_load_bytes calls. */
static __always_inline int parse_fast(struct __sk_buff *skb, struct flow *f)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	__u8 *l4;
	__u8 proto;

	if (data + ETH_HLEN > end)
		return 0;
	__be16 eth_proto = *(__be16 *)(data + 12);
	if (eth_proto == bpf_htons(ETH_P_IP)) {
		struct ipv4_hdr_ *ip = data + ETH_HLEN;
		if ((void *)(ip + 1) > end)
			return 0;
		if (ip->ihl_version != 0x45 || (ip->frag_off & bpf_htons(0x3fff)))
			return 0;
		proto = ip->protocol;
		l4 = (__u8 *)(ip + 1);
		f->family = FAMILY_V4;
		__builtin_memcpy(f->saddr, ip->saddr, 4);
		__builtin_memcpy(f->daddr, ip->daddr, 4);
		f->hop_limit = ip->ttl;
		f->frag_id = bpf_ntohs(ip->id);
	} else if (eth_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6_hdr_ *ip6 = data + ETH_HLEN;
		if ((void *)(ip6 + 1) > end)
			return 0;
		if ((ip6->vtc_flow & bpf_htonl(0xf0000000)) != bpf_htonl(0x60000000))
			return 0;
		proto = ip6->nexthdr;
		l4 = (__u8 *)(ip6 + 1);
		f->family = FAMILY_V6;
		addr_copy(f->saddr, ip6->saddr);
		addr_copy(f->daddr, ip6->daddr);
		f->hop_limit = ip6->hop_limit;
	} else {
		return 0;
	}
	if (!proto_has_ports(proto))
		goto slow;
	if (proto == IPPROTO_TCP) {
		if (l4 + 14 > (__u8 *)end)
			goto slow;
		f->tcp_flags = l4[13];
	} else if (l4 + 4 > (__u8 *)end) {
		goto slow;
	}
	f->proto = proto;
	f->l4_off = (__u32)(l4 - (__u8 *)data);
	__builtin_memcpy(&f->sport, l4, 2);
	__builtin_memcpy(&f->dport, l4 + 2, 2);
	f->has_ports = 1;
	f->len = skb->len;
	return 1;
slow:
	/* Leave *f as parse_packet expects to find it: zeroed. */
	__builtin_memset(f, 0, sizeof(*f));
	return 0;
}

/* An ARP frame at off: its sender and target protocol addresses into
 * f->saddr and f->daddr (family stays 0: not IP). Returns ALLOW_NON_IP,
 * or DROP_MALFORMED when it is not Ethernet/IPv4 ARP. */
static __always_inline int parse_arp(struct __sk_buff *skb, struct flow *f, __u32 off)
{
	/* htype(2) ptype(2) hlen(1) plen(1) op(2) sha(6) spa(4) tha(6) tpa(4) */
	__u8 arp[28];
	if (bpf_skb_load_bytes(skb, off, arp, sizeof(arp)) < 0)
		return DROP_MALFORMED;
	if (arp[2] != 0x08 || arp[3] != 0x00 || arp[4] != 6 || arp[5] != 4)
		return DROP_MALFORMED;
	__builtin_memcpy(f->saddr, &arp[14], 4);
	__builtin_memcpy(f->daddr, &arp[24], 4);
	return ALLOW_NON_IP;
}

/* Fill *f from the frame. Returns 0 for an IP packet, ALLOW_NON_IP for
 * ARP, or a DROP_ reason (DROP_NON_IP for any other frame: see the top of
 * this file). */
static __always_inline int parse_packet(struct __sk_buff *skb, struct flow *f)
{
	__u32 off = ETH_HLEN;
	__be16 proto;

	f->len = skb->len;
	if (bpf_skb_load_bytes(skb, 12, &proto, sizeof(proto)) < 0)
		return DROP_MALFORMED;
#pragma unroll
	for (int i = 0; i < VLAN_MAX_TAGS; i++) {
		if (!is_vlan_tag(proto))
			break;
		if (bpf_skb_load_bytes(skb, off + 2, &proto, sizeof(proto)) < 0)
			return DROP_MALFORMED;
		off += 4;
	}

	if (proto == bpf_htons(ETH_P_IP)) {
		struct ipv4_hdr_ ip;
		if (bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)) < 0)
			return DROP_MALFORMED;
		__u32 ihl = ip.ihl_version & 0xf;
		if ((ip.ihl_version >> 4) != 4 || ihl < 5)
			return DROP_MALFORMED;
		f->family = FAMILY_V4;
		__builtin_memcpy(f->saddr, ip.saddr, 4);
		__builtin_memcpy(f->daddr, ip.daddr, 4);
		f->proto = ip.protocol;
		f->hop_limit = ip.ttl;
		__u16 frag_off = bpf_ntohs(ip.frag_off);
		if (frag_off & 0x1fff)
			f->frag = FRAG_LATER;
		else if (frag_off & 0x2000)
			f->frag = FRAG_FIRST;
		f->frag_id = bpf_ntohs(ip.id);
		f->l4_off = off + ihl * 4;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6_hdr_ ip6;
		if (bpf_skb_load_bytes(skb, off, &ip6, sizeof(ip6)) < 0)
			return DROP_MALFORMED;
		if ((ip6.vtc_flow & bpf_htonl(0xf0000000)) != bpf_htonl(0x60000000))
			return DROP_MALFORMED;
		f->family = FAMILY_V6;
		addr_copy(f->saddr, ip6.saddr);
		addr_copy(f->daddr, ip6.daddr);
		f->hop_limit = ip6.hop_limit;
		__u8 nh = ip6.nexthdr;
		__u32 l4 = off + sizeof(ip6);
		__u8 frag = FRAG_NONE;
		__u32 id = 0;
		int ret = ipv6_skip_ext(skb, &l4, &nh, &frag, &id);
		if (ret)
			return ret;
		f->proto = nh;
		f->frag = frag;
		f->frag_id = id;
		f->l4_off = l4;
	} else if (proto == bpf_htons(ETH_P_ARP_)) {
		return parse_arp(skb, f, off);
	} else if (is_vlan_tag(proto)) {
		return DROP_MALFORMED; /* more tags than VLAN_MAX_TAGS */
	} else {
		return DROP_NON_IP;
	}
	return parse_l4(skb, f);
}

#endif
