/* Test producer for the ring buffer reader (enforcer/datapath/ringbuf.py),
 * not attached anywhere. Each test run reads a command after the 14-byte
 * Ethernet header and reserves one record of the size it names, holding
 * the command in its first 8 bytes and the sequence number's low byte in
 * its last; then submits it, or discards it. Returns 1, or 0 when the ring
 * has no room. */
#include <uapi/linux/bpf.h>

BPF_RINGBUF_OUTPUT(ring, 1);

struct cmd {
	__u32 seq;
	__u16 producer;
	__u8 size_class;
	__u8 discard;
};

/* Inlined with a constant n: the verifier wants a known size to reserve. */
static __always_inline int emit(const struct cmd *c, const __u32 n)
{
	__u8 *r = ring.ringbuf_reserve(n);

	if (!r)
		return 0;
	__builtin_memcpy(r, c, sizeof(*c));
	if (n > sizeof(*c))
		r[n - 1] = (__u8)c->seq;
	if (c->discard)
		ring.ringbuf_discard(r, 0);
	else
		ring.ringbuf_submit(r, 0);
	return 1;
}

int produce(struct __sk_buff *skb)
{
	struct cmd c = {};

	if (bpf_skb_load_bytes(skb, 14, &c, sizeof(c)) < 0)
		return -1;
	switch (c.size_class) {
	case 0: return emit(&c, 8);
	case 1: return emit(&c, 13);
	case 2: return emit(&c, 36);
	case 3: return emit(&c, 100);
	case 4: return emit(&c, 1000);
	case 5: return emit(&c, 2000);
	}
	return -2;
}
