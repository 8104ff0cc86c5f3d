"""Many runs: a multirun's parent run and summary, the batched launcher's training, reruns from
the record, and the MLflow UI's comparison views."""
