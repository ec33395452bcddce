"""Image captioning: Show, Attend and Tell on the shared encoder + attention-RNN contract."""
