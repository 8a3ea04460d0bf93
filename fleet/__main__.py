"""``python -m fleet`` runs the ``fleet`` command line."""

from fleet.cli import main

main()
