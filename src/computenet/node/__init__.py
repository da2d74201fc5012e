"""The node: the gateway service that accepts, schedules and tracks work."""
