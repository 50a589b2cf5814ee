"""Go's encoding/json string quoting, as the go-micro wire-format tests model it."""

from __future__ import annotations

_GO_SHORT_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",  # Go >= 1.22; older Go writes \u0008
    "\f": "\\f",  # Go >= 1.22; older Go writes \u000c
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}


def go_quote(s: str) -> str:
    """Quote ``s`` exactly as Go's encoding/json does (with its default HTML escaping, as
    ``json.Marshal`` does): ``<``, ``>``, ``&``, U+2028, U+2029 and control characters as
    ``\\u00XX`` escapes, other non-ASCII as raw UTF-8."""
    out = ['"']
    for ch in s:
        c = ord(ch)
        if ch in _GO_SHORT_ESCAPES:
            out.append(_GO_SHORT_ESCAPES[ch])
        elif c < 0x20 or ch in "<>&" or c in (0x2028, 0x2029):
            out.append(f"\\u{c:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)
