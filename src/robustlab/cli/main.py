"""The ``robustlab`` command: one module per subcommand, dispatched through a registry."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from .. import __version__, _allocator
from ..errors import RobustlabError
from ._common import COMMANDS

# The subcommand modules (every public module of this package but this one), each registering
# its command when imported. A command line naming one imports only that one (``robustlab
# sweep``, ``runs``, ``show`` then start without importing torch); ``--help`` imports them all.
COMMAND_MODULES = tuple(
    sorted(
        path.stem
        for path in Path(__file__).parent.glob("*.py")
        if not path.stem.startswith("_") and path.stem != "main"
    )
)


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


def load_commands(argv: Sequence[str] | None = None) -> None:
    """Import the subcommand modules ``argv`` needs: the one it names, else all of them."""
    words = [a for a in (argv or []) if not a.startswith("-")][:1]
    name = words[0] if words else ""
    if name.replace("-", "_") in COMMAND_MODULES:
        importlib.import_module(f".{name.replace('-', '_')}", __package__)
        if name in COMMANDS:
            return
    for module in COMMAND_MODULES:
        importlib.import_module(f".{module}", __package__)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``robustlab`` parser, with the commands ``argv`` needs (every command without it)."""
    load_commands(argv)
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
    """Run the command line; returns the exit code (2 for any user error).

    Started as the ``robustlab`` command (``argv`` None), it first re-executes itself once with
    glibc's tuned allocator settings (:mod:`robustlab._allocator`), before torch is imported.
    """
    if argv is None:
        _allocator.reexec_tuned()
        argv = sys.argv[1:]
    try:
        parser = build_parser(argv)
        args = parser.parse_args(argv)
        try:
            with _sigterm_raises():
                code = int(args.handler(args) or 0)
            # Buffered output meets a closed pipe here at the latest, not at interpreter exit.
            sys.stdout.flush()
            return code
        except RobustlabError as exc:
            print(f"robustlab {args.command}: error: {exc}", file=sys.stderr)
            return int(getattr(exc, "exit_code", 2))  # 3: a run failed (errors.RunFailed)
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
