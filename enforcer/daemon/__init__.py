"""The node daemon: sources -> store -> reconcile (compile, sync maps,
attach programs) with the datapath loaded once."""
