"""Plugin discovery (pluggy) and the model registry (MLflow)."""
