"""Flow history: the connections this node's pods made and received, kept on
the node (SQLite under the daemon's state directory, capped in rows), and
least-privilege NetworkPolicies suggested from them.

  rows      the record of one aggregated flow (who, which peer, port,
            verdict; how often, first and last seen) and merging histories
  observe   a verdict event -> the row it counts towards, names resolved
  store     the SQLite file: upserts in batches, eviction, paged reads,
            what to do with a corrupt file
  recorder  the daemon's side: a bounded queue the event thread offers to
            (never blocking), a writer thread that aggregates and writes
  suggest   rows -> NetworkPolicy manifests
  duration  --since's 90s, 30m, 1h, 2d, 1w

Below the API (which serves the rows) and above the compiler (whose
identities say what a peer address is); it never uses the generated gRPC
code.
"""
