"""The console commands end without the interpreter's teardown of every loaded module.

After vae-train's last line, Python's own shutdown clears every module and frees its objects one by one;
with torch and torch._dynamo loaded that took ~0.7 s on this project's machine (benchmarks/startup.py
prints it as "exit"), 10-20 % of a short run or a sweep job. Nothing a run writes needs it: the
run's files are written and closed before, and every exit handler still runs. Tests call main()
itself, so only the console scripts (pyproject.toml) go through here.
"""
import atexit
import logging
import os
import sys


class ExitWithoutTeardown:
    """`with ExitWithoutTeardown(): main()`: the process exits with main()'s status as usual, but once the
    exit handlers have run it ends at once (os._exit) instead of tearing the interpreter down.

    The handler is registered on entry, so atexit (last in, first out) runs it after every handler
    registered during the command: TensorBoard's, tqdm's, multiprocessing's, Ray's, joblib's. Logging's
    was registered before (at its import); the handler shuts logging down itself, then flushes stdout and
    stderr. Under a tracer or profiler (coverage, cProfile) the usual shutdown is kept, so that they
    write their results."""

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
            self.status = 130
        return False  # the exception goes on: Python prints it (or a sys.exit message) as usual

    def _leave(self) -> None:
        if sys.gettrace() is not None or sys.getprofile() is not None:
            return
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe: nothing more can reach it
                pass
        os._exit(self.status)
