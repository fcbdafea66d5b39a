"""The project's error type and the redaction of secrets in URLs.

A :class:`BenchError` is a user's mistake or an unusable environment (bad flag, bad file, missing
data, unreachable database). CLIs print its message as one line and exit with code 2; anything
else is a bug or an outage and exits 1.
"""

from __future__ import annotations

import re

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class BenchError(Exception):
    """A problem the user can fix; its message says what, where and how."""


class SpaceError(BenchError):
    """A search-space file that does not validate."""


class DataError(BenchError):
    """Dataset files that are missing, corrupt or inconsistent."""


# scheme://user:password@host -> scheme://user:***@host ; also ?password=... query parameters.
# The password runs to the last "@" before the next whitespace or quote: SQLAlchemy accepts any
# character there but "@" unencoded (":", "/", "?", "#", "%" included), and a password holding an
# "@" can only be percent-encoded, so the last "@" of the URL ends the user info.
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s'\"]*):(?P<secret>[^\s'\"]*)@")
_QUERY_SECRET = re.compile(r"(?P<key>(?:password|passwd|pwd|token|secret)=)[^&\s]+", re.IGNORECASE)


def redact(text: object, limit: int | None = None) -> str:
    """Return ``text`` with every password in a URL replaced by ``***``.

    Args:
        text: Anything; it is converted with ``str``.
        limit: Cut the result to this many characters (an ellipsis marks the cut). The cut comes
            after the masking, so it can never remove the ``@`` that marks a password's end.

    Returns:
        The string with ``user:password@`` and ``password=`` query values masked.
    """
    s = str(text)
    s = _USERINFO.sub(lambda m: f"{m.group('head')}:***@", s)
    s = _QUERY_SECRET.sub(lambda m: f"{m.group('key')}***", s)
    if limit is not None and len(s) > limit:
        s = s[: max(0, limit - 1)] + "…"
    return s
