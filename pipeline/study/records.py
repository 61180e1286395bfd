"""Nested records as flat, dotted keys: the column names of the CSV outputs and the MLflow metric/param names."""
from __future__ import annotations


def flatten(data: dict, prefix: str = "") -> dict[str, object]:
    """{"w": {"u1": {"relu": .3}}} -> {"w.u1.relu": .3}"""
    flat: dict[str, object] = {}
    for key, value in data.items():
        flat.update(flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return flat
