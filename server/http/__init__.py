"""HTTP surface: the FastAPI app, task routes, Open Inference Protocol v2 and request parsing."""
