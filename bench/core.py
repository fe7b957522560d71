"""python -m bench.core: the sans-I/O chat alone, without sockets or a shell.

Drives ``tcpchat.chat.Chat`` in-process the way the server does in one loop
pass: ``PAIRS`` line-mode pairs each pipeline ``BATCH`` private messages a
round, then everything queued is taken as written. It prints the CPU time
per message, which moves with the machine; for a figure that does not,
count instructions with callgrind, once with few rounds and once with more,
and divide the difference by the messages the extra rounds sent:

    for r in 1 3; do
      valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python -m bench.core --rounds $r 2>&1 | grep Collected
    done
    # instructions a message = (Ir(3) - Ir(1)) / (2 * 2 * PAIRS * BATCH)

(the setup is the same in both, so it cancels out). ``--framed`` makes every
client speak framed mode, each recipient acknowledging all it got in one
``/ack`` as tcpchat-client does. ``--log`` logs every
message through the server's MessageLog to a file, as the defaults do, to
count what logging costs. An older tcpchat is measured the same way by
putting its checkout first: ``PYTHONPATH=../old python -m bench.core``
(without ``--log``). The figures this gave are in bench/RESULTS.md.
"""

import argparse
import logging
import os
import sys
import tempfile
import time

from tcpchat import logs
from tcpchat.chat import Chat, Limits
from tcpchat.framing import encode_frame

PAIRS = 50
BATCH = 200
TEXT = "x" * 32


def drain(chat):
    """Take everything queued as written, as a fast network would; framed
    recipients then acknowledge all they got in one /ack, as the bench's
    load generator and tcpchat-client do."""
    # getattr: an older tcpchat (no budgets) can be measured the same way.
    while chat.flushable or getattr(chat, "backlog", None):
        if getattr(chat, "backlog", None):
            chat.work(chat.now)
        pending, chat.flushable = chat.flushable, []
        for s in pending:
            if s.out:
                chat.sent(s, sum(len(chunk) for chunk in s.out))
        chat.to_close = []
        for s in pending:
            if s.framed and s.unacked:
                ids = " ".join(map(str, s.unacked))
                chat.receive(s, encode_frame(("/ack " + ids).encode()))


def connect(chat, port):
    try:
        return chat.connect("127.0.0.1:%d" % port, 0.0, "127.0.0.1")
    except TypeError:  # before per-address limits: connect(peer, now)
        return chat.connect("127.0.0.1:%d" % port, 0.0)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.core", description=__doc__.split(
        "\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--framed", action="store_true",
                        help="every client speaks framed mode (and acknowledges)")
    parser.add_argument("--log", action="store_true",
                        help="log every message to a file, as the server's defaults do")
    args = parser.parse_args(argv)
    message_log = None
    if args.log:
        path = os.path.join(tempfile.mkdtemp(), "chat.log")
        message_log = logs.configure("info", path, None, stderr=open(os.devnull, "w"))
    # The default limits: a round is more than a pass's budget (the backlog
    # is worked off as the server would), and far below the flood rate.
    if message_log is not None:
        chat = Chat(Limits(), logging.getLogger("tcpchat.chat"), message_log=message_log)
    else:
        chat = Chat(Limits(), logging.getLogger("tcpchat.chat"))
    batches = {}
    for i in range(PAIRS):
        a, b = (connect(chat, 2 * i + 1024 + j) for j in (0, 1))
        if args.framed:
            chat.receive(a, b"\0" + encode_frame(b"/nick a%d" % i))
            chat.receive(b, b"\0" + encode_frame(b"/nick b%d" % i))
            batches[a] = encode_frame(("/msg b%d %s" % (i, TEXT)).encode()) * BATCH
            batches[b] = encode_frame(("/msg a%d %s" % (i, TEXT)).encode()) * BATCH
        else:
            chat.receive(a, b"/nick a%d\n" % i)
            chat.receive(b, b"/nick b%d\n" % i)
            batches[a] = ("/msg b%d %s\n" % (i, TEXT)).encode() * BATCH
            batches[b] = ("/msg a%d %s\n" % (i, TEXT)).encode() * BATCH
        drain(chat)
    started = time.process_time()
    sent = 0
    for _ in range(args.rounds):
        for s, data in batches.items():
            chat.receive(s, data)
            sent += BATCH
        drain(chat)
        logs.flush()
    cpu = time.process_time() - started
    # Every message was written (line mode) or acknowledged (framed): none
    # is still awaiting its receipt, or the figure would flatter the chat.
    waiting = sum(len(s.marks or ()) + len(getattr(s, "unacked", None) or ())
                  for s in chat.sessions)
    if waiting:
        print("%d messages still await their receipt" % waiting, file=sys.stderr)
        return 1
    print("%d messages, %.2f us of CPU a message%s%s" % (
        sent, cpu / sent * 1e6, " (framed)" if args.framed else "",
        " (logged)" if args.log else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
