"""Read params files as DVC reads them: YAML 1.2 numbers.

PyYAML implements YAML 1.1, whose floats need a dot and a signed exponent: `1e-3` and `1.0e3` are strings
there, so a hand-written `arch_lr: 1e-3` would be refused as "not a number". DVC reads params.yaml with
ruamel.yaml (YAML 1.2), where both are floats, and so do its `-S` overrides. `ParamsLoader` is PyYAML's safe
loader plus the YAML 1.2 float forms that YAML 1.1 lacks, so the study and DVC see the same values.
"""
from __future__ import annotations

import re
from typing import Any

import yaml

FLOAT_TAG = "tag:yaml.org,2002:float"
# YAML 1.2 core schema floats with an exponent, dot optional, exponent sign optional: 1e-3, 1E3, 2.5e+2, .5e-1.
EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$")


class ParamsLoader(yaml.SafeLoader):
    """yaml.SafeLoader that also reads YAML 1.2's exponent floats (`1e-3`) as numbers."""


ParamsLoader.add_implicit_resolver(FLOAT_TAG, EXPONENT_FLOAT, list("-+0123456789."))


def load_yaml(text: str) -> Any:
    """Parse one YAML document with `ParamsLoader`."""
    return yaml.load(text, Loader=ParamsLoader)  # noqa: S506 - a SafeLoader subclass
