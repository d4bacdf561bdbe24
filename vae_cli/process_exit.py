"""The console commands end without the interpreter's teardown of every loaded module.

After vae-train's last line, Python's own shutdown clears every module and frees its objects one by one;
with torch loaded that took 0.55 s on this project's machine (0.8 s while vae-train still imported
torch's compiler; benchmarks/startup.py prints it as "exit", beside plain main()), 10-20 % of a short
run or a sweep job. Nothing a run writes needs it: the run's files are written and closed before, and
the exit handlers registered during the command still run. Tests call main() itself, so only the
console scripts (pyproject.toml) go through here.
"""
import atexit
import logging
import os
import signal
import sys

from vae_cli.interrupts import end_now, exit_status

FLUSH_FAILED = 120  # what Python itself exits with when it cannot flush stdout or stderr at exit


class ExitWithoutTeardown:
    """`with ExitWithoutTeardown(): main()`: the process exits with main()'s status as usual, but once the
    exit handlers have run it ends at once (os._exit) instead of tearing the interpreter down.

    The handler is registered on entry, so atexit (last in, first out) runs it after every handler
    registered during the command: TensorBoard's, tqdm's, multiprocessing's, Ray's, joblib's. Handlers
    registered before entry would be skipped: logging's (registered at its import) is run here, and the
    console script registers no other. Under a tracer, a profiler or a sys.monitoring tool (coverage) the
    usual shutdown is kept, so that they write their results. A command stopped by Ctrl-C (status 130,
    or an uncaught KeyboardInterrupt) ends by SIGINT itself, as a shell expects (interrupts.end_now).
    """

    def __init__(self):
        self.status = 1

    def __enter__(self) -> "ExitWithoutTeardown":
        atexit.register(self._leave)
        return self

    def __exit__(self, kind, value, traceback) -> bool:
        if kind is None:
            self.status = 0
        elif issubclass(kind, SystemExit):
            code = value.code
            self.status = 0 if code is None else code if isinstance(code, int) else 1
        elif issubclass(kind, KeyboardInterrupt):
            self.status = exit_status(signal.SIGINT)
        return False  # the exception goes on: Python prints it (or a sys.exit message) as usual

    def _leave(self) -> None:
        if observed():
            return
        logging.shutdown()
        status = self.status
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except ValueError:  # closed: nothing more can reach it
                pass
            except OSError as err:  # a full disk, a closed pipe: say so, as Python's own exit would
                status = status or FLUSH_FAILED
                try:
                    os.write(2, f"error: could not write the command's last output: {err}\n".encode())
                except OSError:
                    pass
        if status == exit_status(signal.SIGINT):
            end_now(signal.SIGINT)
        os._exit(status)


def observed() -> bool:
    """A tracer, a profiler or a sys.monitoring tool (coverage on Python 3.12+) is watching the process."""
    if sys.gettrace() is not None or sys.getprofile() is not None:
        return True
    monitoring = getattr(sys, "monitoring", None)
    return monitoring is not None and any(monitoring.get_tool(i) is not None for i in range(6))
