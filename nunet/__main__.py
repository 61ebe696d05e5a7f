"""``python -m nunet`` runs the ``nunet`` command (the Fiji plugin starts ``python -m nunet serve``)."""

from nunet.cli import main

main()
