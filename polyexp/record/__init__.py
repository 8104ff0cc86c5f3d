"""Recording a run in MLflow: the runner (train, then record), the store, the plots and the
provenance tags."""
