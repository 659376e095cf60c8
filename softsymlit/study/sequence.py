"""Several ``softsymlit`` invocations in one process, one after the other.

``python -m softsymlit.study.sequence test --config=a.yaml --then test --config=b.yaml`` does
what ``softsymlit test --config=a.yaml && softsymlit test --config=b.yaml`` does, with the
imports paid once. It stops at the first invocation that fails, with its exit status.
"""

from __future__ import annotations

import logging
import sys

from softsymlit.study.grid import SEQUENCE_SEPARATOR

log = logging.getLogger(__name__)


def split_invocations(args: list[str]) -> list[list[str]]:
    """The invocations of ``args``, separated by ``--then``."""
    invocations: list[list[str]] = [[]]
    for arg in args:
        if arg == SEQUENCE_SEPARATOR:
            invocations.append([])
        else:
            invocations[-1].append(arg)
    return [invocation for invocation in invocations if invocation]


def main(args: list[str] | None = None) -> int:
    """Runs every invocation through :func:`softsymlit.cli.main`; returns the exit status."""
    from softsymlit.cli import main as softsymlit_main

    invocations = split_invocations(sys.argv[1:] if args is None else list(args))
    # LightningCLI warns when it is given arguments and sys.argv holds others.
    sys.argv = sys.argv[:1]
    for index, invocation in enumerate(invocations, start=1):
        log.info("invocation %d/%d: softsymlit %s", index, len(invocations), " ".join(invocation))
        try:
            softsymlit_main(invocation)
        except SystemExit as exit:
            if exit.code not in (None, 0):
                return exit.code if isinstance(exit.code, int) else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
