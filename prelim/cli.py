"""The ``prelim`` command.

Each sub-command imports its implementation lazily, so ``prelim --help`` is
fast and ``prelim listen`` does not import torch.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from prelim import __version__
from prelim.errors import PrelimError
from prelim.logs import configure_logging
from prelim.settings import Settings, load_settings, use_settings

Handler = Callable[[Settings, argparse.Namespace], int | None]


def _listener_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("DICOM listener")
    g.add_argument("--listener-host", metavar="ADDR", help="bind address (PRELIM_LISTENER_HOST)")
    g.add_argument(
        "--listener-port", type=int, metavar="PORT", help="DICOM port (PRELIM_LISTENER_PORT)"
    )
    g.add_argument("--ae-title", metavar="AET", help="our AE title (PRELIM_AE_TITLE)")
    g.add_argument(
        "--stable-age-s",
        type=float,
        metavar="S",
        help="seconds of quiet before a study is ready (PRELIM_STABLE_AGE_S)",
    )


def _review_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("review app")
    g.add_argument("--review-host", metavar="ADDR", help="bind address (PRELIM_REVIEW_HOST)")
    g.add_argument("--review-port", type=int, metavar="PORT", help="port (PRELIM_REVIEW_PORT)")


def _model_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", metavar="ID_OR_DIR", help="model id or local folder (PRELIM_MODEL)")
    g.add_argument("--device", metavar="DEV", help="auto, cuda, cuda:N or cpu (PRELIM_DEVICE)")


def _common_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--database-url", metavar="URL", help="queue database (PRELIM_DATABASE_URL)")
    p.add_argument("--data-dir", type=Path, metavar="DIR", help="data folder (PRELIM_DATA_DIR)")
    p.add_argument("--log-level", metavar="LEVEL", help="DEBUG, INFO, WARNING (PRELIM_LOG_LEVEL)")


# -- handlers ------------------------------------------------------------------


def _run(settings: Settings, args: argparse.Namespace) -> int | None:
    from flows.drafting import ModelNotAvailable
    from prelim.model_choice import choose_model
    from prelim.runner import run_all

    settings, _ = choose_model(settings, allow_stand_in=args.stand_in_if_missing)
    try:
        return run_all(settings)
    except ModelNotAvailable as exc:
        raise ModelNotAvailable(
            f"{exc}\nTo try prelim without it: `prelim run --stand-in-if-missing` (or `make run`) "
            "uses a tiny stand-in model whose drafts are meaningless."
        ) from exc


def _listen(settings: Settings, args: argparse.Namespace) -> int | None:
    from prelim.runner import run_listener

    return run_listener(settings)


def _worker(settings: Settings, args: argparse.Namespace) -> int | None:
    from flows.worker import serve_worker

    return serve_worker(settings)


def _review(settings: Settings, args: argparse.Namespace) -> int | None:
    from review.server import serve

    return serve(settings)


def _demo(settings: Settings, args: argparse.Namespace) -> int | None:
    from prelim.demo import run_demo

    return run_demo(settings, timeout_s=args.timeout, stay=not args.exit)


def _db_upgrade(settings: Settings, args: argparse.Namespace) -> int | None:
    from prelim.database import open_database

    db = open_database(settings, migrate=True)
    from db.migrate import current

    print(f"database at revision {current(db.engine)}")
    db.dispose()
    return 0


def _user_add(settings: Settings, args: argparse.Namespace) -> int | None:
    from db.engine import transaction
    from db.reviewers import add_reviewer
    from prelim.database import open_database

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            raise PrelimError("the passwords differ; nothing was changed")
    db = open_database(settings)
    with transaction(db.sessions) as session:
        add_reviewer(session, args.name, password, display_name=args.display_name)
    db.dispose()
    print(f"reviewer {args.name} added")
    return 0


def _queue(settings: Settings, args: argparse.Namespace) -> int | None:
    from prelim.queue_summary import print_queue

    return print_queue(settings)


def _build_test_model(settings: Settings, args: argparse.Namespace) -> int | None:
    from models.testmodel import build_test_model

    path = build_test_model(args.dir)
    print(f"tiny test model written to {path}")
    return 0


def _config(settings: Settings, args: argparse.Namespace) -> int | None:
    from prelim.config_doc import settings_table

    print(settings_table(current=settings if args.current else None))
    return 0


# -- parser --------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prelim",
        description="PACS studies in, AI draft radiology reports out, for radiologist review. "
        "Settings come from flags, then PRELIM_* variables, then prelim.toml.",
    )
    parser.add_argument("--version", action="version", version=f"prelim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, handler: Handler, help: str, **kw: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, **kw)
        p.set_defaults(handler=handler)
        return p

    p = add(
        "run",
        _run,
        "run everything on this machine: Prefect server, listener, pipeline worker and review app",
    )
    _common_flags(p)
    _listener_flags(p)
    _review_flags(p)
    _model_flags(p)
    p.add_argument(
        "--stand-in-if-missing",
        action="store_true",
        help="when the model's weights are not on this machine, say so and use the tiny "
        "stand-in model (meaningless text) instead of stopping",
    )

    p = add("listen", _listen, "run the DICOM listener (C-ECHO, C-STORE) alone")
    _common_flags(p)
    _listener_flags(p)

    p = add("worker", _worker, "serve the ingest-study deployment on this (GPU) node")
    _common_flags(p)
    _model_flags(p)

    p = add("review", _review, "run the review web app alone")
    _common_flags(p)
    _review_flags(p)

    p = add(
        "demo",
        _demo,
        "start prelim here, send synthetic chest X-ray and CT studies through the real "
        "C-STORE path, wait for their drafts and print a summary",
    )
    _common_flags(p)
    _listener_flags(p)
    p.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        metavar="S",
        help="give up waiting for drafts after S seconds (default 600)",
    )
    p.add_argument(
        "--exit",
        action="store_true",
        help="stop once the drafts are in, instead of serving until Ctrl-C",
    )

    p = add("db", lambda s, a: None, "database maintenance")
    db_sub = p.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    up = db_sub.add_parser("upgrade", help="apply migrations up to the newest schema")
    up.set_defaults(handler=_db_upgrade)
    _common_flags(up)

    p = add("user", lambda s, a: None, "reviewer accounts")
    user_sub = p.add_subparsers(dest="user_command", metavar="ACTION", required=True)
    ua = user_sub.add_parser("add", help="add a reviewer (asks for the password)")
    ua.set_defaults(handler=_user_add)
    ua.add_argument("name", help="sign-in name")
    ua.add_argument("--display-name", help="name shown on signed reports")
    ua.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from standard input (for scripts)",
    )
    _common_flags(ua)

    p = add("queue", _queue, "print the study and review queue summary")
    _common_flags(p)

    p = add(
        "build-test-model",
        _build_test_model,
        "build the tiny random Gemma 3 model used by the tests, offline",
    )
    p.add_argument("dir", type=Path, help="folder to write it to")

    p = add("config", _config, "print every setting, its variable and default")
    p.add_argument("--current", action="store_true", help="show the values in effect")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Flags named like a setting override it; the rest belong to the command.
    overrides = {k: v for k, v in vars(args).items() if k in Settings.model_fields}
    try:
        settings = load_settings(**overrides)
    except ValidationError as exc:
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "settings"
            var = f"PRELIM_{loc.upper()}" if err["loc"] else ""
            print(f"prelim: invalid setting {var or loc}: {err['msg']}", file=sys.stderr)
        return 2
    use_settings(settings)
    configure_logging(settings.log_level)
    try:
        return int(args.handler(settings, args) or 0)
    except PrelimError as exc:
        print(f"prelim: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
