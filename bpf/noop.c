/* Baseline for benchmarks: the cost of running any tc program at all. */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>

int noop(struct __sk_buff *skb)
{
	return TC_ACT_UNSPEC;
}
