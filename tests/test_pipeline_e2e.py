"""End to end: the real `dvc repro` on a copy of the project with the CI preset and real CIFAR-10 images.

Checks the results table, the DVC metric, the MLflow runs (tags, metrics, artifacts), a logged MLflow model that
loads and computes what the saved weights compute, the registered best searched network, that a second `dvc repro`
runs nothing, and a DVC experiment: `dvc exp run -S evaluate.epochs=...` reruns only the evaluate stages and
aggregate, `dvc exp show` lists it with its metrics and `dvc metrics diff` shows the change. A custom
activation, 1e6 * x, diverges inside the pipeline: its status reaches the metric, MLflow and the table while the
other rows stay complete (issue 6).
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline.study.presets import apply_preset

from pipeline.study.tracking import GROUP_TAG
from tests.conftest import SHARED_ARCHIVE

ROOT = Path(__file__).resolve().parents[1]
EXPLODING = {"space": "simple", "ops": {"u1": "scale", "u2": "zero", "b1": "left"}, "betas": {"u1": 1.0e6}}
GIT = ["git", "-c", "user.name=e2e", "-c", "user.email=e2e@example.invalid", "-c", "commit.gpgsign=false"]


def project_files() -> list[str]:
    """Tracked files plus untracked, not ignored ones: what a fresh clone of the current work would hold."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    return sorted(name for name in set(listed) if (ROOT / name).is_file())


def copy_project(destination: Path) -> Path:
    for name in project_files():
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    (destination / "dvc.lock").unlink(missing_ok=True)  # a fresh study: no earlier state
    subprocess.run(["git", "init", "-q"], cwd=destination, check=True)
    subprocess.run(["git", "add", "-A"], cwd=destination, check=True)
    subprocess.run(GIT + ["commit", "-qm", "e2e copy"], cwd=destination, check=True)
    return destination


def dvc(project: Path, *args: str) -> str:
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    env.update(MLFLOW_DISABLE_TELEMETRY="true", DVC_NO_ANALYTICS="true", ACTSEARCH_CIFAR10=str(SHARED_ARCHIVE),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
               # Compiling the fused search cell costs more than these few steps take; eager is the same math.
               ACTSEARCH_FUSED="eager", GIT_AUTHOR_NAME="e2e", GIT_AUTHOR_EMAIL="e2e@example.invalid",
               GIT_COMMITTER_NAME="e2e", GIT_COMMITTER_EMAIL="e2e@example.invalid")  # dvc exp commits
    done = subprocess.run([str(Path(sys.executable).parent / "dvc"), *args], cwd=project, env=env,
                          capture_output=True, text=True, timeout=1800)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"dvc {' '.join(args)} failed:\n{output[-6000:]}"
    return output


def ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def edit_params(project: Path, change) -> None:
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    change(params)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.mark.slow
def test_dvc_repro_runs_tracks_and_reruns_only_what_changed(tmp_path, shared_archive):
    project = copy_project(tmp_path / "project")
    apply_preset("ci", project / "params.yaml")
    (project / "activations").mkdir()
    (project / "activations" / "exploding.json").write_text(json.dumps(EXPLODING))

    def ci_params(params):  # the data: the shared archive through the offline setting (dvc() sets it)
        params["evaluate"]["custom"] = ["exploding"]
    edit_params(project, ci_params)

    first = dvc(project, "repro")
    params = yaml.safe_load((project / "params.yaml").read_text())
    # Found functions are <optimizer>-<space>-s<seed>; DVC names their stages from the matrix values. One per
    # optimizer x space, <optimizer>-<space>, is retrained: the select stage's choice among the search seeds.
    search_runs = [(o, s, seed) for o in params["search"]["optimizers"] for s in params["search"]["spaces"]
                   for seed in params["search"]["seeds"]]
    assert len(params["search"]["seeds"]) >= 2, "the CI preset exercises the select stage's choice"
    found = [f"{o}-{s}-s{seed}" for o, s, seed in search_runs]
    suffixes = {f"{o}-{s}-s{seed}": f"{o}-{s}-{seed}" for o, s, seed in search_runs}
    searched = list(dict.fromkeys(f"{o}-{s}" for o, s, _ in search_runs))
    networks, seeds = params["evaluate"]["networks"], params["evaluate"]["seeds"]
    activations = ["relu", "swish", *searched, "exploding"]
    evaluate_stages = {f"evaluate-{origin}@{name}-{network}-{seed}" for name, origin in
                       [("relu", "baseline"), ("swish", "baseline"), ("exploding", "custom")]
                       + [(name, "searched") for name in searched] for network in networks for seed in seeds}
    all_stages = ({"download", "prepare", "select", "aggregate"} | {f"search@{suffixes[n]}" for n in found}
                  | {f"discretize@{suffixes[n]}" for n in found} | evaluate_stages)
    assert (project / "results" / "search" / found[0] / "supernet.pt").is_file()
    assert ran_stages(first) == all_stages
    # The retrained genotype is the chosen seed's discretized one, and the report lists every seed's function.
    for name in searched:
        selection = json.loads((project / "results" / "select" / name / "selection.json").read_text())
        assert [c["search_seed"] for c in selection["candidates"]] == params["search"]["seeds"]
        chosen = project / "results" / "discretize" / f"{name}-s{selection['search_seed']}" / "genotype.json"
        retrained = project / "results" / "evaluate" / name / networks[0] / f"seed{seeds[0]}" / "genotype.json"
        assert json.loads(retrained.read_text()) == json.loads(chosen.read_text())

    # The table: a row per activation; every row has numbers except the diverging one, which shows its status.
    table = pd.read_csv(project / "reports" / "results.csv").set_index("activation")
    assert set(table.index) == set(activations) and table.index[-1] == "exploding"  # failures rank last
    for network in networks:
        column = f"{network}_top1_mean"
        assert table.loc[activations[:-1], column].between(10, 100).all(), table[[column, f"{network}_status"]]
        assert pd.isna(table.loc["exploding", column])
        assert table.loc["exploding", f"{network}_status"] == f"diverged {len(seeds)}/{len(seeds)}"
    assert table.loc[searched, "supernet_val_top1"].notna().all()
    assert table.loc[searched, "depth_check"].str.match(r"(ok|flagged) \(x").all()  # the discretize stage's verdict
    markdown = (project / "reports" / "results.md").read_text()
    assert "| exploding | custom |" in markdown and "diverged" in markdown
    assert all(f"| {name} | {seed} |" in markdown for name in searched for seed in params["search"]["seeds"])
    summary = json.loads((project / "reports" / "summary.json").read_text())
    total = len(networks) * len(seeds)
    assert summary["activations"]["exploding"]["verdict"] == f"failed {len(seeds)}/{len(seeds)}"
    assert summary["activations"]["exploding"]["failures"] == total
    assert (summary["activations"]["relu"]["verdict"], summary["activations"]["relu"]["failures"]) == ("reference", 0)
    metrics_shown = dvc(project, "metrics", "show", "--json")
    assert f"failed {len(seeds)}/{len(seeds)}" in metrics_shown
    assert (project / "reports" / "figures" / "activations.png").is_file()
    prepared = json.loads((project / "data" / "prepared" / "prepared.json").read_text())
    assert prepared["data"] == "CIFAR-10 (JPEG q75 copy)"  # the report names the data it ran on
    assert not list((project / "checkpoints").glob("*.pt")), "checkpoints are deleted after success"

    check_mlflow(project, params["study"]["experiment"], all_stages, search_runs)

    second = dvc(project, "repro")
    assert not ran_stages(second), second
    assert "up to date" in second or "didn't change" in second

    # Reproducible: a forced rerun of a search and of a retraining writes the same DVC outputs (dvc.lock's hashes
    # of every file); wall times and model URIs went to results/runs, which is no stage's output.
    before = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    rerun = [f"search@{suffixes[found[0]]}", f"evaluate-baseline@relu-{networks[0]}-{seeds[0]}"]
    for stage in rerun:
        assert ran_stages(dvc(project, "repro", "-f", "-s", stage)) == {stage}
    after = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    for stage in rerun:
        assert after[stage]["outs"] == before[stage]["outs"], stage
    record = project / "results" / "runs" / "evaluate" / "relu" / networks[0] / f"seed{seeds[0]}.json"
    assert json.loads(record.read_text())["model_uri"].startswith("models:/")

    # A DVC experiment against the committed study: only the stages that read the changed param rerun.
    subprocess.run(GIT + ["add", "-A"], cwd=project, check=True)
    subprocess.run(GIT + ["commit", "-qm", "baseline study"], cwd=project, check=True)
    epochs = params["evaluate"]["epochs"] - 1
    experiment = dvc(project, "exp", "run", "-n", "shorter", "-S", f"evaluate.epochs={epochs}")
    assert ran_stages(experiment) == evaluate_stages | {"aggregate"}
    shown = json.loads(dvc(project, "exp", "show", "--json"))
    found = [exp["revs"][0] for entry in shown for exp in (entry.get("experiments") or [])
             if exp["revs"][0].get("name") == "shorter"]
    assert len(found) == 1, shown
    data = found[0]["data"]
    assert data["params"]["params.yaml"]["data"]["evaluate"]["epochs"] == epochs
    assert "relu" in data["metrics"]["reports/summary.json"]["data"]["activations"]
    diff = json.loads(dvc(project, "metrics", "diff", "--json"))["reports/summary.json"]
    changed = {key for key, entry in diff.items() if entry.get("diff")}
    assert "activations.relu.top1" in changed, diff
    # dvc plots diff overlays a curve of the committed study and of the experiment (tidy CSV, x/y plots).
    plots = json.loads(dvc(project, "plots", "diff", "HEAD", "shorter", "--json"))["data"]
    [relu] = plots[f"reports/curves/train_loss/{networks[0]}/relu.csv"]
    values = relu["content"]["data"]["values"]
    assert {row["rev"] for row in values} == {"HEAD", "shorter"}
    assert sorted(int(row["epoch"]) for row in values if row["rev"] == "shorter") == list(range(1, epochs + 1))
    # The experiment's MLflow runs nest under their own parent, named by the DVC experiment.
    from mlflow import MlflowClient
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    ids = [client.get_experiment_by_name(params["study"]["experiment"]).experiment_id]
    tagged = client.search_runs(ids, filter_string="tags.dvc_exp_name = 'shorter'", max_results=500)
    [exp_parent] = [run for run in tagged if GROUP_TAG in run.data.tags]
    children = [run for run in tagged if run.data.tags.get("mlflow.parentRunId") == exp_parent.info.run_id]
    assert {run.info.run_name for run in children} == evaluate_stages | {"aggregate"} and len(tagged) == len(
        children) + 1


