"""The ``cnet`` command's entry point: Ctrl-C while the command line is still being
imported (a fraction of a second) ends it as quietly as Ctrl-C later does."""

from __future__ import annotations


def main() -> None:
    try:
        from computenet.cli.main import main as run
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    run()
