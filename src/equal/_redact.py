"""Secrets in URLs, masked wherever a URL is written or logged.

``http://user:SECRET@host/v1?api_key=K`` becomes ``http://user:***@host/v1?api_key=***``: the password of the
user part and the values of query parameters that carry credentials are replaced by ``***``; the scheme,
user name, host, port and path are kept so a reader can still tell which endpoint was used. The request
itself is sent with the real URL (httpx turns its user part into HTTP basic auth).
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["MASK", "is_redacted", "redact_text", "redact_url", "resolve_url"]

MASK = "***"
#: Query parameters whose values are credentials (compared case-insensitively, ``-`` and ``_`` alike).
_SECRET_PARAMS = frozenset({"key", "api_key", "apikey", "token", "access_token", "auth", "password", "secret",
                            "sig", "signature", "client_secret", "refresh_token", "id_token", "session"})
_URL_RE = re.compile(r"""\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'"<>`]+""")


def _secret_param(name: str) -> bool:
    n = name.lower().replace("-", "_")
    return n in _SECRET_PARAMS or n.endswith(("_key", "_token", "_secret", "_password"))


def redact_url(url: str) -> str:
    """``url`` with the user part's password and credential query values replaced by ``***``.

    A user part without a password (``http://TOKEN@host``) is masked whole, since a lone user name is how
    several services pass a token. Text that is not a URL with a host is returned unchanged.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if not parts.scheme or not parts.netloc:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{hostport}" if colon else f"{MASK}@{hostport}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_secret_param(k) for k, _ in pairs):
            query = urlencode([(k, MASK if _secret_param(k) else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """Every URL inside ``text`` passed through :func:`redact_url` (for error messages and logs)."""
    if "://" not in text:
        return text
    return _URL_RE.sub(lambda m: redact_url(m.group(0)), text)


def is_redacted(url: str) -> bool:
    """Whether ``url`` holds a ``***`` where :func:`redact_url` puts one (its secret is not in it)."""
    return url != "" and MASK in url and redact_url(url) == url


def resolve_url(url: str | None, *, env: tuple[str, ...] = ("EQUAL_BASE_URL", "OPENAI_BASE_URL")) -> str | None:
    """The real URL behind ``url`` when it was read back redacted (from ``run.toml``), else ``url``.

    A redacted URL is matched against the environment variables ``env``: the first whose redacted form
    equals ``url`` is the URL with its secret.

    Raises
    ------
    ConfigError
        ``url`` is redacted and no variable of ``env`` holds the matching URL.
    """
    import os

    from equal.errors import ConfigError

    if url is None or not is_redacted(url):
        return url
    for name in env:
        value = os.environ.get(name)
        if value and redact_url(value) == url:
            return value
    raise ConfigError(
        f"llm.base_url={url!r} has its secret masked (it was read from a run.toml); give the real URL with "
        f"--base-url, or in ${env[0]}"
    )
