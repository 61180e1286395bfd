"""The Ray runner's scheduling on fake DAGs (pipeline.study.cluster_plan) and its per-stage Ray options."""
from pathlib import Path

import pytest

from pipeline.study.cluster_plan import StagePlan
from pipeline.study.cluster_dvc import read_graph
from pipeline.study.config import search_stage_suffix
from pipeline.study.cluster_ray import StageKilled, _exec_form, stage_kind, task_options, unschedulable
from pipeline.study.cluster_settings import ClusterError, load_cluster_settings
from pipeline.study.config import load_params

ROOT = Path(__file__).resolve().parents[1]
# The study's shape: prepare -> search@a/b -> discretize@a/b -> evaluate-searched@a/b; baselines need only prepare.
STUDY = {
    "prepare": set(),
    "search@a": {"prepare"}, "search@b": {"prepare"},
    "discretize@a": {"search@a"}, "discretize@b": {"search@b"},
    "evaluate-searched@a": {"discretize@a"}, "evaluate-searched@b": {"discretize@b"},
    "evaluate-baseline@relu": {"prepare"},
    "aggregate": {"evaluate-searched@a", "evaluate-searched@b", "evaluate-baseline@relu", "search@a", "search@b",
                  "discretize@a", "discretize@b"},
}


def test_only_stages_whose_dependencies_finished_are_ready():
    plan = StagePlan({k: set(v) for k, v in STUDY.items()})
    assert plan.ready() == ["prepare"]
    plan.start("prepare")
    assert plan.ready() == [], "a started stage is not offered again, and nothing else may start"
    plan.finish("prepare")
    assert plan.ready() == ["evaluate-baseline@relu", "search@a", "search@b"]
    plan.start("search@a")
    plan.finish("search@a")
    assert plan.ready() == ["discretize@a", "evaluate-baseline@relu", "search@b"]


def test_a_failed_stage_blocks_exactly_its_dependents_and_the_rest_finishes():
    plan = StagePlan({k: set(v) for k, v in STUDY.items()})
    for stage in ("prepare", "search@b"):
        plan.start(stage)
        plan.finish(stage)
    plan.start("search@a")
    assert plan.fail("search@a") == {"discretize@a", "evaluate-searched@a", "aggregate"}
    assert plan.ready() == ["discretize@b", "evaluate-baseline@relu"]
    for stage in ("discretize@b", "evaluate-baseline@relu", "evaluate-searched@b"):
        assert stage in plan.ready()
        plan.start(stage)
        plan.finish(stage)
    assert plan.done() and plan.ready() == []
    assert plan.finished == set(STUDY) - {"search@a", "discretize@a", "evaluate-searched@a", "aggregate"}


def test_a_diamond_waits_for_both_branches_and_a_second_failure_adds_nothing_twice():
    plan = StagePlan({"a": set(), "b": {"a"}, "c": {"a"}, "d": {"b", "c"}})
    plan.start("a")
    plan.finish("a")
    plan.start("b")
    plan.finish("b")
    assert plan.ready() == ["c"], "d still needs c"
    plan.start("c")
    assert not plan.done()
    assert plan.fail("c") == {"d"}
    assert plan.done() and plan.blocked == {"d"} and plan.failed == {"c"}


def test_a_dependency_outside_the_plan_is_an_error():
    with pytest.raises(ValueError, match="outside the plan"):
        StagePlan({"a": {"ghost"}})


@pytest.mark.parametrize("stage, kind", [("prepare", "prepare"), ("search@darts-simple", "search"),
                                         ("evaluate-baseline@relu-resnet8-0", "evaluate"),
                                         ("evaluate-searched@drnas-complex-resnet20-2", "evaluate"),
                                         ("evaluate-custom@my_fn-resnet8-0", "evaluate")])
def test_stage_kind_is_the_params_key_of_its_resources(stage, kind):
    assert stage_kind(stage) == kind


def test_task_options_drop_gpus_only_on_a_cluster_without_them():
    settings = {"max_retries": 3, "evaluate": {"num_cpus": 1.0, "num_gpus": 0.25, "resources": {"fakegpu": 1.0}}}
    with_gpus = task_options(settings, "evaluate", cluster_has_gpus=True)
    assert (with_gpus["num_gpus"], with_gpus["num_cpus"], with_gpus["resources"]) == (0.25, 1.0, {"fakegpu": 1.0})
    assert with_gpus["max_retries"] == 3 and with_gpus["retry_exceptions"] == [StageKilled]
    assert task_options(settings, "evaluate", cluster_has_gpus=False)["num_gpus"] == 0


