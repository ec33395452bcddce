"""Music generation: JSB Chorales continuation and harmonisation (encoder + attention RNN decoder)."""
