"""Argument checks, in one place: every error names the owner and the argument."""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Callable, Iterable, Sequence


def check_number(owner: str, name: str, value, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, integer: bool = False,
                 optional: bool = False):
    """Return ``value`` (an int if ``integer``, else a float) after checking its type and range.

    ``low``/``high`` bound it (``low_open``/``high_open``: strictly); ``optional`` lets ``None`` through.
    """
    if value is None and optional:
        return None
    kind = "an int" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        raise TypeError(f"{owner}: {name} must be {kind}, got {type(value).__name__} {value!r}")
    if not integer and not math.isfinite(value):
        raise ValueError(f"{owner}: {name} must be finite, got {value!r}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        lo = "" if low is None else ("(" if low_open else "[") + f"{low}"
        hi = "" if high is None else f"{high}" + (")" if high_open else "]")
        where = f"in {lo or '(-inf'}, {hi or 'inf)'}"
        raise ValueError(f"{owner}: {name} must be {where}, got {value!r}")
    return int(value) if integer else float(value)


def check_flag(name: str, value, owner: str | None = None) -> bool:
    """``value`` if it is a bool; a string or a number (``"no"``, ``1``) would read as true."""
    if not isinstance(value, bool):
        raise TypeError(f"{owner + ': ' if owner else ''}{name} must be true or false, got {value!r}")
    return value


def check_choice(owner: str, name: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(f"{owner}: {name} must be one of {tuple(choices)}, got {value!r}")
    return value


def keyword_names(fn: Callable) -> list[str] | None:
    """The keyword arguments ``fn`` (a function or a class) takes; ``None`` if it takes any (``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a callable without a signature (a builtin): not checked here
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def some_names(names: Sequence[str], most: int = 5) -> str:
    """``names`` for a message: the first ``most``, then how many more (``"a, b and 3 more"``)."""
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def closest_name(name: str, names: Iterable[str]) -> str | None:
    """The one of ``names`` that ``name`` most likely misspells (the did-you-mean of every refusal
    of a name), or ``None``. A name that differs by look-alike characters only (``ssr_l2O`` for
    ``ssr_l20``) is that one, before difflib's likeliest."""
    names = list(names)
    alike = [n for n in names if _folded(n) == _folded(name)]
    if len(alike) == 1:
        return alike[0]
    close = difflib.get_close_matches(name, names, n=1)
    return close[0] if close else None


_LOOK_ALIKE = str.maketrans({"o": "0", "l": "1", "i": "1", "-": "_"})


def _folded(name: str) -> str:
    return name.lower().translate(_LOOK_ALIKE)


def check_keywords(owner: str, given: Iterable[str], allowed: Sequence[str] | None) -> None:
    """Raise ``TypeError`` for names in ``given`` that ``allowed`` lacks, each with the closest
    allowed name (a typo), and the list of allowed ones; ``allowed=None`` accepts any name."""
    if allowed is None:
        return
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        close = {n: closest_name(n, allowed) for n in unknown}
        hints = "".join(f" ({n!r}: did you mean {c!r}?)" for n, c in close.items() if c)
        takes = f"its arguments are {', '.join(allowed)}" if allowed else "it takes none"
        raise TypeError(f"{owner} got unexpected keyword arguments {unknown}{hints}; {takes}")
