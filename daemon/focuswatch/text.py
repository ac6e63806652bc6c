"""Names as people read them and as SQLite stores them.

A Linux file name is bytes; Python hands a name that is not valid UTF-8 over as a
``str`` with lone surrogates (``os.fsdecode``: ``b"\\xe9"`` → ``"\\udce9"``). SQLite's
TEXT must be UTF-8, so such a string cannot be stored as text, and printing it to a
UTF-8 terminal fails. Two views of one name:

- ``to_db`` / ``from_db``: lossless. A string that is not valid UTF-8 is stored as its
  file-system bytes (a BLOB) and read back as the very same ``str``, so the path in the
  ledger still opens the file and still matches the next scan.
- ``printable``: for people (logs, status, alerts, the retake list): undecodable bytes as
  ``\\xNN`` and control characters (newline, escape, ...) as Python escapes, so a hostile
  name cannot break a status line or send escape codes to a terminal.
"""

from __future__ import annotations

__all__ = ["from_db", "printable", "to_db"]


def _is_utf8(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def to_db(value: object) -> object:
    """``value`` as SQLite can take it: a ``str`` that is not valid UTF-8 becomes bytes."""
    if isinstance(value, str) and not _is_utf8(value):
        try:
            return value.encode("utf-8", "surrogateescape")  # the name's own bytes
        except UnicodeEncodeError:  # a surrogate that no file name produces
            return value.encode("utf-8", "surrogatepass")
    return value


def from_db(value: object) -> object:
    """The inverse of ``to_db`` (the ledger stores no other bytes)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return value


def printable(s: str) -> str:
    """``s`` with undecodable bytes as ``\\xNN`` and control characters escaped."""
    if _is_utf8(s) and s.isprintable():
        return s
    raw = s.encode("utf-8", "surrogateescape") if not _is_utf8(s) else s.encode("utf-8")
    text = raw.decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
