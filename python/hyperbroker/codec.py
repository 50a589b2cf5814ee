"""The go-micro envelope codec (implemented in Rust).

``encode(topic, header, body) -> bytes`` and ``decode(data) -> (topic, header, body)``.
"""

from __future__ import annotations

from ._core import decode, encode

__all__ = ["decode", "encode"]
