"""Model -> desired datapath state (ipcache, endpoints, policy entries), and
the ordered diff that moves the maps from what they hold to it."""
