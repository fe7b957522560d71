"""miniircd, a measured peer: a small IRC server in one Python file.

Not shipped here: it is fetched from the package index at bench time with
pip (``pip download miniircd==2.3 --no-deps``) into a cache directory,
``$XDG_CACHE_HOME/tcpchat-bench`` (``~/.cache/tcpchat-bench``), once per
machine, and its one file is run with the bench's own Python. When it
cannot be had (no pip, no network, ``--offline`` and nothing cached), the
bench says so once and goes on without it.

What the bench must know about it (from reading its source):

* Registration is ``NICK n`` and ``USER n 0 * :n``; the server answers
  ``001`` (welcome) and more. A private message is ``PRIVMSG NICK :TEXT``;
  the recipient gets ``:FROM!USER@HOST PRIVMSG NICK :TEXT`` and the sender
  gets nothing at all: there is no confirmation to count, so the load
  generator refills a sender's window when its partner has read them.
* It serves with ``select.select``, which takes descriptors below 1024
  only: 2 x 500 pairs and its listener fit, 1,000 pairs do not (select
  raises ValueError and the server dies), so larger runs skip it.
* It listens with a backlog of 5: the generator connects its clients a few
  at a time, or SYNs would be dropped and retried a second later.
* Its sockets block, and it reads 1 KiB per ``recv``; a client that stops
  reading stalls it. The generator reads everything.
* It has no way to pick a free port (port 0 works but is never printed), so
  the bench asks the kernel for a free one and passes it with ``--ports``.
  ``--verbose`` makes it print ``Listening on port N.``, the readiness line.
* It refuses to run as root unless given ``--setuid``.
* It has no flood control to compare with.
"""

import getpass
import os
import re
import socket
import subprocess
import sys
import zipfile

VERSION = "2.3"
#: Pairs it can take: two descriptors a pair, under select()'s 1024.
MAX_PAIRS = 500
READY = re.compile(rb"Listening on port (\d+)")


def cache_dir():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tcpchat-bench")


class Unavailable(Exception):
    """miniircd cannot be fetched or run here; the text says why."""


def find(offline=False, timeout=120.0):
    """The path of miniircd.py, fetched into the cache if need be."""
    where = os.path.join(cache_dir(), "miniircd-" + VERSION)
    script = os.path.join(where, "miniircd.py")
    if os.path.isfile(script):
        return script
    if offline:
        raise Unavailable("--offline and no copy in %s" % where)
    os.makedirs(where, exist_ok=True)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--only-binary", ":all:", "--dest", where, "miniircd==" + VERSION],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            timeout=timeout,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise Unavailable("pip download failed: %s" % e)
    if proc.returncode != 0:
        last = proc.stdout.decode("utf-8", "replace").strip().splitlines()[-1:]
        raise Unavailable("pip download failed: %s" % (last[0] if last else proc.returncode))
    wheels = [f for f in os.listdir(where) if f.endswith(".whl")]
    if not wheels:
        raise Unavailable("pip download gave no wheel in %s" % where)
    try:
        with zipfile.ZipFile(os.path.join(where, wheels[0])) as z:
            data = z.read("miniircd.py")
    except (OSError, KeyError, zipfile.BadZipFile) as e:
        raise Unavailable("no miniircd.py in %s: %s" % (wheels[0], e))
    tmp = script + ".part"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, script)
    return script


def free_port():
    """A port the kernel calls free now (it could be taken before use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(script, port):
    argv = [sys.executable, script, "--listen", "127.0.0.1", "--ports", str(port), "--verbose"]
    if os.getuid() == 0 or os.getgid() == 0:
        # It refuses root without --setuid; stay who we are.
        argv += ["--setuid", getpass.getuser()]
    return argv
