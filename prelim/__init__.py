"""prelim: PACS traffic in, AI draft radiology reports out, for radiologist review."""

from __future__ import annotations

__version__ = "0.1.0"
