"""Linux native asynchronous I/O (``io_submit``) for direct writes, through ctypes.

A direct write submitted here goes to the disk at once and the calling thread
goes on; ``wait`` collects the completions. Used for record files
(``record.py``): their blocks are written ahead, so every write is an
overwrite, which ext4 queues without doing it inside ``io_submit`` (a write
that extends a file, or fills a hole, is done synchronously there, which
would gain nothing). No other thread is involved, so no write waits for a
thread to be scheduled or to win the GIL: the receiving thread submits each
full chunk as it is filled, and the disk writes it while the rest of the data
set arrives.

Not available (``Ring.open`` returns None) off Linux, on an architecture whose
system call numbers are not listed here, or when the kernel refuses a context
(``fs.aio-max-nr`` reached): the caller then uses its writer thread.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
from typing import Any

# (io_setup, io_destroy, io_submit, io_getevents) by machine.
_SYSCALLS = {
    "x86_64": (206, 207, 209, 208),
    "aarch64": (0, 1, 2, 4),
    "arm64": (0, 1, 2, 4),
}
_IOCB_CMD_PWRITEV = 8
# Buffers one write may gather (a record's last write has two).
_MAX_BUFFERS = 16


class _Iocb(ctypes.Structure):
    # struct iocb (linux/aio_abi.h), little endian: aio_key before aio_rw_flags.
    _fields_ = [
        ("aio_data", ctypes.c_uint64),
        ("aio_key", ctypes.c_uint32),
        ("aio_rw_flags", ctypes.c_int32),
        ("aio_lio_opcode", ctypes.c_uint16),
        ("aio_reqprio", ctypes.c_int16),
        ("aio_fildes", ctypes.c_uint32),
        ("aio_buf", ctypes.c_uint64),
        ("aio_nbytes", ctypes.c_uint64),
        ("aio_offset", ctypes.c_int64),
        ("aio_reserved2", ctypes.c_uint64),
        ("aio_flags", ctypes.c_uint32),
        ("aio_resfd", ctypes.c_uint32),
    ]


class _Event(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_uint64),
        ("obj", ctypes.c_uint64),
        ("res", ctypes.c_int64),
        ("res2", ctypes.c_int64),
    ]


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


def _load() -> Any:
    numbers = _SYSCALLS.get(platform.machine())
    if numbers is None or not hasattr(os, "O_DIRECT"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syscall = libc.syscall
    except (OSError, AttributeError):
        return None
    syscall.restype = ctypes.c_long
    return syscall, numbers


_loaded = _load()


def failure(result: int) -> OSError:
    """The error of a completion whose ``result`` is not what was asked (short: EIO)."""
    code = -result if result < 0 else errno.EIO
    return OSError(code, os.strerror(code))


def available() -> bool:
    """Whether this process can have an AIO context (one is opened and released to see)."""
    ring = Ring.open(1)
    if ring is None:
        return False
    ring.close()
    return True


def _address(buffer: Any) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(buffer))


class Ring:
    """An AIO context for one thread's writes (not thread-safe: one owner)."""

    def __init__(self, context: ctypes.c_ulong, depth: int) -> None:
        self._context = context
        self._depth = depth
        # The buffers of each write in flight, by ticket: kept alive (and
        # unchanged) until it is collected.
        self._pending: dict[int, list[memoryview]] = {}
        self._next = 1
        self._events = (_Event * depth)()
        self.submitted = 0  # writes submitted, all told
        # One control block and vector per slot, made once: a submission
        # only fills them in (the kernel copies the block at io_submit and
        # reads the vector then too).
        self._iocb = _Iocb(aio_lio_opcode=_IOCB_CMD_PWRITEV)
        self._iovecs = (_Iovec * _MAX_BUFFERS)()
        self._array = (ctypes.POINTER(_Iocb) * 1)(ctypes.pointer(self._iocb))

    @classmethod
    def open(cls, depth: int) -> Ring | None:
        """A context for ``depth`` writes in flight, or None where there is none to have."""
        if _loaded is None:
            return None
        syscall, (setup, _, _, _) = _loaded
        context = ctypes.c_ulong(0)
        if syscall(ctypes.c_long(setup), ctypes.c_long(depth), ctypes.byref(context)) != 0:
            return None  # ENOSYS, EAGAIN (aio-max-nr), EPERM (seccomp): the thread way
        return cls(context, depth)

    def __len__(self) -> int:
        return len(self._pending)

    def submit(self, fd: int, buffers: list[memoryview], offset: int, flags: int = 0) -> int:
        """Start writing ``buffers`` back to back at ``offset``; its ticket for ``wait``.

        The buffers must stay unchanged until the write is collected. Raises
        the submission's OSError (nothing is then in flight for it).
        """
        assert _loaded is not None
        if len(self._pending) >= self._depth:
            raise OSError(errno.EAGAIN, "too many writes in flight")
        if len(buffers) > _MAX_BUFFERS:
            raise ValueError(f"at most {_MAX_BUFFERS} buffers per write")
        syscall, (_, _, submit, _) = _loaded
        iovecs = self._iovecs
        for slot, buffer in enumerate(buffers):
            iovecs[slot].iov_base = _address(buffer)
            iovecs[slot].iov_len = len(buffer)
        ticket = self._next
        self._next += 1
        iocb = self._iocb
        iocb.aio_data = ticket
        iocb.aio_fildes = fd
        iocb.aio_buf = ctypes.addressof(iovecs)
        iocb.aio_nbytes = len(buffers)
        iocb.aio_offset = offset
        iocb.aio_rw_flags = flags
        while True:
            done = syscall(ctypes.c_long(submit), self._context, ctypes.c_long(1), self._array)
            if done == 1:
                break
            code = ctypes.get_errno()
            if done < 0 and code == errno.EINTR:
                continue
            raise OSError(code or errno.EIO, os.strerror(code or errno.EIO))
        self._pending[ticket] = buffers
        self.submitted += 1
        return ticket

    def wait(self, block: bool = True) -> list[tuple[int, int]]:
        """Completions (ticket, result): every write in flight, or (not ``block``) those done.

        The result is the bytes written, or a negative errno. Blocks with the
        GIL released (ctypes releases it for the call).
        """
        assert _loaded is not None
        syscall, (_, _, _, getevents) = _loaded
        results: list[tuple[int, int]] = []
        while True:
            need = len(self._pending) if block else 0
            got = syscall(
                ctypes.c_long(getevents),
                self._context,
                ctypes.c_long(need),
                ctypes.c_long(self._depth),
                self._events,
                None,
            )
            if got < 0:
                code = ctypes.get_errno()
                if code == errno.EINTR:
                    continue
                raise OSError(code, os.strerror(code))
            for event in self._events[:got]:
                if self._pending.pop(int(event.data), None) is not None:
                    results.append((int(event.data), int(event.res)))
            if not block or not self._pending:
                return results

    def close(self) -> None:
        """Wait for every write in flight, then release the context."""
        if _loaded is None or self._context.value == 0:
            return
        try:
            while self._pending:
                self.wait()
        finally:
            syscall, (_, destroy, _, _) = _loaded
            syscall(ctypes.c_long(destroy), self._context)
            self._context = ctypes.c_ulong(0)
