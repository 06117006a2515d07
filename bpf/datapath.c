/* The whole datapath as one compilation unit, which is what the loader
 * compiles: the programs of every attach point share one set of maps and
 * one event ring buffer (the ring buffer is not pinned, so a second unit
 * would have its own that nobody reads).
 */
#include "pod_tc.c"
#include "node_tc.c"
