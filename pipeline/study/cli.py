"""`actsearch`: the study's command line (installed by `pip install -e .`; also `python -m pipeline.study.cli`).

- `actsearch check [file]`: validate a params file (default params.yaml) without running anything; a mistake is
  one line naming the file, the key, the value and what is allowed.
- `actsearch schema`: rewrite docs/params.schema.json and docs/params.md from the pydantic models.

The pipeline itself runs with `dvc repro`; the optional Ray runner with `python -m pipeline.study.cluster`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.study.config import (
    SCHEMA_FILE, TABLE_FILE, ParamsError, json_schema, load_params, params_markdown, summary,
)


def check(file: str | Path) -> str:
    """One line describing a valid params file; a ParamsError for an invalid one. Paths are relative to the working
    directory (the project root), as in params.yaml, also for a preset."""
    return summary(file, load_params(file, root=Path.cwd()))


def write_docs(schema_file: str | Path = SCHEMA_FILE, table_file: str | Path = TABLE_FILE) -> list[Path]:
    """Write the JSON schema and the Markdown params table; return the files written."""
    written = []
    for path, text in ((schema_file, json_schema()), (table_file, params_markdown())):
        if path:
            Path(path).write_text(text)
            written.append(Path(path))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="actsearch", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check_command = commands.add_parser("check", help="validate a params file without running anything")
    check_command.add_argument("file", nargs="?", default="params.yaml")
    schema_command = commands.add_parser("schema", help="rewrite the params schema and table from the models")
    schema_command.add_argument("--schema", default=SCHEMA_FILE, metavar="OUT", help=f"default {SCHEMA_FILE}")
    schema_command.add_argument("--table", default=TABLE_FILE, metavar="OUT", help=f"default {TABLE_FILE}")
    args = parser.parse_args(argv)
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
