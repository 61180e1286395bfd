"""How long a stage takes to refuse an unreachable MLflow server (the check runs before any work; it must not hang).

python dev/unreachable_store.py [URI]   prints the seconds; exit status 1 above --limit (default 10 s).
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.study.tracking_store import TrackingError, check_tracking  # noqa: E402


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("uri", nargs="?", default="http://127.0.0.1:9")
    parser.add_argument("--limit", type=float, default=10.0)
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        check_tracking(args.uri)
    except TrackingError as error:
        seconds = time.monotonic() - started
        print(f"{args.uri}: refused in {seconds:.2f} s ({error})")
    else:
        sys.exit(f"{args.uri} is reachable; give an unreachable URI")
    if seconds > args.limit:
        sys.exit(f"slower than the {args.limit} s limit")
    return seconds


if __name__ == "__main__":
    main()
