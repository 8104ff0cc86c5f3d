"""The parts a run is built from, each an option of its config group: the data and the initial
parameters (data), the model (models), the optimizer (optimizers), the backend (backends)."""
