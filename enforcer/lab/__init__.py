"""A network-namespace lab for the datapath: a node and pods wired as a CNI
would, servers that say who answered, probes, the loader as a process.

  topology  Lab and Pod: build and tear down the namespaces
  multinode MultiNodeLab: nodes on an underlay, an external client, kube-proxy
  kubeproxy kube-proxy's iptables rules for ClusterIP/NodePort Services
  serve     the server each pod runs
  probe     TCP/UDP probes and connectivity matrices
  netns     `ip`, sysctl and setns helpers
  loader    `enforcer datapath run` as a child process in the node
  world     map contents for lab pods (identities, endpoints, rules)
  session   a lab with the loader running and the maps open
  demo      `enforcer demo`
"""
