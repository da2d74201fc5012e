"""Scheduling: filter → score → reserve → bind, with policies as plugins."""
