"""A local syslog socket for the bench: reads datagrams, counts them.

    python -m bench.syslogd PATH

Binds an AF_UNIX datagram socket at PATH (what /dev/log is), prints
``ready``, then reads every datagram that arrives and throws it away. Each
``count`` line on stdin is answered with the number read so far; it exits
at the end of stdin and removes PATH.

It must keep up: a datagram socket's queue holds only
``net.unix.max_dgram_qlen`` datagrams (10 on many systems), and a sender
finding it full blocks. So it drains the socket in a tight loop on every
wake-up, as rsyslog and journald do.
"""

import os
import select
import socket
import sys

# A syslog line is short; a longer datagram is read in part and counted.
DATAGRAM = 8192
# Ask for a deep receive buffer; the kernel caps it at net.core.rmem_max.
RCVBUF = 4 << 20


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    path = argv[0]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    sock.bind(path)
    sock.setblocking(False)
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    stdin = sys.stdin.fileno()
    poller.register(stdin, select.POLLIN)
    recv = sock.recv
    count = 0
    pending = b""
    try:
        while True:
            for fd, _ in poller.poll():
                if fd == stdin:
                    data = os.read(stdin, 4096)
                    if not data:
                        return 0
                    pending += data
                    while b"\n" in pending:
                        _, _, pending = pending.partition(b"\n")
                        out.write("%d\n" % count)
                    out.flush()
                    continue
                while True:
                    try:
                        recv(DATAGRAM)
                    except (BlockingIOError, InterruptedError):
                        break
                    count += 1
    finally:
        sock.close()
        try:
            os.unlink(path)
        except OSError:
            pass


if __name__ == "__main__":
    sys.exit(main())
