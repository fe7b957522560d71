"""Baseline ``threads``: the chat subset with a thread per client.

The architecture of the original threaded chat: an accept loop, one thread
per connection reading lines with a file object, a lock around the table
of nicks, and ``sendall`` (under the recipient's own lock, since two
senders may write to one socket at once). Same protocol subset as the
asyncio baseline: ``/nick``, ``/msg``, ``SENT``.

    python -m bench.baselines.threads_chat --port 0
"""

import argparse
import itertools
import socket
import sys
import threading

from bench.baselines import raise_open_files_limit

GREETING = b"HELLO threads-baseline type /nick NAME, then /msg NAME TEXT\n"


class Client:
    def __init__(self, sock):
        self.sock = sock
        self.nick = None
        self.send_lock = threading.Lock()

    def send(self, data):
        with self.send_lock:
            self.sock.sendall(data)


class Chat:
    def __init__(self):
        self.clients = {}  # nick -> Client
        self.lock = threading.Lock()
        self.ids = itertools.count(1)

    def serve(self, client):
        try:
            client.send(GREETING)
            with client.sock.makefile("rb") as lines:
                for line in lines:
                    text = line.rstrip(b"\r\n").decode("utf-8", "replace")
                    if text.startswith("/nick "):
                        client.send(self.register(client, text[6:].strip()))
                    elif text.startswith("/msg "):
                        client.send(self.private(client, text))
                    elif text:
                        client.send(b"ERR unknown-command\n")
        except OSError:
            pass
        finally:
            with self.lock:
                if client.nick is not None and self.clients.get(client.nick) is client:
                    del self.clients[client.nick]
            client.sock.close()

    def register(self, client, name):
        with self.lock:
            if not name or name in self.clients:
                return b"ERR nick-taken\n"
            if client.nick is not None:
                del self.clients[client.nick]
            client.nick = name
            self.clients[name] = client
        return b"OK nick %s\n" % name.encode()

    def private(self, client, text):
        if client.nick is None:
            return b"ERR not-registered\n"
        parts = text.split(" ", 2)
        if len(parts) < 3:
            return b"ERR usage /msg NAME TEXT\n"
        to, body = parts[1], parts[2]
        with self.lock:
            target = self.clients.get(to)
        if target is None:
            return b"ERR no-such-user\n"
        msg_id = next(self.ids)
        try:
            target.send(("MSG %d %s %s %s\n" % (msg_id, client.nick, to, body)).encode())
        except OSError:
            return ("FAILED %d %s connection lost\n" % (msg_id, to)).encode()
        return ("SENT %d %s 1\n" % (msg_id, to)).encode()


def main(argv=None):
    parser = argparse.ArgumentParser(prog="threads_chat", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    raise_open_files_limit()
    chat = Chat()
    listener = socket.create_server((args.host, args.port), backlog=4096)
    host, port = listener.getsockname()[:2]
    print("listening on %s:%d" % (host, port), file=sys.stderr, flush=True)
    try:
        while True:
            sock, _ = listener.accept()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=chat.serve, args=(Client(sock),), daemon=True).start()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
