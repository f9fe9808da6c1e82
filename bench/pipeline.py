"""Time from the last instance's acknowledgement to the draft in the queue.

Runs the embedded stack (Prefect server, listener, in-process pipeline) with the
tiny model on this machine, sends synthetic studies with a pynetdicom SCU and
polls the queue. The reference is the target: ``stable_age`` + 2 s.

    python -m bench.pipeline [--studies 5] [--stable-age 2]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import time
from pathlib import Path

from sqlalchemy import select


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--studies", type=int, default=5)
    parser.add_argument("--stable-age", type=float, default=2.0)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args(argv)

    from pynetdicom import AE

    from db.engine import transaction
    from db.tables import Draft, Study
    from prelim.model_choice import stand_in_model_dir
    from prelim.runner import embedded_stack
    from prelim.settings import load_settings
    from prelim.synthetic import make_cxr_study

    root = Path(tempfile.mkdtemp(prefix="prelim-bench-"))
    settings = load_settings(
        data_dir=root / "var",
        listener_host="127.0.0.1",
        listener_port=_free_port(),
        prefect_port=_free_port(),
        stable_age_s=args.stable_age,
        device="cpu",
        max_new_tokens=args.new_tokens,
    )
    settings = settings.model_copy(update={"model": str(stand_in_model_dir(settings))})
    latencies: list[float] = []
    with embedded_stack(settings, review=False) as info:
        port = info["listener"].port
        for n in range(args.studies):
            datasets = make_cxr_study(seed=1000 + n, rows=2048, columns=2048)
            ae = AE(ae_title="BENCH")
            for ds in datasets:
                ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
            assoc = ae.associate("127.0.0.1", port, ae_title=settings.ae_title)
            assert assoc.is_established, "association refused"
            for ds in datasets:
                assert assoc.send_c_store(ds).Status == 0x0000
            acked = time.monotonic()
            assoc.release()
            uid = str(datasets[0].StudyInstanceUID)
            while True:
                with transaction(info["database"].sessions) as session:
                    found = session.scalar(
                        select(Draft).join(Study).where(Study.study_instance_uid == uid)
                    )
                if found is not None:
                    break
                if time.monotonic() - acked > 300:
                    raise SystemExit("no draft within 300 s")
                time.sleep(0.02)
            latencies.append(time.monotonic() - acked)
            engine = found.provenance.get("timings", {})
            print(
                f"study {n + 1}: {latencies[-1]:.2f} s from last ack to draft in queue "
                f"(model: preprocess {engine.get('preprocess_s', 0):.2f} s, "
                f"generate {engine.get('generate_s', 0):.2f} s)"
            )
    target = args.stable_age + 2.0
    median = statistics.median(latencies)
    print(f"\nstable_age {args.stable_age:g} s, tiny model, {args.new_tokens} new tokens")
    print(f"target (stable_age + 2 s): {target:.2f} s")
    print(f"prelim median {median:.2f} s, worst {max(latencies):.2f} s")
    print(f"median / target: {median / target:.2f}  (below 1.00 meets the target)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
