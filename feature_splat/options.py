"""Checks of configuration values where they enter (command-line flags, config fields).

Config dataclasses call these from ``__post_init__``, so a value is checked whether it comes from
the command line, from Python or from a stored ``config.json``. Errors are :class:`ConfigError`s
that name the flag (``--lr.means``) and say what was expected. This module imports no heavy
package, so the command line can build its parser quickly.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

from feature_splat.errors import CheckpointError, ConfigError


def flag(name: str) -> str:
    """The command-line flag of config field ``name`` (``lr.means_final`` -> ``--lr.means-final``)."""
    return "--" + name.replace("_", "-")


def is_int(value: Any) -> bool:
    """Whether ``value`` is a whole number (an int, not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(value: Any, name: str, minimum: int = 0, maximum: int | None = None) -> None:
    """``value`` is a whole number in ``[minimum, maximum]``."""
    limit = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
    if not is_int(value) or value < minimum or (maximum is not None and value > maximum):
        raise ConfigError(f"{flag(name)}: expected a whole number {limit}, got {value!r}")


def check_float(
    value: Any,
    name: str,
    minimum: float | None = None,
    maximum: float | None = None,
    *,
    positive: bool = False,
) -> None:
    """``value`` is a finite number, ``> 0`` when ``positive``, within the given bounds."""
    number = value if isinstance(value, int | float) and not isinstance(value, bool) else None
    try:
        ok = number is not None and math.isfinite(number)
    except OverflowError:  # an int beyond the float range
        ok = False
    ok = ok and not (positive and number <= 0)
    ok = ok and (minimum is None or number >= minimum) and (maximum is None or number <= maximum)
    if not ok:
        bounds = [
            "> 0" if positive else "",
            f">= {minimum}" if minimum is not None else "",
            f"<= {maximum}" if maximum is not None else "",
        ]
        wanted = " and ".join(b for b in bounds if b)
        raise ConfigError(
            f"{flag(name)}: expected a finite number{' ' + wanted if wanted else ''}, got {value!r}"
        )


def check_choice(value: Any, name: str, choices: Collection[str]) -> None:
    """``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{flag(name)}: expected one of {', '.join(choices)}, got {value!r}")


def check_text(value: Any, name: str) -> None:
    """``value`` is a string with something in it besides white space."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{flag(name)}: expected a non-empty text, got {value!r}")


def check_seed(value: Any, name: str = "seed") -> None:
    """``value`` is a seed torch accepts: a whole number in ``0 .. 2**63 - 1``."""
    check_int(value, name, 0, 2**63 - 1)


def refuse_changed_settings(
    source: str, stored: dict[str, Any], wanted: dict[str, Any], may_change: tuple[str, ...]
) -> None:
    """Raise a CheckpointError naming every setting (other than ``may_change``) whose value in
    ``wanted`` differs from the one stored in ``source`` (resuming a run with other settings
    would train the old state on something else)."""
    changed = sorted(k for k in wanted if k not in may_change and stored.get(k) != wanted[k])
    if changed:
        details = "; ".join(f"{k}: {stored.get(k)!r} -> {wanted[k]!r}" for k in changed[:4])
        more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
        raise CheckpointError(
            f"{source}: --resume with other settings than the run was started with ({details}"
            f"{more}); only {', '.join(may_change)} may change"
        )
