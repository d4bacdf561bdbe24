"""vae-cli's Hydra plugins (Hydra finds plugins only in the hydra_plugins namespace package): the Optuna
study's sweeper (optuna_study.py) and ray_jobs' launcher, which checks the cluster's address (ray_launcher.py)."""
