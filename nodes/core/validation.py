"""Checks on the constant (widget) values of a prompt, one value at a time.

ComfyUI checks min/max only for inputs a node's own validation does not take, never checks NaN, and (in the
versions we test) does not check the option lists of V3 combos for prompts sent through the API. Every Likeness
node therefore checks every widget value itself, at validation time, with these rules; a prompt that breaks one
is refused with HTTP 400 before anything runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from .errors import LikenessError

MAX_STRING = 4096  # longest free-text widget value accepted (a prompt is far shorter; a name much shorter)
MAX_NAME = 200  # longest file-name-like value (prefixes, sub-folders)
_SHOWN_OPTIONS = 20  # longer option lists are summarised, as ComfyUI does


@dataclass(frozen=True)
class WidgetSpec:
    """What a widget accepts, read from the node's schema."""

    name: str
    kind: str  # "INT" | "FLOAT" | "STRING" | "BOOLEAN" | "COMBO"
    minimum: float | None = None
    maximum: float | None = None
    options: tuple | None = None  # COMBO
    multiline: bool = False


def _options_text(options: Sequence) -> str:
    shown = ", ".join(f"`{o}`" for o in list(options)[:_SHOWN_OPTIONS])
    if len(options) > _SHOWN_OPTIONS:
        shown += f", … ({len(options)} in all; pick one from the list)"
    return shown or "(none: the list is empty)"


def _number_text(value) -> str:
    return repr(value) if isinstance(value, str) else f"{value:g}" if isinstance(value, float) else str(value)


def widget_problem(spec: WidgetSpec, value) -> str | None:
    """Why `value` is not acceptable for `spec`, or None. `None` (a linked input) is always acceptable here."""
    if value is None:
        return None
    name = spec.name
    if spec.kind == "COMBO":
        if spec.options is not None and value not in spec.options:
            return f"`{name}` is {value!r}, which is not one of the choices: {_options_text(spec.options)}."
        return None
    if spec.kind in ("INT", "FLOAT"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"`{name}` must be a number; got {value!r}."
        if not math.isfinite(value):
            return f"`{name}` must be a finite number; got {_number_text(value)}."
        if spec.kind == "INT" and value != int(value):
            return f"`{name}` must be a whole number; got {_number_text(value)}."
        low, high = spec.minimum, spec.maximum
        if (low is not None and value < low) or (high is not None and value > high):
            return (f"`{name}` must be between {_number_text(low)} and {_number_text(high)}; "
                    f"got {_number_text(value)}.")
        return None
    if spec.kind == "STRING":
        if not isinstance(value, str):
            return f"`{name}` must be text; got {type(value).__name__}."
        if "\x00" in value:
            return f"`{name}` contains a NUL character; remove it."
        limit = MAX_STRING if spec.multiline else max(MAX_NAME, 1024)
        if len(value) > limit:
            return f"`{name}` is {len(value)} characters long; at most {limit} are accepted."
        return None
    if spec.kind == "BOOLEAN":
        if not isinstance(value, bool):
            return f"`{name}` must be true or false; got {value!r}."
    return None


def name_problem(name: str, value: str, what: str = "name") -> str | None:
    """Why a value used to build a path below a folder (a prefix, a sub-folder) is unusable, or None."""
    if not isinstance(value, str):
        return f"`{name}` must be text; got {type(value).__name__}."
    if "\x00" in value:
        return f"`{name}` contains a NUL character; use a plain {what} such as `alice` or `people/alice`."
    if len(value) > MAX_NAME:
        return f"`{name}` is {len(value)} characters long; use a {what} of at most {MAX_NAME} characters."
    parts = value.replace("\\", "/").split("/")
    if value.startswith(("/", "\\")) or (len(value) > 1 and value[1] == ":") or ".." in parts:
        return (f"`{name}` must stay inside its folder: no leading `/`, drive letter or `..`; got {value!r}. "
                f"Use a plain {what} such as `alice` or `people/alice`.")
    return None


def parse_problem(parse, value) -> str | None:
    """The message a text widget's parser raises for `value` (None when it parses, or when linked: not text)."""
    if not isinstance(value, str):
        return None
    try:
        parse(value)
    except LikenessError as e:
        return str(e)
    return None
