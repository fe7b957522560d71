"""The state file: what a planned restart keeps (--state-file).

One function writes it and one reads it; nothing else knows the format.

The content is what ``Chat.snapshot()`` makes and ``Chat.restore()``
takes: plain data (users with their pairs, the SHA-256 of their resume
tokens, the messages held for them, outcomes not yet told, the next message
id). On disk it is one JSON object with a format name and a version:

    {"format": "tcpchat-state", "version": 1, "saved_at": UNIX_TIME,
     "next_id": N, "users": [...], "messages": [...]}

Rules that keep it honest:

1. A write is atomic: a temporary file in the same directory, written,
   flushed to disk, renamed over the old one, and the directory flushed
   too. A crash mid-write leaves the old file or the new one, never half.
2. The file is created mode 0600: it holds private messages.
3. A file that cannot be read, is not ours, has another version, or does
   not hold together is refused with StateError and the reason; the caller
   sets it aside and starts empty. It never crashes the server.
"""

import json
import os
import time

__all__ = ["FORMAT", "VERSION", "StateError", "save", "load", "set_aside"]

FORMAT = "tcpchat-state"
VERSION = 1


class StateError(Exception):
    """The state file cannot be used; the message says why."""


def save(path, data):
    """Write ``data`` (a Chat snapshot) to ``path`` atomically, mode 0600.
    Returns the number of bytes written."""
    document = {"format": FORMAT, "version": VERSION, "saved_at": int(time.time())}
    document.update(data)
    payload = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    directory = os.path.dirname(os.path.abspath(path))
    tmp = "%s.tmp.%d" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return len(payload)


def load(path):
    """The snapshot in ``path``, None if there is no such file.

    Raises StateError when the file exists but cannot be used.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StateError("cannot read it: %s" % (e.strerror or e))
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise StateError("not a state file: %s" % e)
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise StateError("not a tcpchat state file")
    if document.get("version") != VERSION:
        raise StateError("version %r, this server reads version %d"
                         % (document.get("version"), VERSION))
    _check(document)
    return {key: document[key] for key in ("next_id", "users", "messages")}


def set_aside(path):
    """Move an unusable state file out of the way; returns its new name."""
    new = "%s.bad-%s" % (path, time.strftime("%Y%m%dT%H%M%S"))
    os.replace(path, new)
    return new


def _check(document):
    """Raise StateError unless every field has its type and every
    reference (partner, request, held message) points at something."""
    def need(ok, what):
        if not ok:
            raise StateError("damaged: %s" % what)

    need(_is_int(document.get("next_id")) and document["next_id"] >= 1, "next_id")
    users = document.get("users")
    messages = document.get("messages")
    need(isinstance(users, list) and isinstance(messages, list), "users or messages")
    ids = set()
    for m in messages:
        need(isinstance(m, dict), "a message")
        need(_is_int(m.get("id")) and 0 < m["id"] < document["next_id"], "a message id")
        need(all(isinstance(m.get(k), str) and m[k] for k in ("from", "to")), "a message's nicks")
        need(isinstance(m.get("text"), str), "a message's text")
        need(_is_int(m.get("delivered")) and m["delivered"] >= 0, "a delivered count")
        need(m["id"] not in ids, "a message id twice")
        ids.add(m["id"])
    nicks = set()
    for u in users:
        need(isinstance(u, dict) and isinstance(u.get("nick"), str) and u["nick"], "a user")
        need(u["nick"].lower() not in nicks, "a nick twice")
        nicks.add(u["nick"].lower())
        token = u.get("token")
        need(token is None or (isinstance(token, str) and len(token) == 64
                               and all(c in "0123456789abcdef" for c in token)), "a token")
        need(isinstance(u.get("held"), list) and all(i in ids for i in u["held"]),
             "held messages")
        need(isinstance(u.get("told"), list) and all(isinstance(t, str) for t in u["told"]),
             "outcomes to tell")
    for u in users:
        for key in ("partner", "asked"):
            other = u.get(key)
            need(other is None or (isinstance(other, str) and other.lower() in nicks),
                 "a %s" % key)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)
