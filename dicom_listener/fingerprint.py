"""The fingerprint of a received instance: XXH3-128 of the file's bytes, as ``xxh128:<hex>``.

It is kept in the index (``instances.digest``) for the copy in the spool, and
tells a re-sent instance with the same bytes from one whose bytes differ; it
also lets anyone check a spool file against the index by hand
(``xxh128sum FILE``, Debian's ``xxhash`` package).

The hash runs on the receiving thread over every byte of every instance,
which on a small machine is on the listener's critical path, so its speed counts:
XXH3-128 takes 5 µs per 256 KB here, BLAKE3 44 µs and SHA-256 about 210 µs
(a 10 MB radiograph: 0.2, 1.7 and 8.3 ms). A CXR set went 9 % faster than
with BLAKE3, the median of six interleaved rounds (``bench/RESULTS.md``). It
is not a cryptographic hash, and nothing here needs one: the digest tells
identical bytes from accidental differences (a re-send in another transfer
syntax, an edited copy, a damaged file), and decides nothing else. A re-sent
instance is answered as stored and its first copy kept whether or not the
digests agree, so a crafted collision would change one log line.

The algorithm's name is part of the value, so digests of another kind (``sha256:``
and ``blake3:``, from an index made by earlier versions) are told apart and never
compared with ours.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import xxhash

ALGORITHM = "xxh128"
_READ = 1 << 20


def hasher() -> Any:
    """A fresh incremental hasher."""
    return xxhash.xxh3_128()


def label(hexdigest: str) -> str:
    return f"{ALGORITHM}:{hexdigest}"


def of_file(path: Path) -> str:
    digest = hasher()
    with path.open("rb", buffering=0) as f:
        while chunk := f.read(_READ):
            digest.update(chunk)
    return label(digest.hexdigest())


def comparable(first: str, second: str) -> bool:
    """Whether two digests are of the same algorithm (so equal bytes give equal digests)."""
    return first.partition(":")[0] == second.partition(":")[0]
