"""The DVC side of the Ray runner (`pipeline.study.cluster`): the project's repo, locked for the whole run.

`dvc repro` holds DVC's repo lock (`.dvc/tmp/lock`) from start to end, so no second DVC process writes the same
outputs, checkpoints or dvc.lock meanwhile. The runner does the same: it takes that very lock before it reads the
graph and keeps it until its last commit. A `dvc repro`, `dvc commit`, ... started meanwhile stops with DVC's own
"Unable to acquire lock" line, and a second runner stops with one line of its own. Every DVC call of the run goes
through the one locked `Repo` (DVC's lock is re-entrant within a repo object, not across two of them).
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from dvc.lock import LockError
from dvc.repo import Repo, lock_repo

LOCK_HELD = ("error: another `dvc repro` or Ray runner is working on this project (DVC's lock {lock} is held); "
             "wait for it to end, then rerun")


def read_graph(repo: Repo, targets: list[str]) -> tuple[dict[str, set[str]], dict[str, str]]:
    """DVC's stage graph, restricted to the targets and what they depend on: (needs, stage -> cmd)."""
    graph = repo.index.graph  # an edge points from a stage to a stage whose output it uses
    chosen = set(graph.nodes)
    if targets:
        wanted = [stage for target in targets for stage in repo.stage.collect(target)]
        chosen = set().union(*(_downward(graph, stage) for stage in wanted))
    runnable = {stage for stage in chosen if stage.cmd}  # .dvc data sources have nothing to run
    needs = {stage.addressing: {dep.addressing for dep in graph.successors(stage) if dep in runnable}
             for stage in runnable}
    return needs, {stage.addressing: stage.cmd for stage in runnable}


def _downward(graph, stage) -> set:
    found, frontier = {stage}, [stage]
    while frontier:
        for dep in graph.successors(frontier.pop()):
            if dep not in found:
                found.add(dep)
                frontier.append(dep)
    return found


class LockedProject:
    """The project's DVC repo while this process holds its lock; each method sees dvc.yaml and dvc.lock afresh."""

    def __init__(self, repo: Repo) -> None:
        self.repo = repo

    def _fresh(self) -> Repo:
        # DVC drops its cached index when it releases the lock; the runner keeps the lock across commits, so it
        # drops the cache itself before each look, or a later check would compare against a dvc.lock already
        # rewritten.
        self.repo._reset()
        return self.repo

    def graph(self, targets: list[str]) -> tuple[dict[str, set[str]], dict[str, str]]:
        return read_graph(self._fresh(), targets)

    def stale(self, targets: list[str]) -> dict:
        """`dvc status` of the targets and everything upstream of them: empty when nothing would run."""
        return self._fresh().status(targets=targets or None, with_deps=True)

    def prepare_if_changed(self, name: str) -> bool:
        """True, with its outputs removed as `dvc repro` does before a run, if DVC finds the stage changed."""
        (stage,) = self._fresh().stage.collect(name)
        if stage.frozen or not stage.changed():
            return False
        stage.remove_outs(ignore_remove=False, force=False)
        return True

    def commit(self, name: str) -> None:
        """Record the finished stage as `dvc commit --force <stage>` does (cache, run cache, dvc.lock entry)."""
        self._fresh().commit(name, force=True)


@contextmanager
def locked_project(root: Path) -> Iterator[LockedProject]:
    """Hold DVC's repo lock of the project at `root` while the block runs; one line and exit if it is taken."""
    with Repo(str(root)) as repo:
        try:
            held = lock_repo(repo)
            held.__enter__()
        except LockError:
            raise SystemExit(LOCK_HELD.format(lock=Path(repo.tmp_dir).relative_to(root) / "lock")) from None
        try:
            yield LockedProject(repo)
        finally:
            held.__exit__(None, None, None)
