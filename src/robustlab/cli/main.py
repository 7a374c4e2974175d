"""The ``robustlab`` command: one module per subcommand, dispatched through a registry."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence

from .. import __version__
from ..errors import RobustlabError
from . import (  # noqa: F401  (registration)
    calibrate_war,
    config,
    critical_eps,
    demo,
    diagnose,
    eval,
    ingest,
    lam_tuning,
    phase,
    runs,
    show,
    sweep,
    train,
)
from ._common import COMMANDS


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line on stderr and exit code 2 (argparse prints the whole usage)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a scheduler's time limit) raised where the program is, like Ctrl-C's
    ``KeyboardInterrupt``, so a run can record that it was stopped and how to resume it.

    A ``KeyboardInterrupt`` subclass: whatever cleans up after Ctrl-C cleans up after it too.
    """

    signum = signal.SIGTERM


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="robustlab",
        description="Adversarial-training research: train width-parameterized models, attack them, "
        "and measure natural accuracy, robust accuracy and perturbation stability.",
    )
    parser.add_argument("--version", action="version", version=f"robustlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True
    for name in COMMANDS.names():
        command = COMMANDS.get(name)
        command_parser = sub.add_parser(name, help=command.help, description=command.description)
        command.add_arguments(command_parser)
        command_parser.set_defaults(handler=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (2 for any user error)."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        try:
            with _sigterm_raises():
                code = int(args.handler(args) or 0)
            # Buffered output meets a closed pipe here at the latest, not at interpreter exit.
            sys.stdout.flush()
            return code
        except RobustlabError as exc:
            print(f"robustlab {args.command}: error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as exc:
            # A stopped run says what was kept and how to resume (training.runner.RunInterrupted).
            detail = str(exc) or "interrupted"
            print(f"robustlab {args.command}: {detail}", file=sys.stderr)
            return 128 + int(getattr(exc, "signum", signal.SIGINT))
    except BrokenPipeError:
        # The reader went away (`robustlab show RUN | head -1`): stop quietly and successfully,
        # as ripgrep does, instead of a traceback; the answer it wanted was already written.
        _discard_stdout()
        return 0


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While a command runs, SIGTERM raises :class:`Terminated` (Python's default would end the
    process on the spot and leave a run marked ``running`` forever)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def handler(signum: int, frame: object) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush of what is still buffered
    does not fail again (and print "Exception ignored ... BrokenPipeError")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is no file (captured, replaced): nothing to flush
        pass


if __name__ == "__main__":
    raise SystemExit(main())
