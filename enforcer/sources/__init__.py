"""Where Kubernetes objects come from: a directory of manifests, or the API."""
