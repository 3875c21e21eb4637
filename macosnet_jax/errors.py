"""Errors a user can fix, and how the command-line tools report them: one line, exit status 2.

`UserError` marks a problem with the user's input (a config key or value, a path, a dataset that is not built,
weights that do not fit) whose message says what was expected. The CLIs (`macosnet`, `macosnet-demo`,
`macosnet-predict`) print such an error as `<prog>: error: <message>` on one line and exit with status 2;
`--verbose` or MACOSNET_VERBOSE=1 shows the traceback instead.
"""
from __future__ import annotations

import os
import re
import sys

VERBOSE_ENV = "MACOSNET_VERBOSE"
EXIT_USER_ERROR = 2


class UserError(ValueError):
    """A problem with the user's input that they can fix; the message names the file/key and what was expected."""


def verbose_requested(argv: list[str] | None = None) -> bool:
    """--verbose (or --verbose=true) on the command line, or MACOSNET_VERBOSE set to anything but '' / '0'."""
    argv = sys.argv if argv is None else argv
    if any(a in ("--verbose", "--verbose=true", "--verbose=True", "--verbose=1") for a in argv):
        return True
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def one_line(error: BaseException) -> str:
    """The message of `error` on one line. In a chain of exceptions (raised while handling another), a message
    that suggests a fix ('Did you mean ...') wins over the outer ones, which often only repeat the name."""
    chain, seen = [], set()
    current = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        current = current.__cause__ or current.__context__
    chosen = next((e for e in chain if "did you mean" in str(e).lower()), error)
    text = str(chosen)
    if isinstance(chosen, KeyError) and len(chosen.args) == 1 and isinstance(chosen.args[0], str):
        text = chosen.args[0]  # KeyError's str() adds quotes and escapes the newlines
    text = " ".join(part.strip() for part in text.strip().splitlines() if part.strip())
    return text or type(chosen).__name__


def report(prog: str, message: str) -> None:
    """Prints `<prog>: error: <message>` to stderr and exits with status 2."""
    sys.stderr.flush()
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)


def _flag_value(argv, name: str) -> str | None:
    """The value of --name in argv ('--name=v' or '--name v'), the last one given; None when absent."""
    value = None
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
        elif arg == f"--{name}" and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def flag_error_message(error: BaseException, argv) -> str:
    """One line for an error raised while absl parses the flags (config files are loaded then): the config
    file's own error (ml_collections puts its traceback in the text), or the unknown key of a --config.a.b=v."""
    text = str(error)
    if "Traceback (most recent call last)" in text:
        causes = re.findall(r"^\s*[\w.]*(?:Error|Exception): (.*)$", text, flags=re.M)
        flag = text.strip().splitlines()[0].split(": Error whilst")[0]
        if causes:
            return f"{flag}: {causes[-1].strip()}"
    chain = [error]
    while (chain[-1].__cause__ or chain[-1].__context__) is not None and len(chain) < 20:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    for e in chain:  # ConfigDict's KeyError for an unknown key, with its "Did you mean" suggestion
        if isinstance(e, KeyError) and e.args and isinstance(e.args[0], str):
            name, _, hint = e.args[0].partition("\n")
            name = name.strip("'\"")
            given = next((a.split("=")[0] for a in argv if a.startswith("--config.") and name in a), "--config")
            return f"{given}: the config has no key '{name}'" + (f" ({hint.strip()})" if hint.strip() else "")
    return one_line(error)


def absl_flags_parser(prog: str):
    """A `flags_parser` for absl's app.run: the errors a user can fix in the flags (a config file that does not
    exist or raises, an unknown key, a bad value) are reported as one line with exit status 2."""

    def parse(argv):
        from absl import flags  # noqa: PLC0415
        for name in ("config",):
            given = _flag_value(argv, name)
            if given is not None and not os.path.isfile(given.split(":")[0]):
                from macosnet_jax import config_files  # noqa: PLC0415
                report(prog, f"--{name} {given}: no such file {given.split(':')[0]} (installed configs: "
                       f"{', '.join(config_files.names())})")
        try:
            return flags.FLAGS(argv)
        except Exception as e:  # noqa: BLE001 - flags.Error, and the config file's own exceptions
            if verbose_requested(argv):
                raise
            report(prog, flag_error_message(e, argv))

    return parse
