"""Hydra configs: installed as the package vae_cli.configs (see pyproject.toml); Hydra imports it to read
them, which registers the resolver they use."""
import os

from omegaconf import OmegaConf

# ${launch_dir:} (train.yaml's hydra.sweep.dir): the folder the command was started in, resolved once per
# config and cached; the cache travels with each sweep job's config as ${now:}'s does, so a sweep's jobs
# write under the launching folder even where a launcher runs them elsewhere (the workers of a running
# Ray cluster start in the folder of `ray start`).
if not OmegaConf.has_resolver("launch_dir"):
    OmegaConf.register_new_resolver("launch_dir", os.getcwd, use_cache=True)
