"""pynetdicom's UID checks, remembered: association negotiation without the regexes.

pynetdicom turns every UID of an association request into a pydicom ``UID``
through ``utils.set_uid`` (two regular expressions: pydicom's, then
pynetdicom's conformance check) and checks each transfer syntax again in
``PresentationContext.add_transfer_syntax`` (four more), at each step:
decoding the A-ASSOCIATE-RQ, making its primitive, negotiating, and encoding
the A-ASSOCIATE-AC. A ``storescu`` request proposes about 120 presentation
contexts, so one association paid several thousand checks: the listener
held the GIL for 23.5 ms per one-instance association, 11.6 ms with them
remembered (``bench.associations``: 94 ms per association before, 68 after,
DCMTK's about 50).

The same few hundred UIDs (the storage SOP classes, the transfer syntaxes)
come in every association, so each check that passes cleanly is remembered,
keyed by its arguments, in a bounded cache (a peer that sends endless new
UIDs only starts it again). A ``UID`` is an immutable ``str``, so one object
can be handed to every caller. A UID that pynetdicom refuses, or warns about
(non-conformant, not a transfer syntax), goes through pynetdicom's own code
every time, which raises or says so as before.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

from pydicom import config
from pydicom.uid import UID
from pynetdicom import ae, dimse_primitives, pdu_items, pdu_primitives, presentation, utils
from pynetdicom.presentation import PresentationContext

# The modules that imported ``set_uid`` by name.
_USERS = (ae, dimse_primitives, pdu_items, pdu_primitives, presentation, utils)
# Distinct (value, name, flags) kept; one association's are a few hundred.
CACHE_SIZE = 8192
_install_lock = threading.Lock()


def _plain(value: Any) -> bool:
    # Only values whose conversion depends on the text alone: str, bytes, and
    # a UID that carries nothing else (not a private transfer syntax's encoding).
    kind = type(value)
    return kind is str or kind is bytes or (kind is UID and not vars(value))


def remembering(set_uid: Any) -> Any:
    """``set_uid``, its clean conversions of plain values remembered (``_plain``).

    A conversion is remembered only when it gives a conformant UID: one that
    pynetdicom warns about, or refuses, is made again (and said again) each time.
    """
    cache: dict[tuple[Any, ...], UID] = {}

    @functools.wraps(set_uid)
    def cached_set_uid(
        value: Any,
        name: str,
        allow_empty: bool = True,
        allow_none: bool = True,
        validate: bool = True,
    ) -> UID | None:
        plain = _plain(value)
        if plain:
            key = (value, name, allow_empty, allow_none, validate)
            hit = cache.get(key)
            if hit is not None:
                return hit
        result: UID | None = set_uid(value, name, allow_empty, allow_none, validate)
        if plain and result is not None and result.is_valid:
            if len(cache) >= CACHE_SIZE:
                cache.clear()  # a peer sending endless new UIDs: start again
            cache[key] = result
        return result

    cached_set_uid.original = set_uid  # type: ignore[attr-defined]
    return cached_set_uid


@functools.lru_cache(maxsize=CACHE_SIZE)
def _clean_syntax(value: str | bytes | UID) -> UID | None:
    """The transfer syntax UID ``add_transfer_syntax`` appends without a word; else None."""
    try:
        text = value if isinstance(value, str) else value.decode("ascii")
        syntax = UID(text, validation_mode=config.IGNORE)  # checked below, quietly
        clean = bool(syntax) and utils.validate_uid(syntax) and syntax.is_valid
        if not clean or not (syntax.is_private or syntax.is_transfer_syntax):
            return None
    except Exception:  # the original raises or logs it, every time
        return None
    return syntax


def remembering_add(add: Any) -> Any:
    """``PresentationContext.add_transfer_syntax``, its checks of a clean UID remembered.

    Every UID it would append without an error or a warning is checked once;
    anything else (None, an invalid or non-conformant UID, one that is not a
    transfer syntax) goes to pynetdicom's own method, which says so each time.
    """

    @functools.wraps(add)
    def add_transfer_syntax(self: PresentationContext, syntax: Any) -> None:
        clean = _clean_syntax(syntax) if _plain(syntax) else None
        if clean is None:
            add(self, syntax)
        elif clean not in self._transfer_syntax:
            self._transfer_syntax.append(clean)

    add_transfer_syntax.original = add  # type: ignore[attr-defined]
    return add_transfer_syntax


def install() -> None:
    """Give pynetdicom the remembering ``set_uid`` and ``add_transfer_syntax`` (idempotent)."""
    with _install_lock:
        current = utils.set_uid
        if not hasattr(current, "original"):
            cached = remembering(current)
            for module in _USERS:
                if getattr(module, "set_uid", None) is current:
                    module.set_uid = cached  # type: ignore[attr-defined]
        add = PresentationContext.add_transfer_syntax
        if not hasattr(add, "original"):
            PresentationContext.add_transfer_syntax = remembering_add(add)  # type: ignore[method-assign]
