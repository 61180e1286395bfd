"""The Ray runner's settings (`pipeline.study.cluster`): what each stage kind asks Ray for, read from cluster.yaml.

An execution setting, not a study parameter: no stage reads it, so it lives outside params.yaml, and `dvc exp show`
lists only what stages read. A mistake is one line naming the file, as for params.yaml.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, Field, ValidationError

from pipeline.study.params_yaml import load_yaml
from pipeline.training.train_config import SETTINGS

CLUSTER_FILE = "cluster.yaml"


class ClusterError(ValueError):
    """cluster.yaml is missing, not YAML, or not valid settings."""


class StageResources(BaseModel):
    """What one stage of a kind asks Ray for."""
    model_config = SETTINGS
    num_cpus: float = Field(ge=0, strict=False, description="CPUs (and torch threads) per stage of this kind")
    num_gpus: float = Field(ge=0, strict=False, description="GPUs per stage of this kind: fractions share a GPU; "
                                                            "ignored without GPUs")
    resources: dict[str, Annotated[float, Field(ge=0, strict=False)]] = Field(
        description="custom Ray resources, e.g. {} or {fakegpu: 1}")


class ClusterSettings(BaseModel):
    """The whole cluster.yaml."""
    model_config = SETTINGS
    max_retries: int = Field(ge=0, description="Ray reruns a stage whose worker died this often")
    download: StageResources
    prepare: StageResources
    search: StageResources
    discretize: StageResources
    select: StageResources
    evaluate: StageResources
    aggregate: StageResources


def load_cluster_settings(path: str | Path) -> ClusterSettings:
    """Read and validate the runner's settings; a mistake is one ClusterError line starting with the file."""
    path = Path(path)
    try:
        raw = load_yaml(path.read_text())
        return ClusterSettings.model_validate(raw)
    except FileNotFoundError:
        raise ClusterError(f"{path}: no such file; the Ray runner reads each stage kind's resources from it "
                           f"(docs/cluster.md has the format)") from None
    except yaml.YAMLError as err:
        raise ClusterError(f"{path}: is not valid YAML ({getattr(err, 'problem', err)})") from None
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the file"
        raise ClusterError(f"{path}: {where}: {first['msg']} (docs/cluster.md has the format)") from None