def check_mlflow(project: Path, experiment: str, stages: set[str], search_runs: list[tuple]) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment)
    assert found is not None, "the runs go to the project's default SQLite store"
    every = client.search_runs([found.experiment_id], max_results=500)
    [parent] = [run for run in every if GROUP_TAG in run.data.tags]  # one study: one parent run
    runs = {run.info.run_name: run for run in every if GROUP_TAG not in run.data.tags}
    assert set(runs) == stages - {"download", "select"}  # neither logs to MLflow (the retrainings tag the choice)
    assert parent.data.tags["dvc_exp_name"] == "workspace"
    assert {run.data.tags["mlflow.parentRunId"] for run in runs.values()} == {parent.info.run_id}
    for name, run in runs.items():
        assert run.info.status == "FINISHED" and run.data.tags["stage"] == name
        assert re.fullmatch(r"[0-9a-f]{40}", run.data.tags["git_commit"])

    optimizer, space, search_seed = search_runs[0]
    search = runs[f"search@{optimizer}-{space}-{search_seed}"]
    assert (search.data.tags["optimizer"], search.data.tags["space"]) == (optimizer, space)
    assert search.data.tags["search_seed"] == str(search_seed)
    retrained = next(run for name, run in runs.items() if name.startswith(f"evaluate-searched@{optimizer}-{space}"))
    assert retrained.data.tags["activation"] == f"{optimizer}-{space}"
    chosen = json.loads((project / "results" / "select" / f"{optimizer}-{space}" / "selection.json").read_text())
    assert retrained.data.tags["search_seed"] == str(chosen["search_seed"])
    # The depth check, beside the formula: on the discretize run and, as a tag, on its retrainings.
    discretized = runs[f"discretize@{optimizer}-{space}-{chosen['search_seed']}"]
    assert {"depth.flagged", "depth.resnet8.grad_spread", "depth.resnet8.sgd_final_loss"} <= set(
        discretized.data.metrics)
    assert re.match(r"(ok|flagged) \(x", discretized.data.tags["depth_check"])
    assert retrained.data.tags["depth_check"] == discretized.data.tags["depth_check"]
    assert "formula" in search.data.tags
    assert {"val_top1", "val_top5", "train_loss", "lr", "mean_entropy"} <= set(search.data.metrics)
    assert len(search.data.metrics) <= 20  # headline numbers; the trajectories are trajectory.csv
    assert {a.path for a in client.list_artifacts(search.info.run_id)} >= {"history.csv", "history.json",
                                                                            "trajectory.csv", "weights"}

    exploding = next(run for name, run in runs.items() if name.startswith("evaluate-custom@exploding"))
    assert exploding.data.tags["status"] == "diverged" and exploding.data.tags["activation"] == "exploding"
    relu = next(run for name, run in runs.items() if name.startswith("evaluate-baseline@relu"))
    assert relu.data.tags["status"] == "ok"
    assert {"activation", "network", "seed"} <= set(relu.data.tags)
    history = client.get_metric_history(relu.info.run_id, "test_top1")
    assert sorted(m.step for m in history) == list(range(1, len(history) + 1)) and len(history) >= 2
    assert {a.path for a in client.list_artifacts(relu.info.run_id)} >= {"history.csv", "genotype.json",
                                                                          "metrics.json"}
    check_logged_model(project, relu.data.tags["network"], relu.data.tags["seed"])
    check_registered_best(project, experiment, list(dict.fromkeys(f"{o}-{s}" for o, s, _ in search_runs)))

    aggregate = runs["aggregate"]
    assert {a.path for a in client.list_artifacts(aggregate.info.run_id)} >= {"results.csv", "results.md",
                                                                              "summary.json", "figures"}


