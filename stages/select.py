"""Stage `select`: per optimizer x space, the one found function (of its search seeds) that is retrained.

The rule is fixed in pipeline.analysis.selection (depth check not flagged, then the best discretized validation
top-1, then the lowest seed): it reads only what the searches measured. Writes results/select/<optimizer>-<space>/:
genotype.json (what evaluate-searched retrains), discretize.json (the chosen seed's, with `search_seed`) and
selection.json (the rule, every seed's function and search numbers, the spread over seeds).
"""
from __future__ import annotations

import argparse
import json

from pipeline.analysis.selection import selection_record
from pipeline.space.genotype import Genotype, GenotypeError
from pipeline.study.config import search_stage_suffix, searched_name
from stages.common import RESULTS, log, run, start, write_json

STAGE = "select"


def main(argv: list[str]) -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    params = start(STAGE)
    search = params.search
    for optimizer in search.optimizers:
        for space in search.spaces:
            found = {seed: RESULTS / "discretize" / searched_name(optimizer, space, seed) for seed in search.seeds}
            missing = [str(path) for path in found.values() if not (path / "discretize.json").is_file()]
            if missing:
                raise SystemExit(f"error: {missing[0]}/discretize.json is missing; run the discretize stages first "
                                 "(dvc repro)")
            record = selection_record(optimizer, space, {seed: json.loads((path / "discretize.json").read_text())
                                                         for seed, path in found.items()})
            chosen = found[record["search_seed"]]
            out = RESULTS / "select" / f"{optimizer}-{space}"
            out.mkdir(parents=True, exist_ok=True)
            try:  # checked here, so a broken file names the stage that wrote it
                genotype = Genotype.load(chosen / "genotype.json")
            except GenotypeError as error:
                raise GenotypeError(f"{error}; rerun its discretize stage: dvc repro -f discretize@"
                                    f"{search_stage_suffix(optimizer, space, record['search_seed'])}") from None
            genotype.save(out / "genotype.json")
            write_json(out / "discretize.json", json.loads((chosen / "discretize.json").read_text())
                       | {"search_seed": record["search_seed"]})
            write_json(out / "selection.json", record)
            log.info("%s-%s: search seed %d of %d, %s (%d distinct functions; %d flagged by the depth check)",
                     optimizer, space, record["search_seed"], len(found),
                     next(c["formula"] for c in record["candidates"] if c["selected"]),
                     record["spread"]["distinct_functions"], record["spread"]["depth_flagged"])


if __name__ == "__main__":
    run(main, GenotypeError)
