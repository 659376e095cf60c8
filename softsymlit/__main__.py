"""``python -m softsymlit`` runs the ``softsymlit`` command."""

from softsymlit.cli import main

main()
