"""The README stays a first page: short, its links resolve, and its test command is the one CI runs."""
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MOVED_DOCS = ["docs/benchmarks.md", "docs/results.md", "docs/development.md", "docs/params.md", "docs/pipeline.md"]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
ANCHORED_LINK = re.compile(r"\]\(([^)#\s]+\.md)#([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def readme_test_command() -> str:
    """The command in the README's `## Tests` code block."""
    section = README.read_text().split("\n## Tests\n", 1)[1]
    return re.search(r"```bash\n(.+?)\n```", section, re.S).group(1).strip()


def ci_test_command() -> str:
    """The command .ci/run runs after the line that says it is the README's."""
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    return lines[lines.index("# The README's test command:") + 1].strip()


def test_the_readme_is_a_first_page_of_at_most_10000_characters():
    assert len(README.read_text()) <= 10_000


def test_the_readme_keeps_install_and_run_two_commands():
    text = README.read_text()
    assert "pip install -r requirements.txt" in text and "\ndvc repro " in text


def test_ci_runs_the_readme_test_command():
    assert readme_test_command() == ci_test_command()
    assert readme_test_command().startswith("python -m pytest")


@pytest.mark.parametrize("doc", ["README.md"] + MOVED_DOCS)
def test_relative_links_resolve(doc):
    path = ROOT / doc
    for target in LINK.findall(path.read_text()):
        if "://" in target:
            continue
        assert (path.parent / target).exists(), f"{doc} links to {target}, which does not exist"


@pytest.mark.parametrize("doc", ["README.md"] + MOVED_DOCS)
def test_anchors_of_links_name_a_heading_of_the_target(doc):
    path = ROOT / doc
    for target, anchor in ANCHORED_LINK.findall(path.read_text()):
        headings = re.findall(r"^#+ (.+)$", (path.parent / target).read_text(), re.M)
        assert anchor in {slug(heading) for heading in headings}, f"{doc}: {target}#{anchor}"


@pytest.mark.parametrize("doc", ["README.md"] + MOVED_DOCS)
def test_no_references_a_reader_cannot_follow(doc):
    text = (ROOT / doc).read_text()
    for phrase in ("this project's machines", "issue 11", "the lent", "nothing was measured on a GPU"):
        assert phrase not in text, f"{doc}: {phrase!r}"


def test_license_is_mit_and_the_citation_file_has_cffs_required_keys():
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert {"cff-version", "message", "title", "authors"} <= set(citation)
    assert citation["license"] == "MIT"


def test_the_pipeline_docs_list_every_dvc_stage_once_under_its_current_name():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    section = (ROOT / "docs" / "pipeline.md").read_text().split("## Stages", 1)[1].split("\n\n", 2)[1]
    rows = [line.split("|")[1].strip().strip("`") for line in section.splitlines() if line.startswith("| `")]
    assert sorted(row.split("@")[0] for row in rows) == sorted(stages)
    for row in rows:
        matrix = stages[row.split("@")[0]].get("matrix")
        assert ("@" in row) == bool(matrix), row
        if matrix:  # DVC joins one value per matrix axis with '-'
            assert len(row.split("@")[1].split("-")) == len(matrix), row


def test_the_pipeline_docs_mlflow_table_has_one_row_per_stage_kind():
    section = (ROOT / "docs" / "pipeline.md").read_text().split("\n## MLflow\n", 1)[1]
    kinds = [line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| ")][2:]
    assert len(kinds) == len(set(kinds)) and {"search", "evaluate", "aggregate"} <= set(kinds)


def test_every_dvc_stage_has_a_description_for_dvc_stage_list():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert not [name for name, stage in stages.items() if not stage.get("desc", "").strip()]
    assert all(len(stage["desc"]) <= 80 for stage in stages.values())  # dvc stage list cuts longer ones


def test_dvc_plots_output_is_git_ignored():
    assert "/dvc_plots/" in (ROOT / ".gitignore").read_text().splitlines()
