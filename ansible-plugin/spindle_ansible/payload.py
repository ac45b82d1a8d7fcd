"""Split a pipelined AnsiballZ payload into what can be cached on a target
(the zip of the module and its module_utils, identical for every task that
uses the module) and what belongs to one task (its arguments).

Works on the wrappers of ansible-core 2.17 (a formatted template with
``ZIPDATA`` and ``ANSIBALLZ_PARAMS``) and 2.19 and later (a call
``_ansiballz_main(name=value, ...)`` at the end of the file). Values are
read with ``ast.literal_eval``, never evaluated (2.22's ``secrets``, a
``frozenset(...)`` of strings, by reading the set inside the same way).

Command line (for tools and tests)::

    python -m spindle_ansible.payload split PAYLOAD [--zip OUT.zip]

prints the task part as JSON (and writes the zip when asked).
"""
import ast
import base64
import json
import re
import sys

__all__ = ["split", "NotAnsiballZ"]


class NotAnsiballZ(ValueError):
    """The payload is not a new-style Python module wrapper Spindle can run."""


_CALL = b"\n    _ansiballz_main(\n"
_NAME = re.compile(rb"\s*(\w+)")
_BASE64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="


def split(payload):
    """Returns a dict: ``zip_b64`` (bytes: the zip in base64, as the
    wrapper carries it), ``entry`` (``runpy`` or
    ``loader``), ``fqn``, ``params`` (JSON text), ``profile``,
    ``extensions`` (JSON text or None), ``secrets`` (JSON text of a list
    of strings, or None: only 2.22's wrapper has them), ``rlimit_nofile``
    and ``module_name``."""
    if b"_ANSIBALLZ_WRAPPER" not in payload and b"def _ansiballz_main" not in payload:
        raise NotAnsiballZ("not an AnsiballZ wrapper")
    if _CALL in payload:
        return _split_loader(payload)
    return _split_runpy(payload)


def _split_loader(payload):
    # One keyword argument per line.
    at = payload.rindex(_CALL) + len(_CALL)
    kw = {}
    plain = None  # the zip's base64, when read as is
    while True:
        end = payload.find(b"\n", at)
        if end < 0:
            end = len(payload)
        text = _plain_b64(payload, at, end)
        if text is not None:
            plain, kw["zip_data"] = text, None
            at = end + 1
            continue
        line = payload[at:end]
        if line.strip() == b")":
            break
        if end == len(payload):
            raise NotAnsiballZ("the wrapper call is not closed")
        at = end + 1
        name, _, value = line.partition(b"=")
        value = value.rstrip()
        named = _NAME.fullmatch(name)
        if not named or not value.endswith(b","):
            raise NotAnsiballZ("unexpected line in the wrapper call: %r" % line[:80])
        name = named.group(1).decode("ascii")
        if name == "date_time":
            continue  # only stamps a file the stock wrapper adds to the zip
        if name == "zip_data":
            plain = None
        kw[name] = _secrets(value[:-1]) if name == "secrets" else _literal(value[:-1])
    missing = {"zip_data", "module_fqn", "params", "profile"} - set(kw)
    if missing:
        raise NotAnsiballZ("wrapper call lacks %s" % ", ".join(sorted(missing)))
    extensions = kw.get("extensions") or {}
    return {
        "zip_b64": plain if plain is not None else _b64_text(kw["zip_data"]),
        "entry": "loader",
        "fqn": kw["module_fqn"],
        "params": kw["params"],
        "profile": kw["profile"],
        "extensions": json.dumps(extensions) if extensions else None,
        "secrets": json.dumps(kw["secrets"]) if "secrets" in kw else None,
        "rlimit_nofile": int(kw.get("rlimit_nofile") or 0),
        "module_name": kw.get("ansible_module"),
    }


def _plain_b64(payload, start, end):
    """The base64 of `payload[start:end]` when that line is `zip_data='…',`
    with base64 only between the quotes, whose text is then its value;
    None otherwise. The line is nearly all of the payload: it is neither
    parsed nor decoded, and copied once."""
    while payload[start : start + 1] in (b" ", b"\t"):
        start += 1
    if not payload.startswith(b"zip_data='", start):
        return None
    close = payload.rfind(b"',", start + len(b"zip_data='"), end)
    if close < 0 or payload[close + 2 : end].strip():
        return None
    text = payload[start + len(b"zip_data='") : close]
    return None if text.translate(None, _BASE64) else text


def _literal(text):
    """The value of a Python literal (bytes of UTF-8 source)."""
    try:
        return ast.literal_eval(text.decode("utf-8"))
    except (ValueError, SyntaxError, UnicodeDecodeError) as e:
        raise NotAnsiballZ("unexpected value in the wrapper call: %r" % text[:80]) from e


def _secrets(text):
    """The strings of `frozenset()` or `frozenset({'a', ...})` (bytes of
    UTF-8 source), sorted: the wrapper's set as a list."""
    if not (text.startswith(b"frozenset(") and text.endswith(b")")):
        raise NotAnsiballZ("unexpected secrets in the wrapper call: %r" % text[:80])
    inner = text[len(b"frozenset(") : -1].strip()
    value = _literal(inner) if inner else set()
    if not isinstance(value, set) or not all(isinstance(s, str) for s in value):
        raise NotAnsiballZ("unexpected secrets in the wrapper call: %r" % text[:80])
    return sorted(value)


def _b64_text(value):
    """The zip's base64 as one run of ASCII bytes."""
    try:
        if isinstance(value, str):
            value = value.encode("ascii")
        if not isinstance(value, bytes):
            raise TypeError(type(value).__name__)
        text = b"".join(value.split())
        text.decode("ascii")
    except (TypeError, UnicodeError) as e:
        raise NotAnsiballZ("the zip is not base64 text: %s" % e) from e
    return text


def _line_value(payload, pattern):
    m = re.search(pattern, payload, re.M)
    if not m:
        raise NotAnsiballZ("wrapper lacks %s" % pattern.decode())
    return m.group(1)


def _split_runpy(payload):
    zip_data = _line_value(payload, rb"^\s*ZIPDATA = '([A-Za-z0-9+/=\s]*)'$")
    params = _literal(_line_value(payload, rb"^\s*ANSIBALLZ_PARAMS = (.*)$"))
    fqn = _line_value(payload, rb"runpy\.run_module\(mod_name='([^']+)'").decode()
    name = re.search(rb"prefix='ansible_' \+ ('[^']*')", payload)
    limit = re.search(rb"min\(existing_hard, (\d+)\)", payload)
    return {
        "zip_b64": _b64_text(zip_data),
        "entry": "runpy",
        "fqn": fqn,
        "params": params,
        "profile": None,
        "extensions": None,
        "secrets": None,
        "rlimit_nofile": int(limit.group(1)) if limit else 0,
        "module_name": _literal(name.group(1)) if name else None,
    }


def main(argv):
    if len(argv) < 2 or argv[0] != "split":
        sys.stderr.write("usage: python -m spindle_ansible.payload split PAYLOAD [--zip OUT]\n")
        return 2
    with open(argv[1], "rb") as f:
        parts = split(f.read())
    if "--zip" in argv:
        with open(argv[argv.index("--zip") + 1], "wb") as f:
            f.write(base64.b64decode(parts.pop("zip_b64")))
    if "zip_b64" in parts:
        parts["zip_b64"] = parts["zip_b64"].decode("ascii")
    json.dump(parts, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
