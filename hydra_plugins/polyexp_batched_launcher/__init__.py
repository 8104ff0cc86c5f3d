"""polyexp's Hydra launcher plugin: hydra/launcher=batched (see batched_launcher.py)."""
