"""Value checks for params.yaml: each takes (key, value), returns the normalized value or raises ParamsError.

Every message is one line naming the key, the bad value and what is allowed, e.g.
`params.yaml: evaluate.epochs = -3 is invalid; allowed: an integer >= 1`. Used by `pipeline.study.config`.
"""
from __future__ import annotations

import math
from typing import Any, Callable


class ParamsError(ValueError):
    """params.yaml is wrong; the message is one line that says where, what and what is allowed."""


def bad(key: str, value: Any, allowed: str) -> ParamsError:
    return ParamsError(f"params.yaml: {key} = {value!r} is invalid; allowed: {allowed}")


Check = Callable[[str, Any], Any]


def integer(minimum: int) -> Check:
    def check(key, value):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise bad(key, value, f"an integer >= {minimum}")
        return value
    return check


def number(low: float, high: float = math.inf, low_open: bool = False, high_open: bool = True) -> Check:
    above = f"> {low:g}" if low_open else f">= {low:g}"
    allowed = f"a number {above}" + ("" if high == math.inf else f" and {'<' if high_open else '<='} {high:g}")

    def check(key, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise bad(key, value, allowed)
        ok_low = value > low if low_open else value >= low
        ok_high = value < high if high_open else value <= high
        if not (ok_low and ok_high):
            raise bad(key, value, allowed)
        return float(value)
    return check


def choice(options) -> Check:
    options = sorted(options)

    def check(key, value):
        if value not in options:
            raise bad(key, value, f"one of {options}")
        return value
    return check


def boolean(key, value):
    if not isinstance(value, bool):
        raise bad(key, value, "true or false")
    return value


def text(key, value):
    if not isinstance(value, str) or not value.strip():
        raise bad(key, value, "a non-empty string")
    return value


def optional(inner: Check) -> Check:
    return lambda key, value: None if value is None else inner(key, value)


def list_of(inner: Check, allow_empty: bool = False) -> Check:
    def check(key, value):
        if not isinstance(value, list) or (not value and not allow_empty):
            raise bad(key, value, "a list" + ("" if allow_empty else " with at least one entry"))
        items = [inner(f"{key}[{i}]", item) for i, item in enumerate(value)]
        if len(set(map(repr, items))) != len(items):
            raise bad(key, value, "a list without repeated entries")
        return tuple(items)
    return check
