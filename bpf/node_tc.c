/* Program for the node's own interfaces (uplink, overlay device, bridge),
 * attached on tc egress: what leaves the node, or enters a bridge.
 *
 *   to_network: judges the egress of a local pod's packet to a Service
 *               after kube-proxy's DNAT sent it elsewhere than a local
 *               pod (lib/services.h). Any other packet costs one test.
 */
#include "lib/enforce.h"

int to_network(struct __sk_buff *skb)
{
	return enforce_node_egress(skb);
}
