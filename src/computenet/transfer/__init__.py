"""The transmission protocol: tickets, confinement, framing, manifests, the data server
and its client. ``docs/transfer.md`` describes it from the user's side and on the wire."""