def test_the_cluster_settings_are_checked_with_one_line_errors(tmp_path):
    base = (ROOT / "cluster.yaml").read_text()
    settings = load_cluster_settings(_write(tmp_path, base))
    assert settings.model_dump()["search"] == {"num_cpus": 2.0, "num_gpus": 1.0, "resources": {}}
    assert settings.max_retries == 2
    for wrong, key in [("evaluate: {num_cpus: 1, num_gpus: -1, resources: {}}", "evaluate.num_gpus"),
                       ("evaluate: {num_cpus: 1, num_gpus: 0, resources: {fakegpu: x}}", "evaluate.resources"),
                       ("evaluate: {num_cpus: 1, num_gpus: 0}", "evaluate.resources")]:
        text = base.replace("evaluate: {num_cpus: 1, num_gpus: 0.25, resources: {}}", wrong)
        with pytest.raises(ClusterError) as error:
            load_cluster_settings(_write(tmp_path, text))
        assert key in str(error.value) and "\n" not in str(error.value)


def _write(folder, text):
    path = folder / "cluster.yaml"
    path.write_text(text)
    return path


def test_a_simple_command_replaces_its_shell_and_a_list_keeps_it():
    assert _exec_form("python -m stages.evaluate --seed 0") == "exec python -m stages.evaluate --seed 0"
    for compound in ("python a.py && python b.py", "python a.py; python b.py", "python a.py | tee x", "(cd x)"):
        assert _exec_form(compound) == compound


def test_the_graph_comes_from_dvc_with_edges_towards_what_a_stage_needs():
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        needs, cmds = read_graph(repo, [])
        only, _ = read_graph(repo, [f"discretize@{search_stage_suffix(*_first_search())}"])
    params = load_params(ROOT / "params.yaml", check_paths=False)
    o, s, seed0 = params.search.optimizers[0], params.search.spaces[0], params.search.seeds[0]
    suffix = search_stage_suffix(o, s, seed0)  # DVC names matrix stages by their values: darts-simple-0
    assert needs["download"] == set() and needs["prepare"] == {"download"}
    assert needs[f"discretize@{suffix}"] == {"prepare", f"search@{suffix}"}  # the split, the supernet
    network, seed = params.evaluate.networks[0], params.evaluate.seeds[0]
    # One function per optimizer x space is retrained: the select stage chooses it among every search seed's.
    assert needs["select"] == {f"discretize@{search_stage_suffix(opt, space, k)}" for opt in params.search.optimizers
                               for space in params.search.spaces for k in params.search.seeds}
    assert needs[f"evaluate-searched@{o}-{s}-{network}-{seed}"] == {"prepare", "select"}
    assert needs[f"evaluate-baseline@relu-{network}-{seed}"] == {"prepare"}
    assert needs["aggregate"] == set(needs) - {"aggregate", "prepare", "download"}
    assert cmds[f"search@{suffix}"] == f"python -m stages.search --optimizer {o} --space {s} --seed {seed0}"

    # a target brings what it needs, nothing else
    assert only == {"download": set(), "prepare": {"download"}, f"search@{suffix}": {"prepare"},
                    f"discretize@{suffix}": {"prepare", f"search@{suffix}"}}


def _first_search() -> tuple[str, str, int]:
    params = load_params(ROOT / "params.yaml", check_paths=False)
    return params.search.optimizers[0], params.search.spaces[0], params.search.seeds[0]


def test_a_stage_kind_no_node_can_hold_is_named_before_anything_runs():
    """Ray would queue such a task forever (a 2-CPU search on 1-CPU nodes hung the cluster test)."""
    settings = load_cluster_settings(ROOT / "cluster.yaml").model_dump()
    nodes = [{"CPU": 1.0}, {"CPU": 1.0, "fakegpu": 1.0}]
    options = {kind: task_options(settings, kind, False) for kind in ("search", "evaluate", "prepare")}
    assert unschedulable(options, nodes) == ["search asks for {'CPU': 2.0}, and the largest node has {'CPU': 1.0}"]
    settings["evaluate"]["resources"] = {"fakegpu": 1}
    options["evaluate"] = task_options(settings, "evaluate", False)
    assert unschedulable(options, nodes[:1])[1] == ("evaluate asks for {'CPU': 1.0, 'fakegpu': 1}, and the largest "
                                                    "node has {'CPU': 1.0, 'fakegpu': 0}")
    assert unschedulable(options, [{"CPU": 2.0, "fakegpu": 1.0}]) == []  # one node holding everything
    with_gpus = {"search": task_options(settings, "search", True)}
    assert "'GPU': 1.0" in unschedulable(with_gpus, [{"CPU": 4.0}])[0]  # a GPU task needs a node with a GPU
