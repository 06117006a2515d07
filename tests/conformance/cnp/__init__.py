"""ClusterNetworkPolicy conformance (kubernetes-sigs/network-policy-api
v0.2.0), ported as data (cases.py, cluster.py) and replayed in the netns
lab (runner.py). See README.md."""
