"""vae-cli's Hydra plugin (Hydra finds plugins only in the hydra_plugins namespace package)."""
