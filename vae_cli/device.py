"""Resolve `device` to a torch.device (a clear error for one that is absent) and `threads` to a count."""
import logging
import os

import torch

from vae_cli.errors import ConfigError, check_choice, check_integer

log = logging.getLogger(__name__)


def mps_available() -> bool:
    return hasattr(torch.backends, "mps") and torch.backends.mps.is_available()


def resolve_device(name: str) -> torch.device:
    """auto picks cuda, then mps, then cpu; an explicit device that is not present is an error."""
    kind = str(name).split(":")[0]
    check_choice("device", kind, ("auto", "cpu", "cuda", "mps"))
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_available() else torch.device("cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but this machine has no CUDA device visible to torch "
                          f"{torch.__version__}; use device=auto or device=cpu")
    if kind == "mps" and not mps_available():
        raise ConfigError(f"device={name!r} but MPS is not available here; use device=auto or device=cpu")
    return torch.device(name)


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def resolve_threads(value) -> int:
    """torch's intra-op threads: an integer as given, or auto = this process's share of the cores.

    auto takes, in order: OMP_NUM_THREADS if set (the user's or a launcher's choice), Slurm's
    SLURM_CPUS_PER_TASK, the cores of the CPU affinity divided by VAE_CLI_PARALLEL_JOBS (set by the local
    launchers' configs to their number of parallel jobs). Processes sharing cores with torch's default
    threads run many times slower: on a shared machine, give each process its own cores.
    """
    if value != "auto":
        return check_integer("threads", value, 1, "or auto: this process's share of the cores")
    for name in ("OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK"):
        given = os.environ.get(name, "")
        if given.isdigit() and int(given) > 0:
            return int(given)
    cores, jobs = available_cores(), os.environ.get("VAE_CLI_PARALLEL_JOBS", "")
    try:
        jobs = int(jobs)
    except ValueError:
        return cores
    if jobs < 0:  # joblib's convention: -1 all cores, -2 all but one, ...
        jobs = max(1, cores + 1 + jobs)
    return max(1, cores // max(jobs, 1))


def busy_cores(threads: int) -> str | None:
    """A warning when other processes already keep the cores busy (1-minute load average): threads that
    share cores with them wait on each other at every operator, and one thread is then often faster."""
    if threads < 2 or not hasattr(os, "getloadavg"):
        return None
    load, cores = os.getloadavg()[0], available_cores()
    if load <= cores - 0.5:
        return None
    return (f"the machine is busy (load average {load:.1f} on {cores} cores): {threads} threads will wait on "
            "other processes; threads=1 can run several times faster (README, Troubleshooting)")


def use_threads(value) -> int:
    """Set torch's intra-op threads from a `threads` setting (resolve_threads) and return the count; with
    auto, warn when other processes already keep the cores busy. vae-train and vae-eval call it."""
    threads = resolve_threads(value)
    torch.set_num_threads(threads)
    if value == "auto" and (warning := busy_cores(threads)):
        log.warning(warning)
    return threads
