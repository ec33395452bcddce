"""mmserve's server: HTTP app, per-task engines, settings, CLI, and the Ray Serve backend."""

__version__ = "0.1.0"
