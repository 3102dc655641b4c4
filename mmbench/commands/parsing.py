"""argparse as mmbench's CLI needs it: errors as one line, negative values as values.

argparse prints its whole usage block before an error, and it reads ``-b -64G`` or
``--rom-gpa -0x1000`` as an unknown option instead of a value to refuse with a reason.
Every mmbench parser (subcommands and plugins' commands included) is a ``Parser``.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from typing import NoReturn

from mmbench.errors import ConfigError

_OPTION_ERROR = re.compile(r"^argument (\S+): (.*)$", re.DOTALL)


class Parser(argparse.ArgumentParser):
    """One-line errors (a ConfigError: exit 2, no usage block); values that start with
    ``-`` and a digit or dot are values (no mmbench option starts with a digit)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-\.?\d")

    def error(self, message: str) -> NoReturn:
        m = _OPTION_ERROR.match(message)
        if m:
            raise ConfigError(m.group(1), m.group(2).replace("\n", " "))
        raise ConfigError(self.prog, f"{message} (see {self.prog} --help)")


def nonempty(text: str) -> str:
    """An option's value that must say something (``--name ''`` is not the default)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def int_at_least(low: int) -> Callable[[str], int]:
    """An integer option of at least ``low`` (``--jobs``: 1, ``--retries``: 0)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an integer >= {low}, got {text!r}"
            ) from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low} (got {value})")
        return value

    return parse


positive_int = int_at_least(1)


def int_choice(choices: tuple[int, ...]):
    """An integer option that takes one of ``choices`` (``--hz``)."""

    def parse(text: str) -> int:
        allowed = ", ".join(map(str, choices))
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected one of {allowed}, got {text!r}") from None
        if value not in choices:
            raise argparse.ArgumentTypeError(f"must be one of {allowed} (got {value})")
        return value

    return parse
