#!/usr/bin/env bash
# Mutation testing of the search maths: mutmut (requirements-dev.txt) mutates the functions below and runs the fast
# tests named in pyproject.toml ([tool.mutmut]) against each mutant. Add a module by adding its pattern here and
# its file to only_mutate there. Prints the score; `mutmut results` lists the survivors, `mutmut show NAME` one.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGETS=(
  "pipeline.search.relax.*"
  "pipeline.search.architect.*"
  "pipeline.search.loop.x__weight_step*"
  "pipeline.training.metrics.*"
  "pipeline.search.shrink.*"  # the shrinking schedule
)
present=()
for target in "${TARGETS[@]}"; do  # a listed module not in this tree yet is left out
  file="${target%%.x*}"; file="${file%.\*}"
  [ -f "${file//.//}.py" ] && present+=("$target")
done
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
nice -n 10 mutmut run --max-children "${MUTMUT_CHILDREN:-2}" "${present[@]}" || true
python dev/mutation_score.py "${present[@]}"
