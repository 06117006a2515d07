/* The datapath clock: jiffies, in nanoseconds.
 *
 * Conntrack expiry and the event rate limiter need a monotonic clock with
 * second-ish resolution, on every packet. bpf_jiffies64() is inlined by the
 * verifier; bpf_ktime_get_ns() is a helper call (measured here at ~36 ns per
 * call, ~20 ns for the coarse variant). The loader passes the kernel's HZ
 * (it measures it, see loader.kernel_hz) so that times stay in ns.
 * Only events carry a precise bpf_ktime_get_ns() timestamp, taken after the
 * rate limiter lets an event through.
 */
#ifndef ENFORCER_CLOCK_H
#define ENFORCER_CLOCK_H

#include "common.h"

#ifndef KERNEL_HZ
#define KERNEL_HZ 250
#endif
#define NSEC_PER_JIFFY (NSEC_PER_SEC / KERNEL_HZ)

static __always_inline __u64 datapath_now_ns(void)
{
	return bpf_jiffies64() * NSEC_PER_JIFFY;
}

#endif
