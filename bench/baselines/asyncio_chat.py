"""Baseline ``asyncio``: the chat subset written the usual asyncio way.

``/nick NAME`` answers ``OK nick NAME``; ``/msg NAME TEXT`` sends
``MSG ID FROM TO TEXT`` to NAME and ``SENT ID TO 1`` to the sender. Lines,
one coroutine per client with ``asyncio.start_server``, ``readline`` to
read, ``write`` and ``drain`` to answer: what a Python developer would write
first, and a fair yardstick for tcpchat's line mode.

    python -m bench.baselines.asyncio_chat --port 0
"""

import argparse
import asyncio
import sys

from bench.baselines import raise_open_files_limit

GREETING = b"HELLO asyncio-baseline type /nick NAME, then /msg NAME TEXT\n"


class Chat:
    def __init__(self):
        self.writers = {}  # nick -> StreamWriter
        self.next_id = 1

    async def handle(self, reader, writer):
        writer.write(GREETING)
        nick = None
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                text = line.rstrip(b"\r\n").decode("utf-8", "replace")
                if text.startswith("/nick "):
                    name = text[6:].strip()
                    if not name or name in self.writers:
                        writer.write(b"ERR nick-taken\n")
                    else:
                        if nick is not None:
                            del self.writers[nick]
                        nick = name
                        self.writers[nick] = writer
                        writer.write(b"OK nick %s\n" % nick.encode())
                elif text.startswith("/msg "):
                    writer.write(self.private(nick, text))
                elif text:
                    writer.write(b"ERR unknown-command\n")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            if nick is not None and self.writers.get(nick) is writer:
                del self.writers[nick]
            writer.close()

    def private(self, nick, text):
        """Deliver one /msg; return the reply for the sender."""
        if nick is None:
            return b"ERR not-registered\n"
        parts = text.split(" ", 2)
        if len(parts) < 3:
            return b"ERR usage /msg NAME TEXT\n"
        to, body = parts[1], parts[2]
        target = self.writers.get(to)
        if target is None:
            return b"ERR no-such-user\n"
        msg_id = self.next_id
        self.next_id += 1
        target.write(("MSG %d %s %s %s\n" % (msg_id, nick, to, body)).encode())
        return ("SENT %d %s 1\n" % (msg_id, to)).encode()


async def serve(host, port):
    chat = Chat()
    server = await asyncio.start_server(chat.handle, host, port, backlog=4096)
    host, port = server.sockets[0].getsockname()[:2]
    print("listening on %s:%d" % (host, port), file=sys.stderr, flush=True)
    async with server:
        await server.serve_forever()


def main(argv=None):
    parser = argparse.ArgumentParser(prog="asyncio_chat", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    raise_open_files_limit()
    try:
        asyncio.run(serve(args.host, args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
