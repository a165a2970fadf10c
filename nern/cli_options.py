"""Command-line flags generated from a pydantic model: the one generator behind `nern fit`'s
and `nern jobs submit`'s settings, so both accept every `FitConfig` field under the same name.

    add_model_flags(parser, FitConfig)                 # --steps, --batch-size, --amp/--no-amp, ...
    values = model_values(parser.parse_args(), FitConfig)   # only the flags given

A field `batch_size` is the flag `--batch-size`. Booleans get `--x/--no-x`; Literal fields get
their choices; tuples take comma-separated values. Flags never given stay out of the result, so
the model's own defaults (or a server's) apply.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import BaseModel

from .errors import ConfigError


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (`nern: error: ...`) and exit status 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"nern: error: {message}\n")


def _unwrap_optional(annotation: Any) -> Any:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _typed(name: str, convert: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a valid {name}: {text!r}") from None

    return parse


def _sequence(item: Callable[[str], Any]) -> Callable[[str], Any]:
    return lambda text: tuple(item(v.strip()) for v in text.strip("[]()").split(",") if v.strip())


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def add_model_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, model: type[BaseModel], *,
                    exclude: Iterable[str] = (), dest_prefix: str = "") -> None:
    """One flag per field of `model` (see the module docstring); dest = dest_prefix + field."""
    skip = set(exclude)
    for name, info in model.model_fields.items():
        if name in skip:
            continue
        ann = _unwrap_optional(info.annotation)
        helptext = f"{info.description or name} (default: {info.default})"
        kwargs: dict[str, Any] = {"dest": dest_prefix + name, "default": argparse.SUPPRESS, "help": helptext}
        if ann is bool:
            parser.add_argument(flag_name(name), action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if typing.get_origin(ann) is typing.Literal:
            kwargs["choices"] = list(typing.get_args(ann))
        elif typing.get_origin(ann) is tuple:
            item = typing.get_args(ann)[0]
            kwargs["type"] = _typed(f"list of {item.__name__}", _sequence(item))
            kwargs["metavar"] = ",".join([item.__name__.upper()] * len(typing.get_args(ann)))
        elif ann in (int, float):
            kwargs["type"] = _typed(ann.__name__, ann)
        elif ann is not str:
            raise ConfigError(f"no flag type for field {name!r} ({ann!r})")
        parser.add_argument(flag_name(name), **kwargs)


def model_values(args: argparse.Namespace, model: type[BaseModel], *, dest_prefix: str = "") -> dict[str, Any]:
    """The values of the `model` flags that were given on the command line."""
    given = vars(args)
    return {name: given[dest_prefix + name] for name in model.model_fields if dest_prefix + name in given}


__all__ = ["OneLineParser", "add_model_flags", "flag_name", "model_values"]
