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


# Names of studies, experiments, models and baselines become folder names, job keys and MLflow
# filter values: letters, digits and "._-+" only (no "/" or quote), never starting with a dot.
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-+")


def name_problem(name: str, max_len: int = 200) -> str | None:
    """Why ``name`` cannot name a study, model or baseline, or None when it can.

    Args:
        name: The name to check.
        max_len: The longest name allowed (a baseline's name is part of job keys, which the job
            store keeps in a 255-character column).

    Returns:
        ``"use 1-200 letters, digits and . _ - + (not starting with a dot); found '/'"`` or None.
    """
    bad = sorted({c for c in name if c not in NAME_CHARS})
    if name and not name.startswith(".") and not bad and len(name) <= max_len:
        return None
    found = f"; found {''.join(bad)[:20]!r}" if bad else ""
    return f"use 1-{max_len} letters, digits and . _ - + (not starting with a dot){found}"


def folder_name(name: str) -> str:
    """``name`` made safe as one folder name: other characters become ``_``, a leading dot too
    (a study called ``..`` written by another Optuna client must not name the parent folder)."""
    safe = "".join(c if c in NAME_CHARS else "_" for c in name)[:200]
    return ("_" + safe[1:] if safe.startswith(".") else safe) or "_"


# A URL in free text runs from its scheme to the next whitespace; a libpq "key=value" secret is
# a quoted value (quotes escaped with a backslash inside) or runs to the next whitespace.
_SECRET_KEYS = r"(?:password|passwd|pwd|token|secret|api[_-]?key)"
_SCAN = re.compile(
    r"(?P<url>[A-Za-z][A-Za-z0-9+.\-]*://\S+)"
    rf"|(?P<key>{_SECRET_KEYS}\s*=\s*)"
    r"""(?:'(?:[^'\\]|\\.)*'?|"(?:[^"\\]|\\.)*"?|\S+)""",
    re.IGNORECASE,
)
_WHOLE_URL = re.compile(r"\s*[A-Za-z][A-Za-z0-9+.\-]*://[^\n]*")
# The safety net behind the parsers: a password runs to the last "@" of its URL (SQLAlchemy and
# urllib stop at the first one, and a password holding "/", "?" or "#" unencoded misleads both).
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*):(?P<secret>\S*)@")
_WEB_USER = re.compile(
    r"(?P<head>^(?:[A-Za-z0-9.\-]+\+)?(?:https?|wss?|ftp)://)[^:/?#@\s]+@", re.IGNORECASE
)
_QUERY_SECRET = re.compile(rf"(?P<key>[?&;]{_SECRET_KEYS}=)[^&#\s]*", re.IGNORECASE)
_WEB_SCHEMES = ("http", "https", "ws", "wss", "ftp")


def _scheme(url: str) -> str:
    """The URL's scheme, lower-case; of a compound one (``git+https``) its transport part."""
    return url.split("://", 1)[0].strip().lower().rsplit("+", 1)[-1]


def mask_url(url: str) -> str:
    """``url`` with its password (or, for a web URL, a token given as the user name) as ``***``.

    Database URLs go through SQLAlchemy's own parser (the rules Optuna and MLflow connect by),
    web URLs through :mod:`urllib.parse`; a regular expression that runs the password to the last
    ``@`` catches what a parser reads differently. Secret query parameters are masked too.
    """
    if "@" in url:
        if _scheme(url) in _WEB_SCHEMES:
            url = _mask_web_url(url)
        else:
            try:
                from sqlalchemy.engine import make_url

                parsed = make_url(url.strip())
                if parsed.password is not None:
                    lead = url[: len(url) - len(url.lstrip())]
                    url = lead + parsed.render_as_string(hide_password=True)
            except Exception:  # noqa: BLE001 - not a URL SQLAlchemy reads: the net below masks it
                pass
        url = _USERINFO.sub(lambda m: f"{m.group('head')}:***@", url)
        url = _WEB_USER.sub(lambda m: f"{m.group('head')}***@", url)
    return _QUERY_SECRET.sub(lambda m: f"{m.group('key')}***", url)


def _mask_web_url(url: str) -> str:
    from urllib.parse import urlsplit

    try:
        netloc = urlsplit(url.strip()).netloc
    except ValueError:
        return url
    userinfo, at, hostport = netloc.rpartition("@")
    if not at:
        return url
    user, colon, _ = userinfo.partition(":")
    masked = f"{user}:***" if colon else "***"  # a lone user name on a web URL is a token
    return url.replace(f"//{netloc}", f"//{masked}@{hostport}", 1)


def redact(text: object, limit: int | None = None) -> str:
    """Return ``text`` with every credential in it replaced by ``***``.

    Masked: the password of a URL (``postgresql://user:***@host/db``, whatever characters it
    holds), a token given as the user name of a web URL (``https://***@host``), ``password=``,
    ``token=`` and ``secret=`` values in a query string or a libpq ``key=value`` string, quoted
    or not.

    Args:
        text: Anything; it is converted with ``str``.
        limit: Cut the result to this many characters (an ellipsis marks the cut). The cut comes
            after the masking, so it can never remove the ``@`` that marks a password's end.

    Returns:
        The string with its credentials masked.
    """
    s = str(text)
    if _WHOLE_URL.fullmatch(s):
        s = mask_url(s)  # the text is one URL: its password may even hold a space
    s = _SCAN.sub(_mask_match, s)
    if limit is not None and len(s) > limit:
        s = s[: max(0, limit - 1)] + "…"
    return s


def _mask_match(m: re.Match) -> str:
    url = m.group("url")
    if not url:
        return f"{m.group('key')}***"
    # a URL in a sentence may end in punctuation that is not part of it: "... ('scheme://...')."
    core = url.rstrip("'\")]},;:.>")
    return mask_url(core) + url[len(core) :]


def store_location(url: str) -> str:
    """Where a storage or tracking store lives, without user, password or query string.

    What may be shown where anyone can read it (an MLflow parameter on an unauthenticated
    server): ``postgresql://user:pw@db:5432/optuna?sslmode=require`` -> ``postgresql://db:5432/
    optuna``. A path (a journal file) is returned as it is.
    """
    if "://" not in url:
        return redact(url)
    if _scheme(url) in _WEB_SCHEMES:
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(url.strip())
            port = f":{parts.port}" if parts.port else ""
            return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"
        except ValueError:
            pass
    else:
        try:
            from sqlalchemy.engine import URL, make_url

            # SQLAlchemy ends a password at its first "@", the regex net at the last one
            u = make_url(_USERINFO.sub(lambda m: f"{m.group('head')}:***@", url.strip()))
            return URL.create(
                u.drivername, host=u.host, port=u.port, database=u.database
            ).render_as_string()
        except Exception:  # noqa: BLE001 - not a URL SQLAlchemy reads
            pass
    head, _, rest = redact(url).partition("://")
    return f"{head}://{rest.rpartition('@')[2].split('?')[0]}"
