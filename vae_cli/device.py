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


def other_running_threads() -> int | None:
    """Threads of other processes runnable right now: /proc/loadavg's count of running threads less this
    process's own (its reader, and torch's worker threads, which spin a while after each parallel
    operator); None where there is no /proc. Unlike the load average it does not remember the last minute."""
    try:
        with open("/proc/loadavg") as file:
            running = int(file.read().split()[3].split("/")[0])
        own = 0
        for thread in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{thread}/stat") as file:
                    own += file.read().rpartition(")")[2].split()[0] == "R"
            except OSError:  # the thread has ended since the listing
                pass
    except (OSError, IndexError, ValueError):
        return None
    return max(0, running - own)


def busy_cores(threads: int) -> str | None:
    """A warning when other processes keep the cores busy: threads that share cores with them wait on
    each other at every operator, and one thread is then often faster. The 1-minute load average must
    fill the cores and, where /proc says, another thread must be running now: the load average alone
    still counts a run that has just ended (the previous run of a sequential sweep, vae-train just
    before vae-eval) for a minute or two. Both count the whole machine, so they are set against all its
    cores: on a node whose other cores run other jobs (Slurm gives this one its own), a full load of
    those is not this process's business."""
    if threads < 2 or not hasattr(os, "getloadavg"):
        return None
    load, cores = os.getloadavg()[0], os.cpu_count() or available_cores()
    # the fewest of three looks: a thread of this process that starts or stops between the two files
    # of one look would count as another process's
    looks = [other_running_threads() for _ in range(3)]
    others = None if None in looks else min(looks)
    if load <= cores - 0.5 or others == 0:
        return None
    now = "" if others is None else f", {others} other thread{'s' * (others != 1)} running now"
    return (f"the machine is busy (load average {load:.1f} on {cores} cores{now}): {threads} threads will "
            "wait on other processes; threads=1 can run several times faster (README, Troubleshooting)")


def use_threads(value) -> int:
    """Set torch's intra-op threads from a `threads` setting (resolve_threads) and return the count; with
    auto, warn when other processes already keep the cores busy. vae-train and vae-eval call it."""
    threads = resolve_threads(value)
    warning = busy_cores(threads) if value == "auto" else None  # before torch starts its worker threads
    torch.set_num_threads(threads)
    if warning:
        log.warning(warning)
    return threads