def check_logged_model(project: Path, network: str, seed: str) -> None:
    """The relu network logged by its evaluate stage loads with mlflow.pytorch.load_model and gives the logits of
    the saved weights on test images."""
    import mlflow.pytorch
    import torch

    from pipeline.data.augment import BatchLoader
    from pipeline.kernels.fused_genotype import fast_forward
    from pipeline.space.genotype import RELU
    from pipeline.space.models import build_resnet

    out = project / "results" / "evaluate" / "relu" / network / f"seed{seed}"
    uri = json.loads((project / "results" / "runs" / "evaluate" / "relu" / network / f"seed{seed}.json").read_text())[
        "model_uri"]
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    loaded = mlflow.pytorch.load_model(uri).eval()
    saved = build_resnet(network, RELU.factory("scalar", True, fast_forward))
    saved.load_state_dict(torch.load(out / "weights.pt", weights_only=True))
    data = torch.load(project / "data" / "prepared" / "cifar10.pt", weights_only=True)
    images, _ = next(iter(BatchLoader(data["test_images"][:16], data["test_labels"][:16], 16, shuffle=False,
                                      augment=False)))
    with torch.no_grad():
        assert torch.equal(loaded(images), saved.eval()(images))


def check_registered_best(project: Path, experiment: str, searched: list[str]) -> None:
    """The registry holds the model the report names: the searched activation with the best mean top-1 on the
    ranking network in summary.json (none registered only if no searched activation trained normally)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    summary = json.loads((project / "reports" / "summary.json").read_text())
    versions = client.search_model_versions(f"name = '{experiment}-best-searched'")
    trained = {name: summary["activations"][name]["top1"] for name in searched
               if summary["activations"][name]["top1"] is not None}
    if not trained:
        assert not versions
        return
    best = max(trained, key=trained.get)
    assert len(versions) == 1, versions
    tags = versions[0].tags
    assert (tags["activation"], tags["network"]) == (best, summary["network"]), (tags, summary)
    assert float(tags["top1_mean"]) == pytest.approx(trained[best], abs=1e-3)
    assert tags["formula"] and float(tags["test_top1"]) > 0
