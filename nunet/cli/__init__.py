"""The command line: ``nunet`` (one module per command group) and ``nunet-batch``.

Each command parses its options into the library's objects (:class:`nunet.options.FilterSettings`)
and calls the library; :mod:`nunet.cli.app` holds what the commands share.
"""

from nunet.cli.main import app, batch_main, main

__all__ = ["app", "batch_main", "main"]
