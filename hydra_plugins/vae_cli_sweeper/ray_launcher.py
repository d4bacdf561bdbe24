"""hydra/launcher=ray_jobs's launcher (configs/hydra/launcher/ray_jobs.yaml): hydra-ray-launcher's, which
first checks that a Ray cluster answers at the address of the composed config. ray.init would otherwise
retry for minutes, a warning every few seconds, before any job starts. vae-train checks an address given
on the command line before Hydra runs (vae_cli.cli.check_ray_address); this check sees the one a config
file sets (an experiment's `hydra.launcher.ray.init.address`), and RAY_ADDRESS for address=auto. It
fails the sweep before its first job, so vae-train removes the sweep folder Hydra made and prints one line.
"""
from typing import Sequence

from hydra.core.utils import JobReturn

try:
    from hydra_plugins.hydra_ray_launcher.ray_launcher import RayLauncher
except ImportError:  # vae-cli without its [sweep] extra: no class here (Hydra imports this module at start)
    RayLauncher = None

if RayLauncher is not None:
    class CheckedRayLauncher(RayLauncher):
        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
            from vae_cli.cli import ray_address_problem
            from vae_cli.errors import ConfigError

            problem = ray_address_problem(self.ray_cfg.init.get("address"))
            if problem:
                raise ConfigError(problem)
            return super().launch(job_overrides, initial_job_idx)
