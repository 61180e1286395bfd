"""`actsearch`: the study's command line (installed by `pip install -e .`; also `python -m pipeline.study.cli`).

- `actsearch check [file]`: validate a params file (default params.yaml) without running anything; a mistake is
  one line naming the file, the key, the value and what is allowed.
- `actsearch schema`: rewrite docs/params.schema.json and docs/params.md from the pydantic models.
- `actsearch preset NAME`: write presets/NAME.yaml's keys into params.yaml (comments kept; pipeline.study.presets);
  `actsearch preset NAME --check` validates the study it would give without writing.

The pipeline itself runs with `dvc repro`; the optional Ray runner with `python -m pipeline.study.cluster`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.study.config import (
    SCHEMA_FILE, TABLE_FILE, ParamsError, json_schema, load_params, params_markdown, summary,
)
from pipeline.study.presets import PRESETS_DIR, apply_preset, load_preset


def check(file: str | Path) -> str:
    """One line describing a valid params file; a ParamsError for an invalid one. Paths are relative to the working
    directory (the project root), as in params.yaml, also for a preset (presets/*.yaml: applied to params.yaml)."""
    if Path(file).resolve().parent == (Path.cwd() / PRESETS_DIR).resolve():
        return summary(file, load_preset(file, Path("params.yaml")))
    return summary(file, load_params(file, root=Path.cwd()))


def write_docs(schema_file: str | Path = SCHEMA_FILE, table_file: str | Path = TABLE_FILE) -> list[Path]:
    """Write the JSON schema and the Markdown params table; return the files written."""
    written = []
    for path, text in ((schema_file, json_schema()), (table_file, params_markdown())):
        if path:
            Path(path).write_text(text)
            written.append(Path(path))
    return written


def preset(name: str, params_file: Path, check_only: bool) -> int:
    try:
        if check_only:
            print(summary(name, load_preset(name, params_file, check_paths=False)))
            return 0
        changed = apply_preset(name, params_file)
    except ParamsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{params_file}: preset {name} set {len(changed)} keys ({', '.join(changed) or 'none changed'}); "
          "`git checkout params.yaml` restores the default study")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="actsearch", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check_command = commands.add_parser("check", help="validate a params file without running anything")
    check_command.add_argument("file", nargs="?", default="params.yaml")
    schema_command = commands.add_parser("schema", help="rewrite the params schema and table from the models")
    schema_command.add_argument("--schema", default=SCHEMA_FILE, metavar="OUT", help=f"default {SCHEMA_FILE}")
    schema_command.add_argument("--table", default=TABLE_FILE, metavar="OUT", help=f"default {TABLE_FILE}")
    preset_command = commands.add_parser("preset", help="write a preset's keys into params.yaml (comments kept)")
    preset_command.add_argument("name", help="a preset (presets/<name>.yaml) or a preset file")
    preset_command.add_argument("--params", default="params.yaml", help="the params file to change")
    preset_command.add_argument("--check", action="store_true", help="validate the composed study, write nothing")
    args = parser.parse_args(argv)
    if args.command == "preset":
        return preset(args.name, Path(args.params), args.check)
    if args.command == "schema":
        for path in write_docs(args.schema, args.table):
            print(f"wrote {path}")
        return 0
    try:
        print(check(args.file))
    except ParamsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
