"""The task: data loading and preprocessing, and the training loop (torch; no Ray, no Optuna)."""
