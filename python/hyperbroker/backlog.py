"""The bounded per-topic backlog ring (implemented in Rust)."""

from __future__ import annotations

from ._core import Backlog

__all__ = ["Backlog"]
