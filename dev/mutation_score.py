"""The mutation score of the given mutant-name patterns, from `mutmut results --all true` (after `mutmut run`)."""
import fnmatch
import subprocess
import sys
from collections import Counter


def main(patterns: list[str]) -> None:
    out = subprocess.run(["mutmut", "results", "--all", "true"], capture_output=True, text=True, check=True).stdout
    statuses = {}
    for line in out.splitlines():
        name, _, status = line.strip().rpartition(": ")
        if name and any(fnmatch.fnmatch(name, p) for p in patterns):
            statuses[name] = status
    counts = Counter(statuses.values())
    tested = sum(n for s, n in counts.items() if s not in ("not checked", "skipped"))
    print(f"mutants: {len(statuses)}; " + ", ".join(f"{s} {n}" for s, n in sorted(counts.items())))
    if tested:
        print(f"score: {100 * counts['killed'] / tested:.1f}% killed of {tested} tested")
    for name, status in sorted(statuses.items()):
        if status != "killed":
            print(f"  {status}: {name}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["*"])
