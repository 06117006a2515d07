"""A network-namespace lab for the datapath: a node and pods wired as a CNI
would, servers that say who answered, probes, the daemon as a process. The
demo (`enforcer lab`, `enforcer demo`) and the tests build on it; what only
the tests use (the multi-node lab, kube-proxy emulation, map worlds) is in
tests/support/.

  topology  Lab and Pod: build and tear down the namespaces
  serve     the server each pod runs
  probe     TCP/UDP probes and connectivity matrices
  netns     `ip`, sysctl and setns helpers
  loader    `enforcer datapath run` / `enforcer run` as a child process in the node
  cluster   `enforcer lab up|probe|down`: the demo's lab and its manifests
  demo      `enforcer demo`
"""
