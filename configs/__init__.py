"""Hydra configs: installed as the package vae_cli.configs (see pyproject.toml)."""
