/* events: verdict events for the daemon (flow logs), through a ring buffer.
 *
 * Only decisions are reported: a new connection allowed (conntrack entry
 * created), one allowed that a policy in audit mode would drop, and a
 * packet dropped. Packets of tracked connections are not,
 * which keeps the event rate proportional to connection rate. A per-CPU
 * token bucket bounds it further so a flood of denied packets cannot turn
 * into a flood of events; what the bucket suppresses is counted.
 */
#ifndef ENFORCER_EVENTS_H
#define ENFORCER_EVENTS_H

#include "common.h"
#include "parse.h"

#ifndef EVENTS_PER_SEC
#define EVENTS_PER_SEC 1000 /* per CPU */
#endif
#ifndef EVENTS_BURST
#define EVENTS_BURST 200
#endif
#ifndef EVENTS_RING_PAGES
#define EVENTS_RING_PAGES 256 /* 1 MiB */
#endif

#define EVENT_ALLOW 1
#define EVENT_DROP 2
#define EVENT_AUDIT 3 /* passed, but an audited policy would drop it: reason and rule are that drop's */

struct verdict_event {
	__u64 timestamp_ns;
	__u32 ifindex;
	__u32 peer_identity;
	__u32 rule_id;
	__u16 endpoint_id;
	__u8 type;      /* EVENT_* */
	__u8 reason;    /* verdict_reason */
	__u8 direction; /* DIR_* */
	__u8 family;
	__u8 proto;
	__u8 tcp_flags;
	__be16 sport;
	__be16 dport;
	__u8 saddr[ADDR_LEN];
	__u8 daddr[ADDR_LEN];
};

struct event_bucket {
	__u64 credit_ns;   /* time credit; one event costs NSEC_PER_SEC/EVENTS_PER_SEC */
	__u64 last_ns;
	__u64 suppressed;  /* events not sent because the bucket was empty */
	__u64 lost;        /* events not sent because the ring buffer was full */
};

BPF_RINGBUF_OUTPUT(events, EVENTS_RING_PAGES);
BPF_TABLE_PINNED("percpu_array", __u32, struct event_bucket, event_limit,
		 EVENT_LIMIT_MAX, PIN_DIR "/" EVENT_LIMIT_PIN);

#define EVENT_COST_NS (NSEC_PER_SEC / EVENTS_PER_SEC)

static __always_inline int event_allowed(struct event_bucket *b, __u64 now)
{
	__u64 credit = b->credit_ns + (now - b->last_ns);
	if (credit > EVENTS_BURST * EVENT_COST_NS)
		credit = EVENTS_BURST * EVENT_COST_NS;
	b->last_ns = now;
	if (credit < EVENT_COST_NS) {
		b->credit_ns = credit;
		b->suppressed++;
		return 0;
	}
	b->credit_ns = credit - EVENT_COST_NS;
	return 1;
}

static __always_inline void event_emit(struct __sk_buff *skb, const struct flow *f,
				       __u8 type, __u8 reason, int dir,
				       __u16 endpoint_id, __u32 peer_identity,
				       __u32 rule_id, __u64 now)
{
	__u32 zero = 0;
	struct event_bucket *b = event_limit.lookup(&zero);
	if (!b || !event_allowed(b, now))
		return;
	struct verdict_event *ev = events.ringbuf_reserve(sizeof(*ev));
	if (!ev) {
		b->lost++;
		return;
	}
	ev->timestamp_ns = bpf_ktime_get_ns(); /* precise, paid only per event */
	ev->ifindex = skb->ifindex;
	ev->peer_identity = peer_identity;
	ev->rule_id = rule_id;
	ev->endpoint_id = endpoint_id;
	ev->type = type;
	ev->reason = reason;
	ev->direction = dir;
	ev->family = f->family;
	ev->proto = f->proto;
	ev->tcp_flags = f->tcp_flags;
	ev->sport = f->sport;
	ev->dport = f->dport;
	addr_copy(ev->saddr, f->saddr);
	addr_copy(ev->daddr, f->daddr);
	events.ringbuf_submit(ev, 0);
}

#endif
