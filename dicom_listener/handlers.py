"""EVT_C_ECHO and EVT_C_STORE handlers; their dependencies come bound via ``evt_handlers``."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event

from dicom_listener import statuses
from dicom_listener.receiver import Receiver, StoreRequest

log = logging.getLogger(__name__)


def handle_echo(event: Event) -> int:
    return statuses.SUCCESS


def handle_store(event: Event, receiver: Receiver) -> int | Dataset:
    """Store the instance; any failure, a bug included, answers a failure status.

    C-STORE requests are served by ``dimse.DataPath`` on the DUL thread; this
    handler serves those pynetdicom dispatches itself (an association whose
    raw PDUs are watched by an event handler).
    """
    request = cast(C_STORE, event.request)
    temp: Path | None = None
    try:
        temp = Path(event.dataset_path)
        digest = getattr(getattr(request, "_dataset_file", None), "digest", None)
        store_request = StoreRequest(
            sop_class_uid=str(request.AffectedSOPClassUID or ""),
            sop_instance_uid=str(request.AffectedSOPInstanceUID or ""),
            priority=request.Priority,
            calling_ae_title=str(event.assoc.requestor.ae_title or "").strip() or None,
        )
        # The file pynetdicom wrote is complete once the handler runs; close our
        # writer before it is moved into the spool so no buffered byte is left behind.
        writer = getattr(request, "_dataset_file", None)
        if writer is not None:
            try:
                writer.close()
            except OSError as exc:
                log.error(
                    "instance %s refused: cannot write the spool (%s)",
                    store_request.sop_instance_uid,
                    exc.strerror,
                )
                return _answer(statuses.OUT_OF_RESOURCES, "cannot write the spool")
        outcome = receiver.store(temp, store_request, digest() if digest else None)
        return _answer(outcome.status, outcome.comment)
    except Exception:
        log.exception(
            "C-STORE handler failed for instance %s",
            getattr(request, "AffectedSOPInstanceUID", "?"),
        )
        return statuses.HANDLER_FAILED
    finally:
        if temp is not None and temp.exists():
            # Not stored: the temp file must not outlive the request.
            _remove(temp)


def _answer(status: int, comment: str | None) -> int | Dataset:
    if comment is None:
        return status
    answer = Dataset()
    answer.Status = status
    answer.ErrorComment = statuses.error_comment(comment)
    return answer


def handle_closed(event: Event) -> None:
    """Remove the partial temp file of a transfer cut off mid-dataset."""
    message = getattr(event.assoc.dimse, "message", None)
    writer = getattr(message, "_data_set_file", None)
    if writer is None:
        return
    discard = getattr(writer, "discard", None)  # ours: drops its unwritten chunk
    try:
        if discard is not None:
            discard()
        else:
            writer.close()
    except OSError:
        pass
    _remove(Path(writer.name))


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot remove temp file %s: %s", path.name, exc.strerror)


def handle_rejected(event: evt.Event, allowed_titles: list[str]) -> None:
    """Log who was refused and why, so an operator can fix the PACS or the allowlist."""
    assoc = event.assoc
    if getattr(assoc, "prelim_address_refused", False):
        return  # logged where the address was checked
    calling = assoc.requestor.ae_title
    peer = f"{assoc.requestor.address}:{assoc.requestor.port}"
    if allowed_titles and calling not in allowed_titles:
        why = "calling AE title not in PRELIM_ALLOWED_AE_TITLES (1, 1, 3)"
    else:
        why = (
            f"more than {assoc.ae.maximum_associations} associations at once, "
            "PRELIM_MAX_ASSOCIATIONS (2, 3, 2)"
        )
    log.warning("association from %s (calling AE %r) rejected: %s", peer, calling, why)


def handlers_for(receiver: Receiver, allowed_titles: list[str] | None = None) -> list[Any]:
    return [
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, handle_store, [receiver]),
        (evt.EVT_CONN_CLOSE, handle_closed),
        (evt.EVT_REJECTED, handle_rejected, [allowed_titles or []]),
    ]
