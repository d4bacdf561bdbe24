"""Estimators: objects that take (model, x) and return the named ELBO terms and a surrogate to minimise."""
from vae_cli.estimators.exact import Exact
from vae_cli.estimators.gumbel_softmax import GumbelSoftmax
from vae_cli.estimators.reinforce import Reinforce
from vae_cli.estimators.reparam import Reparameterized
from vae_cli.estimators.terms import TERM_NAMES, Terms

__all__ = ["Exact", "GumbelSoftmax", "Reinforce", "Reparameterized", "Terms", "TERM_NAMES"]
