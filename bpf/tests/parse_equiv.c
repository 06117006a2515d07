/* Self-check, not attached anywhere: the fast parser must fill struct flow
 * exactly as the full parser does on every frame it accepts.
 *   0: fast path took the frame and agrees   1: they disagree
 *   2: fast path declined (the full parser alone handles it)
 *   3: fast path took a frame the full parser rejects */
#include "../lib/parse.h"

_Static_assert(sizeof(struct flow) % 8 == 0, "compared as u64 words");

int parse_equiv(struct __sk_buff *skb)
{
	struct flow fast = {}, full = {};

	if (!parse_fast(skb, &fast))
		return 2;
	if (parse_packet(skb, &full))
		return 3;
	__u64 *a = (__u64 *)&fast, *b = (__u64 *)&full;
#pragma unroll
	for (int i = 0; i < sizeof(struct flow) / 8; i++)
		if (a[i] != b[i])
			return 1;
	return 0;
}
