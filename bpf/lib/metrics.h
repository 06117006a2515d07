/* metrics: per-CPU packet and byte counters by endpoint, direction and
 * verdict reason.
 *
 * A per-CPU array indexed (endpoint_id, direction, reason) rather than a hash:
 * the verifier inlines array lookups to pointer arithmetic, so counting
 * costs no map call on the hot path. Endpoint ids are bounded by
 * ENDPOINT_IDS_MAX for that reason; id 0 collects traffic that belongs to no
 * endpoint (spoofed, unknown destination, non-IP without an endpoint).
 */
#ifndef ENFORCER_METRICS_H
#define ENFORCER_METRICS_H

#include "common.h"
#include "reasons.h"
#include "endpoints.h"

struct counter {
	__u64 packets;
	__u64 bytes;
};

_Static_assert(METRICS_MAX == ENDPOINT_IDS_MAX * 2 * REASON_SLOTS,
	       "METRICS_MAX: a slot per (endpoint id, direction, reason)");

BPF_TABLE_PINNED("percpu_array", __u32, struct counter, metrics,
		 METRICS_MAX, PIN_DIR "/" METRICS_PIN);

static __always_inline void metrics_count(__u16 endpoint_id, int dir, int reason,
					  __u32 len)
{
	__u32 idx = ((__u32)endpoint_id * 2 + (dir & 1)) * REASON_SLOTS +
		    (reason & (REASON_SLOTS - 1));
	struct counter *c = metrics.lookup(&idx);
	if (c) {
		c->packets++;
		c->bytes += len;
	}
}

#endif
