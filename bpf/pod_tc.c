/* Programs for a pod's host-side interface, attached on the tc clsact hook.
 *
 *   from_pod: tc ingress of the host-side interface = what the pod sends,
 *             judged by the pod's egress policy.
 *   to_pod:   tc egress of the host-side interface = what is delivered to the
 *             pod, judged by the pod's ingress policy.
 *
 * Both are thin: the decision lives in lib/enforce.h.
 */
#include "lib/enforce.h"

int from_pod(struct __sk_buff *skb)
{
	return enforce(skb, DIR_EGRESS);
}

int to_pod(struct __sk_buff *skb)
{
	return enforce(skb, DIR_INGRESS);
}
