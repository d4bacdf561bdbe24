"""Evaluation of a trained VAE: L_K and the posterior gap, bits/dim, active units, the probe, pictures."""
from vae_cli.evaluation.run import Evaluation, evaluate, evaluate_run

__all__ = ["Evaluation", "evaluate", "evaluate_run"]
