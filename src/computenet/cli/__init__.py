"""The ``cnet`` command."""
