"""Helpers shared by the tests: run a stage script as a command and check how it fails.

Test files use them with `from conftest import run_script, assert_clean_error, snapshot`.
"""
import os
import signal
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The stage modules (model, runner, ...) live at the top of the repository.
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from flow import kernels  # noqa: E402

# Before any test imports torch: the golden cases were made with torch's CPU kernels
# pinned, and the scripts the tests run inherit the same settings.
kernels.pin()

import platform  # noqa: E402

import pytest  # noqa: E402

# The golden files were made with x86-64's pinned kernels (ATen's scalar loops, MKL's
# COMPATIBLE path): the same bits on any x86-64 CPU, but another architecture's float
# kernels round differently. Tests that compare float bits with them mark themselves so.
X86_GOLDEN = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"),
                                reason="compares float bits with goldens made by x86-64 CPU kernels")

# Adam divides by torch.sqrt, the one kernel the pins leave to the CPU (MKL's vector sqrt
# refines the CPU's rsqrtps estimate): tests that compare the float values after optimizer
# steps with the goldens need this machine's sqrt to be the golden machine's.
GOLDEN_SQRT = pytest.mark.skipif(
    platform.machine() in ("x86_64", "AMD64") and kernels.sqrt_fingerprint() != kernels.COMMITTED_SQRT,
    reason="Adam's steps divide by torch.sqrt, MKL's refinement of the CPU's rsqrtps, whose last bits here "
           "(this CPU's, or this torch's MKL) are not the golden machine's (flow/kernels.py COMMITTED_SQRT)")


# The shipped model.py up to its forward (imports and the three layers): tests that
# change model.py append their own layers and forward to it.
with open(os.path.join(REPO, "model.py")) as _f:
    MODEL_PY_HEAD = _f.read().split("\n    def forward")[0] + "\n"


def script_command(script):
    """The command that runs `script`: a file of the repository ("run.py", "tools/benchmark.py")
    or a module of its packages ("dpu.preflight", run with -m as compile.sh does)."""
    if script.endswith(".py"):
        return [sys.executable, os.path.join(REPO, script)]
    return [sys.executable, "-m", script]


def script_env():
    """The environment for script_command: a package module needs the repository on the path."""
    return dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))


def run_script(script, *args, cwd=None, timeout=600):
    """Run `script` (see script_command) with this Python and the given arguments; return the
    CompletedProcess.

    stdout and stderr are captured as text. `cwd` defaults to the repository, so
    pass a temporary folder when the script's default output paths must not be used.
    """
    command = script_command(script) + [str(arg) for arg in args]
    return subprocess.run(command, cwd=cwd or REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=timeout, env=script_env())


def assert_clean_error(result, *must_contain):
    """The command failed the way bad input must: a non-zero exit code and one
    non-empty line on stderr, without a traceback, holding every `must_contain` text."""
    shown = "exit code {}\nstdout:\n{}\nstderr:\n{}".format(result.returncode, result.stdout, result.stderr)
    assert result.returncode != 0, shown
    assert "Traceback" not in result.stderr, shown
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), shown
    for text in must_contain:
        assert text in lines[0], "{!r} not in the error line\n{}".format(text, shown)


def sigterm_handled(pid):
    """True once process `pid` has installed a SIGTERM handler (its script's first line)."""
    with open("/proc/{}/status".format(pid)) as f:
        caught = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    return bool(caught >> (signal.SIGTERM - 1) & 1)


def cpu_seconds(pid):
    """The CPU time process `pid` has used so far (Linux /proc)."""
    with open("/proc/{}/stat".format(pid)) as f:
        fields = f.read().rsplit(")", 1)[1].split()   # fields[0] is field 3 of proc(5)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")   # utime + stime


def snapshot(folder):
    """{relative path: bytes, or None for a folder} of everything under `folder`,
    to check that a failed command left the earlier outputs as they were."""
    tree = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            tree[os.path.relpath(os.path.join(root, name), folder)] = None
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                tree[os.path.relpath(path, folder)] = f.read()
    return tree


def check_fails(work, script, args, *must_contain):
    """Run the script in `work`: it must fail cleanly (one line naming must_contain) and
    change nothing there."""
    before = snapshot(str(work))
    result = run_script(script, *args, cwd=str(work))
    assert_clean_error(result, *must_contain)
    assert snapshot(str(work)) == before
    return result


GOLDEN_P1 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "golden", "p1_trained_in2")


def p1_workspace(work):
    """`work` (a pathlib folder) with the golden case p1's rows as data/test.npy and its
    float model as checkpoints/ffn_state_dict.pth, the stages' default paths."""
    import shutil
    (work / "data").mkdir()
    (work / "checkpoints").mkdir()
    shutil.copy(os.path.join(GOLDEN_P1, "calib.npy"), str(work / "data" / "test.npy"))
    shutil.copy(os.path.join(GOLDEN_P1, "float_state_dict.pth"), str(work / "checkpoints" / "ffn_state_dict.pth"))
    return work
