"""Remove camera credentials from anything that may reach a log line, an API response or a metric label.

Camera URLs carry credentials (``rtsp://user:secret@cam/stream``); they must never leave the process that
opens the camera. ``redact_url`` hides the credentials of one URL, ``redact_text`` those of every URL in free
text (error messages from FFmpeg quote the URL they failed on). Both err on the side of hiding too much:

- user info: everything before the last ``@`` of the authority, whatever it holds (``:``, ``@``, ``/``,
  percent escapes, spaces), with or without a scheme (``user:secret@10.0.0.5``), IPv6 hosts kept;
- secret query or path parameters (``?password=``, ``&pwd=``, ``;token=``, ``api_key=``, ...): the value;
- secrets this process knows (``remember_url_secrets``: the decoder registers the URL it opens, so an
  error that quotes the password in a shape no pattern foresees is still cleaned): every occurrence.
"""

from __future__ import annotations

import re
import threading
from urllib.parse import quote, unquote

REDACTED = "***"

# "scheme:" then any number of slashes (rtsp://, rtsp:/, rtsp:///, file://).
_SCHEME_RE = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*:)(?P<slashes>/*)")
# Parameter names that hold secrets (query string, fragment, ';' path parameters), in any case, also with a
# prefix (api_key, x-api-key, access_token, auth.token): password=, pwd=, token=, ...
_HIDDEN_PARAMS = (
    "password|passwd|passphrase|pass|pwd|pw|passcode|pin|token|accesstoken|authtoken|secret|key|apikey"
    "|auth|authorization|sig|signature|credential|credentials|session|sessionid|sid"
)
_SECRET_NAME = rf"(?:[A-Za-z0-9]+[_.\-])*(?:{_HIDDEN_PARAMS})"
_SECRET_PARAM_RE = re.compile(rf"(?i)(?P<key>(?:^|(?<=[?&;#\s])){_SECRET_NAME}=)(?P<value>[^&;#\s]*)")
# Free text is redacted word by word (runs of non-space: linear time, whatever the text).
_WORD_RE = re.compile(r"\S+")
_SCHEME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-")
# What may stand before a URL inside a word: quotes, brackets, "key=".
_OPENERS = frozenset("'\"(<[{,=`")
# A known secret shorter than this is not replaced in free text (it would hit unrelated words).
_MIN_KNOWN_SECRET = 3
_MAX_KNOWN_SECRETS = 4096

_known_lock = threading.Lock()
_known: dict[str, None] = {}  # insertion-ordered set
_known_re: re.Pattern[str] | None = None


def _authority_end(rest: str) -> int:
    """Where the credentials-bearing part of a URL (after its scheme) ends: its query or fragment. The last
    '@' before that closes the user info, even when the password holds a raw '/' (FFmpeg would not log in
    with it, but it is still a password the user typed)."""
    ends = [i for i in (rest.find("?"), rest.find("#")) if i >= 0]
    return min(ends) if ends else len(rest)


def _userinfo_span(url: str) -> tuple[int, int] | None:
    """(start, end) of the user info of ``url`` (the text before its authority's last '@'), or None."""
    match = _SCHEME_RE.match(url)
    if match and match["slashes"]:
        start = match.end()
        if match["scheme"].lower() == "file:" and match["slashes"] != "//":
            return None  # file:/path or file:///path: no authority, only a path
    elif url.startswith("//"):
        start = 2  # a network-path reference: //user:secret@host/path
    elif url.startswith("/"):
        return None  # an absolute local path
    else:
        # No scheme (user:secret@host) or a scheme without slashes (rtsp:user:pw@host): the whole string is
        # authority and path.
        start = 0
    at = url.rfind("@", start, start + _authority_end(url[start:]))
    return (start, at) if at >= 0 else None


def _redact_userinfo(url: str) -> str:
    span = _userinfo_span(url)
    return url if span is None else url[: span[0]] + REDACTED + url[span[1] :]


def _redact_params(text: str) -> str:
    return _SECRET_PARAM_RE.sub(lambda m: f"{m['key']}{REDACTED}" if m["value"] else m.group(0), text)


def _redact_known(text: str) -> str:
    pattern = _known_re
    return pattern.sub(REDACTED, text) if pattern is not None else text


def redact_url(url: str) -> str:
    """The URL with its user info and secret parameters replaced by ``***``; host, port and path are kept."""
    return _redact_known(_redact_params(_redact_userinfo(url)))


def _redact_word(word: str) -> str:
    """One word of free text with the user info of the URL in it hidden: a URL with a scheme (``rtsp://``,
    maybe after a quote or ``url=``), a network-path reference (``//user:pw@host``), or a scheme-less
    ``user:password@host``. A word without ``@`` has no user info; ``name@host`` (no ':') is left alone."""
    if "@" not in word:
        return word
    colon_slash = word.find(":/")
    if colon_slash > 0:
        start = colon_slash
        while start > 0 and word[start - 1] in _SCHEME_CHARS:
            start -= 1
        if start < colon_slash and word[start].isalpha():
            return word[:start] + _redact_userinfo(word[start:])
    slashes = word.find("//")
    if slashes >= 0 and "@" in word[slashes:]:
        return word[:slashes] + _redact_userinfo(word[slashes:])
    colon = word.find(":")
    if colon < 0 or word.find("@", colon) < 0:
        return word  # an e-mail address, "name@host": nothing secret
    start = max((i for i in range(colon) if word[i] in _OPENERS), default=-1) + 1
    return word[:start] + _redact_userinfo(word[start:])


def redact_text(text: str) -> str:
    """``text`` with the credentials of every URL in it, secret parameters and known secrets hidden."""
    text = _WORD_RE.sub(lambda m: _redact_word(m.group(0)), text)
    return _redact_known(_redact_params(text))


def url_has_credentials(url: str) -> bool:
    return redact_url(url) != url


def url_secrets(url: str) -> list[str]:
    """The secrets of ``url`` as they may appear in text: its user info (whole, and the password alone) and
    the values of secret parameters, each raw, percent-decoded and percent-encoded."""
    found: list[str] = []
    span = _userinfo_span(url)
    if span is not None:
        userinfo = url[span[0] : span[1]]
        found.append(userinfo)
        _, sep, password = userinfo.partition(":")
        if sep:
            found.append(password)
    found.extend(m["value"] for m in _SECRET_PARAM_RE.finditer(url) if m["value"])
    variants: list[str] = []
    for secret in found:
        variants.extend((secret, unquote(secret), quote(unquote(secret), safe="")))
    return [s for s in dict.fromkeys(variants) if len(s) >= _MIN_KNOWN_SECRET]


def remember_url_secrets(url: str) -> None:
    """From now on ``redact_text`` and ``redact_url`` in this process replace the secrets of ``url`` wherever
    they appear (for processes that open cameras: an error that quotes a password in any shape)."""
    global _known_re  # noqa: PLW0603  (one process-wide set, read without a lock on every log line)
    new = [s for s in url_secrets(url) if s not in _known]
    if not new:
        return
    with _known_lock:
        for secret in new:
            _known[secret] = None
        while len(_known) > _MAX_KNOWN_SECRETS:
            del _known[next(iter(_known))]
        # Longest first, so a secret that contains another is replaced whole.
        ordered = sorted(_known, key=len, reverse=True)
        _known_re = re.compile("|".join(re.escape(s) for s in ordered))
