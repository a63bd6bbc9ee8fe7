"""What to try next: the Ray Tune Searcher over an Optuna study (ask and tell only), the
observations fed to the study besides Ray's trials, early stopping, promotion and the
teachers of a distilling sweep."""
