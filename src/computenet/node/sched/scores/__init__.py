"""Score plugins, one per module. ``profile.py`` weighs them per optimisation goal."""
