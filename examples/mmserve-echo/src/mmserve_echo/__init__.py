"""The 'echo' task: a third-party plugin example."""
