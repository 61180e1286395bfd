"""The params documentation, generated from the pydantic models so that the models are its one source.

- `study_schema(model)`: the model's JSON schema as the loader applies it. Every key is required (params.yaml
  must name each one), so every object lists all of its properties as `required` and no property carries a
  default: the library's own defaults (`SearchConfig`, `TrainConfig` built in code) are not the study's, whose
  values are the committed params.yaml.
- `params_table(schema)`: that schema as Markdown, one table per params.yaml section, one row per leaf key with
  its type and allowed values (bounds, choices, nullability) and its description.
"""
from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

TABLE_HEADER = ("<!-- Generated from the pydantic models of pipeline/study/config.py: do not edit by hand. Rewrite "
                "it with `python -m pipeline.study.config --table docs/params.md` (tests/test_params_docs.py "
                "checks that it is current). -->\n")


def study_schema(model: type[BaseModel]) -> dict:
    """The JSON schema of `model` with every property required and no defaults (see the module docstring)."""
    schema = model.model_json_schema()
    for definition in [schema, *schema.get("$defs", {}).values()]:
        properties = definition.get("properties")
        if properties is None:
            continue
        for prop in properties.values():
            prop.pop("default", None)
        definition["required"] = list(properties)
    return schema


def leaf_keys(schema: dict) -> list[tuple[str, dict]]:
    """Every leaf key of the schema as (dotted key, its property schema), in the models' order."""
    return list(_leaves(schema, schema, ""))


def _leaves(root: dict, node: dict, prefix: str):
    for name, prop in node["properties"].items():
        target = _resolve(root, prop)
        if "properties" in target:
            yield from _leaves(root, target, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", prop


def _resolve(root: dict, prop: dict) -> dict:
    ref = prop.get("$ref")
    return root["$defs"][ref.rsplit("/", 1)[1]] if ref else prop


def describe_type(prop: dict) -> str:
    """A property's type and allowed values in words, e.g. `integer >= 1`, `number > 0 or null`."""
    if "anyOf" in prop:
        kinds = [describe_type(option) for option in prop["anyOf"] if option.get("type") != "null"]
        nullable = any(option.get("type") == "null" for option in prop["anyOf"])
        return " or ".join(kinds + (["null"] if nullable else []))
    if "enum" in prop:
        return " | ".join(f"`{value if isinstance(value, str) else json.dumps(value)}`" for value in prop["enum"])
    kind = prop.get("type", "any")
    if kind == "array":
        return _describe_array(prop)
    if kind == "object":
        values = prop.get("additionalProperties")
        return f"mapping of names to {describe_type(values)}" if isinstance(values, dict) else "mapping"
    if kind == "string":
        kind = "non-empty string" if prop.get("minLength") else "string"
        return f"{kind} matching `{prop['pattern']}`" if "pattern" in prop else kind
    return " ".join([kind, *_bounds(prop)])


def _describe_array(prop: dict) -> str:
    if "prefixItems" in prop:
        return "[" + ", ".join(describe_type(item) for item in prop["prefixItems"]) + "]"
    words = f"list of ({describe_type(prop.get('items', {}))})"
    if prop.get("minItems"):
        words += f", at least {prop['minItems']}"
    return words


def _bounds(prop: dict) -> list[str]:
    bounds = [f"{symbol} {_number(prop[key])}" for key, symbol in
              (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<"))
              if key in prop]
    return [", ".join(bounds)] if bounds else []


def _number(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) and abs(value) >= 10_000 else str(value)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def params_table(schema: dict) -> str:
    """The schema's leaf keys as Markdown tables, one per top-level section."""
    lines = [TABLE_HEADER, "# params.yaml, key by key", "",
             "Every key is required and checked before any work (`python -m pipeline.study.config [file]`); the "
             "committed `params.yaml` is the default study and `presets/` holds the others. The same models give "
             "[params.schema.json](params.schema.json) for editors.", ""]
    for section, prop in schema["properties"].items():
        target = _resolve(schema, prop)
        lines += [f"## `{section}`", ""]
        if target.get("description"):
            lines += [_cell(target["description"]), ""]
        lines += ["| key | type and allowed values | meaning |", "|---|---|---|"]
        for key, leaf in _leaves(schema, target, f"{section}."):
            lines.append(f"| `{key}` | {_cell(describe_type(leaf))} | {_cell(_meaning(leaf))} |")
        lines.append("")
    return "\n".join(lines)


def _meaning(prop: dict) -> str:
    """The description, with the list item's own description where the list has one (e.g. evaluate.custom)."""
    items = prop.get("items", {})
    parts = [prop.get("description", ""), items.get("description", "") if isinstance(items, dict) else ""]
    return "; ".join(part for part in parts if part)
