"""Which stages of a DAG may start now: the scheduling state of the Ray runner (`pipeline.study.cluster`).

Pure bookkeeping on stage names, so it is tested on fake DAGs: `needs` maps every stage to the stages it depends
on (DVC's graph, read by the runner). A stage is *ready* when all it needs is finished (run or found up to date)
and it is neither started nor finished; a stage that fails for good *blocks* every stage downstream of it, while
independent stages go on, as `dvc repro --keep-going` does.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StagePlan:
    needs: dict[str, set[str]]  # stage -> the stages whose outputs it depends on
    finished: set[str] = field(default_factory=set)  # ran and committed, or up to date
    started: set[str] = field(default_factory=set)  # submitted and not finished yet
    failed: set[str] = field(default_factory=set)
    blocked: set[str] = field(default_factory=set)  # downstream of a failed stage: never started

    def __post_init__(self) -> None:
        unknown = {need for needs in self.needs.values() for need in needs} - set(self.needs)
        if unknown:
            raise ValueError(f"stages depend on stages outside the plan: {sorted(unknown)}")

    def ready(self) -> list[str]:
        """Stages that may start now, in a stable (sorted) order."""
        taken = self.finished | self.started | self.failed | self.blocked
        return sorted(stage for stage, needs in self.needs.items()
                      if stage not in taken and needs <= self.finished)

    def start(self, stage: str) -> None:
        self.started.add(stage)

    def finish(self, stage: str) -> None:
        self.started.discard(stage)
        self.finished.add(stage)

    def fail(self, stage: str) -> set[str]:
        """Record a stage that failed for good; returns the stages it blocks (all its dependents, transitively)."""
        self.started.discard(stage)
        self.failed.add(stage)
        newly = self.dependents(stage) - self.blocked - self.finished
        self.blocked |= newly
        return newly

    def dependents(self, stage: str) -> set[str]:
        found, frontier = set(), {stage}
        while frontier:
            frontier = {other for other, needs in self.needs.items() if needs & frontier} - found
            found |= frontier
        return found

    def done(self) -> bool:
        """Nothing is running and nothing more can start."""
        return not self.started and not self.ready()
