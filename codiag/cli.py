"""``codiag`` command line: train, demo, report, reproduce.

Bad input exits 2 with one line on stderr and no traceback.
"""
from __future__ import annotations

import argparse
import importlib
import re
import sys
from typing import Sequence

from .errors import Terminated, UsageError
from .version import __version__

COMMANDS = ("train", "demo", "report", "reproduce", "sweep")

#: what continues a command ended by SIGTERM, in that command's own options
_AFTER_SIGTERM = {"train": "; --resume continues", "demo": "; --resume continues",
                  "sweep": "; rerun the same command to resume its runs",
                  "reproduce": "; rerun the same command (finished runs are reused, a sweep preset resumes)"}


def terminated_hint(command: str) -> str:
    """The advice printed after ``command`` ended by SIGTERM (empty where there is nothing to continue)."""
    return _AFTER_SIGTERM.get(command, "")


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad input as a single line (argparse prints usage + error)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="codiag", description="Diagnose catastrophic overfitting in "
                     "single-step adversarial training.")
    parser.add_argument("--version", action="version", version=f"codiag {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"codiag.commands.{name}").add_parser(sub)
    return parser


# the library's arguments that the CLI spells as flags; a switch's "=True" is dropped
_ARGUMENTS = ("resume", "overwrite", "download", "data_root", "out", "val_split", "select", "every",
              "executor", "ray_address", "guard", "detector")
_SWITCHES = ("resume", "overwrite", "download")
_ARGUMENT = re.compile(r"\b(%s)=(True\b|'[^']*'|\"[^\"]*\"|[\w./-]+)?" % "|".join(_ARGUMENTS))


def _as_flag(m: re.Match) -> str:
    flag, value = "--" + m.group(1).replace("_", "-"), m.group(2)
    if value is None or value == "True":
        return flag
    if m.group(1) in _SWITCHES:   # resume=False has no flag
        return m.group(0)
    if value[0] in "'\"" and len(value) > 2:
        value = value[1:-1]
    return f"{flag} {value}"


def flag_words(message: str) -> str:
    """A library error in the CLI's words: ``resume=True`` is ``--resume``, ``data_root=DIR``
    is ``--data-root DIR``, ``select='best'`` is ``--select best``, ``method_args['lam']`` is ``-m lam``."""
    return _ARGUMENT.sub(_as_flag, re.sub(r"\bmethod_args\[('[^']*')\]", lambda m: f"-m {m.group(1)[1:-1]}", message))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UsageError as e:
        print(f"codiag {args.command}: {flag_words(str(e))}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a read-only target: the run is closed "failed" by now
        where = f": {e.filename}" if e.filename else ""
        print(f"codiag {args.command}: cannot write{where}: {e.strerror or e}", file=sys.stderr)
        return 2
    except Terminated as e:
        print(f"codiag {args.command}: terminated (signal {e.signum}){terminated_hint(args.command)}",
              file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print(f"codiag {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
