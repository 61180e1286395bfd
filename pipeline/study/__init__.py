"""The study around the library: params.yaml settings, MLflow tracking and its store, preflight checks.
Imported only by the stages.
May import: everything below."""
