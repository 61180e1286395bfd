"""DVC stage scripts, run as modules from the project root: `python -m stages.<verb> ...` (see dvc.yaml)."""
