"""The provider-side daemon: probe, register, heartbeat, take assignments, run them."""
