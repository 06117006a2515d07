"""The node API: gRPC service, flows, explain, metrics. Reads state; never
writes maps or the store."""
