"""What every command line of the package shares: one way of showing defaults in ``--help``, and a fast exit.

Each entry point has a ``build_parser()`` returning its ``argparse.ArgumentParser`` built with
``formatter_class=DefaultsHelpFormatter``: an option's help ends in "(default: X)" for its actual default
X, added by the formatter; a help text that already speaks of its default (a computed or conditional
one, written "[default: ...]") is left alone. :func:`add_common` gives every entry point the same
``--version`` and an "examples:" epilog (kept as written, one command a line).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import NoReturn

__all__ = ["CliParser", "DefaultsHelpFormatter", "exit_fast", "max_threads", "threads_error", "add_common", "examples_epilog",
           "package_version", "DISTRIBUTION"]

#: The distribution name of this package (pyproject.toml), whose version ``--version`` prints.
DISTRIBUTION = "sam-robustness"


def package_version() -> str:
    """The installed version of the distribution ``sam-robustness`` ("unknown" when it is not installed,
    e.g. when run from a bare checkout on PYTHONPATH)."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown"


def examples_epilog(examples, note: str = "") -> str:
    """The "examples:" block of an epilog: one ``command  # comment`` a line, indented, then ``note``."""
    text = "examples:\n" + "\n".join(f"  {line}" for line in examples)
    return text + ("\n\n" + note if note else "")


def add_common(parser: argparse.ArgumentParser, examples, note: str = "") -> argparse.ArgumentParser:
    """Add what every entry point shares: ``--version`` (``<prog> <version of sam-robustness>``) and the
    "examples:" epilog (:func:`examples_epilog`). Returns ``parser``."""
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}",
                        help="print the package version and exit")
    parser.epilog = examples_epilog(examples, note or (parser.epilog or ""))
    return parser


def exit_fast(code: int) -> NoReturn:
    """End the process with status ``code`` once its output is flushed, skipping the interpreter's
    teardown: freeing the module trees of torch, scipy and matplotlib takes about 0.4 s here, a tenth of a
    second per one-second command and 2% of the main job. For ``if __name__ == "__main__"`` of commands
    whose files are all written and closed when ``main`` returns (and whose worker processes are done);
    never inside a library call or a test."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):   # closed or broken pipe: nothing more can be written anyway
            pass
    os._exit(int(code))


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends " (default: X)" to an option's help unless X is None, False or empty (nothing to show),
    or the help already states its default (the word "default" appears in it). Unlike a membership test
    on (None, False), a default of 0 is shown. An epilog starting with "examples:" is printed as written
    (its lines are commands), the rest of it wrapped as usual."""

    def _fill_text(self, text, width, indent):
        if not text.startswith("examples:"):
            return super()._fill_text(text, width, indent)
        block, _, rest = text.partition("\n\n")
        out = "\n".join(indent + line for line in block.splitlines())
        return out + ("\n\n" + super()._fill_text(rest, width, indent) if rest else "")

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if "default" in text or default is None or default is False or default is argparse.SUPPRESS \
                or default == "":
            return text
        if isinstance(default, (list, tuple)):     # nargs options: as they are typed, space-separated
            return text + " (default: " + " ".join(map(str, default)).replace("%", "%%") + ")"
        return text + " (default: %(default)s)"


def max_threads() -> int:
    """The largest --threads the commands accept: 4 x the CPUs of this machine (at least 4); more only
    oversubscribes the cores, and very large values crash the thread pools."""
    return 4 * max(os.cpu_count() or 1, 1)


def threads_error(value: int, option: str = "--threads", low: int = 0) -> "str | None":
    """The error text for a --threads value outside [low, :func:`max_threads`], else None."""
    if value is None:
        return None
    if value < low:
        return f"{option} must be >= {low}, got {value}"
    if value > max_threads():
        return f"{option} must be <= {max_threads()} (4 x the {os.cpu_count()} CPUs here), got {value}"
    return None


class CliParser(argparse.ArgumentParser):
    """argparse's parser with the package's error style: a bad option is one line on stderr,
    ``<prog>: error: <what is wrong> (see --help)``, and exit status 2, without argparse's usage block above it
    (``--help`` still prints the usage). Subcommand parsers inherit it."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")
