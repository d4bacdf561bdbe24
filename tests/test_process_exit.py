"""ExitWithoutTeardown (vae_cli/process_exit.py): the console commands keep their exit status, output and exit
handlers, and skip only the interpreter's teardown of loaded modules."""
import os
import signal
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import atexit, logging, os, sys
    from vae_cli.process_exit import ExitWithoutTeardown

    class Torn:  # its __del__ runs only when the interpreter tears the module down
        def __del__(self, write=os.write):  # os itself may be gone by then
            write(2, b"torn down\\n")

    torn = Torn()
    logging.basicConfig(filename=sys.argv[2], level=logging.INFO)
    with ExitWithoutTeardown():
        atexit.register(lambda: os.write(2, b"handler ran\\n"))  # registered during the command
        logging.getLogger("x").info("logged")
        sys.stdout.write("unflushed output")  # no newline, stdout buffered: still in the buffer
        {body}
""")


def run(body: str, tmp_path, trace: bool = False, stdout=subprocess.PIPE):
    code = SCRIPT.format(body=body)
    if trace:  # as coverage would: a tracer is set for the whole run
        code = "import sys; sys.settrace(lambda *a: None)\n" + code
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # stdout stays buffered
    return subprocess.run([sys.executable, "-c", code, "x", str(tmp_path / "log.txt")], stdout=stdout,
                          stderr=subprocess.PIPE, text=True, timeout=60, env=env)


@pytest.mark.parametrize("body, status", [("pass", 0), ("sys.exit(7)", 7), ("sys.exit(None)", 0),
                                          ("sys.exit('bad input')", 1)])
def test_the_status_output_handlers_and_log_are_kept_and_the_teardown_skipped(body, status, tmp_path):
    result = run(body, tmp_path)
    assert result.returncode == status, result.stderr
    assert result.stdout == "unflushed output"
    assert "handler ran" in result.stderr
    assert "torn down" not in result.stderr  # the teardown was skipped
    assert "INFO:x:logged" in (tmp_path / "log.txt").read_text()
    if body.startswith("sys.exit('"):
        assert "bad input" in result.stderr  # Python prints a string status, as usual


@pytest.mark.parametrize("body", ["raise KeyboardInterrupt", "sys.exit(130)"])
def test_ctrl_c_ends_the_process_by_sigint_so_that_a_shell_loop_stops(body, tmp_path):
    """A shell stops a loop of commands only when the command died by SIGINT (status 130 from exit()
    says the command handled it); its output and handlers still come first."""
    result = run(body, tmp_path)
    assert result.returncode == -signal.SIGINT
    assert result.stdout == "unflushed output" and "handler ran" in result.stderr


def test_output_that_cannot_be_written_gives_status_120_and_a_line(tmp_path):
    """As Python's own exit does when it cannot flush stdout (here: a full device)."""
    with open("/dev/full", "w") as full:
        result = run("pass", tmp_path, stdout=full)
    assert result.returncode == 120
    assert "could not write the command's last output" in result.stderr and "No space" in result.stderr


def test_an_uncaught_error_keeps_its_traceback_and_status_1(tmp_path):
    result = run("raise RuntimeError('boom')", tmp_path)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "RuntimeError: boom" in result.stderr
    assert "torn down" not in result.stderr


def test_under_a_tracer_the_usual_shutdown_runs(tmp_path):
    result = run("sys.exit(5)", tmp_path, trace=True)
    assert result.returncode == 5
    assert "handler ran" in result.stderr and "torn down" in result.stderr
