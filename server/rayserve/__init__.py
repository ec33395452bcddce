"""Ray Serve backend: the same FastAPI app as ingress, the same engine inside each replica."""
