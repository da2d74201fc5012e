"""REST routers under /v1, one per resource."""
