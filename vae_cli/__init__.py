"""vae-cli: a command-line experiment runner for variational autoencoders (see README.md)."""
