"""Baseline servers, each a small standalone program run as a subprocess.

* ``relay``: forwards length-prefixed frames between paired connections,
  with no chat logic at all: the floor of a Python selectors loop.
* ``asyncio_chat``: ``/nick``, ``/msg`` and ``SENT`` with asyncio streams.
* ``threads_chat``: the same subset with a thread per client.

Each takes ``--host`` and ``--port`` (0 picks a free port) and logs
``listening on HOST:PORT`` to stderr, as tcpchat does.
"""

import resource


def raise_open_files_limit():
    """Lift the soft open-files limit to the hard one (10,000 clients)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
