"""What to try next: the Ray Tune Searcher over an Optuna study (ask and tell only), the
observations fed to the study besides Ray's trials, and early stopping."""
