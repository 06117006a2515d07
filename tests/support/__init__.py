"""Test support that the product does not need (moved out of enforcer/lab so
it ships in neither the wheel nor the DaemonSet image). The demo lab itself
(topology, netns, probe, serve, loader, cluster, demo) stays in enforcer/lab.

  multinode       MultiNodeLab: nodes on an underlay, an external client, kube-proxy
  kubeproxy       kube-proxy's iptables rules for ClusterIP/NodePort Services
  world           map contents for lab pods (identities, endpoints, rules)
  session         a lab with `enforcer datapath run` running and the maps open
  packet_verdict  attached programs' verdicts on crafted frames (BPF_PROG_TEST_RUN),
                  run as a script inside the node namespace
"""
