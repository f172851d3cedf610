"""Pinned CPU kernels (flow/kernels.py): set before torch is imported unless the user set
them, a user's own choice respected and said in one line, a bad value refused in one."""
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO, assert_clean_error
from flow import kernels

NOTE = "kernels: native, results may differ from the committed ones in the last bits"
UNPINNED = {name: None for name, _ in kernels.PINS}


def environment(**settings):
    """This environment with the kernel variables removed, then `settings` (None: unset)."""
    env = {k: v for k, v in os.environ.items() if k not in dict(kernels.PINS) and k != kernels.OPT_OUT}
    env.update((k, v) for k, v in settings.items() if v is not None)
    return env


def test_pin_sets_what_the_user_did_not():
    env = environment()
    assert kernels.pin(env) == []
    assert [env[name] for name, _ in kernels.PINS] == ["default", "COMPATIBLE", "1"]


def test_a_users_own_setting_is_kept_and_reported():
    env = environment(ATEN_CPU_CAPABILITY="avx2", OMP_NUM_THREADS="2")
    assert kernels.pin(env) == ["ATEN_CPU_CAPABILITY=avx2"]
    assert (env["ATEN_CPU_CAPABILITY"], env["MKL_CBWR"], env["OMP_NUM_THREADS"]) == ("avx2", "COMPATIBLE", "2")
    # the pins' own values, given by hand, are pinned
    assert kernels.pin(environment(ATEN_CPU_CAPABILITY="default", MKL_CBWR="compatible")) == []


def test_the_opt_out_sets_nothing():
    env = environment(NATIVE_KERNELS="1")
    assert kernels.pin(env) == ["NATIVE_KERNELS=1"]
    assert not any(name in env for name, _ in kernels.PINS)


@pytest.mark.parametrize("name, value", [("ATEN_CPU_CAPABILITY", "AVX2"), ("ATEN_CPU_CAPABILITY", "fast"),
                                         ("MKL_CBWR", "FASTEST"), ("MKL_CBWR", "AVX2,LOOSE"),
                                         ("OMP_NUM_THREADS", "0"), ("OMP_NUM_THREADS", "two"),
                                         ("NATIVE_KERNELS", "yes")])
def test_a_value_torch_would_ignore_is_refused(name, value):
    with pytest.raises(kernels.KernelSettingError, match=name):
        kernels.pin(environment(**{name: value}))


def run_generate_data(tmp_path, env):
    command = [sys.executable, os.path.join(REPO, "generate_data.py"), "--n_samples", "20", "--output_dir",
               str(tmp_path / "data")]
    return subprocess.run(command, cwd=str(tmp_path), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=120)


def test_a_stage_with_the_users_kernels_says_so_in_one_line(tmp_path):
    result = run_generate_data(tmp_path, environment(MKL_CBWR="AVX2"))
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == ["generate_data.py: note: {} (MKL_CBWR=AVX2)".format(NOTE)]


def test_a_stage_refuses_a_bad_value_before_any_work(tmp_path):
    result = run_generate_data(tmp_path, environment(ATEN_CPU_CAPABILITY="avx9"))
    assert_clean_error(result, "generate_data.py: error: ATEN_CPU_CAPABILITY='avx9'")
    assert not (tmp_path / "data").exists()


PROBE = ("import sys; sys.path.insert(0, {!r}); import flow; flow.start_stage('__main__'); import torch; "
         "print(torch.backends.cpu.get_cpu_capability())").format(REPO)


@pytest.mark.skipif(not hasattr(__import__("torch").backends, "cpu"), reason="torch < 2.0 cannot say its kernels")
def test_torch_runs_the_scalar_kernels_in_a_stage():
    pinned = subprocess.run([sys.executable, "-c", PROBE], env=environment(), stdout=subprocess.PIPE,
                            universal_newlines=True, check=True)
    assert pinned.stdout.strip() == "DEFAULT"
    native = subprocess.run([sys.executable, "-c", PROBE], env=environment(NATIVE_KERNELS="1"),
                            stdout=subprocess.PIPE, universal_newlines=True, check=True)
    import platform
    if platform.machine() in ("x86_64", "AMD64"):
        assert native.stdout.strip() != "DEFAULT"   # AVX2 or AVX512: the pins are what changes it


def test_the_tests_run_pinned():
    assert [os.environ.get(name) for name, _ in kernels.PINS] == ["default", "COMPATIBLE", "1"] or \
        os.environ.get(kernels.OPT_OUT) == "1"


def test_every_stage_starts_pinned():
    """Every stage's first statement is flow.start_stage, before any line that imports torch."""
    for script in ("generate_data.py", "run.py", "vai_q_pytorch_quant.py", "simulate.py", "hls4ml_project.py",
                   "report.py", "tools/benchmark.py", "tools/quant_quality.py", "dpu/preflight.py"):
        with open(os.path.join(REPO, script)) as f:
            lines = f.read().splitlines()
        start = lines.index("start_stage(__name__)   # first: kernels pinned and Ctrl-C handled before torch is "
                            "imported")
        torch_lines = [k for k, line in enumerate(lines) if re.match(r"\s*(import torch|from torch)", line)]
        assert all(start < k for k in torch_lines), script


def test_adam_takes_a_generator_and_is_fused_where_torch_has_it():
    """flow.kernels.adam: every parameter of a generator in one group, torch's fused CPU step
    from 2.4 on (its square root the exact one, not MKL's)."""
    import torch

    model = torch.nn.Linear(3, 2)
    opt = kernels.adam(model.parameters(), lr=1e-3)
    assert [len(g["params"]) for g in opt.param_groups] == [2] and opt.param_groups[0]["lr"] == 1e-3
    if tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 4):
        assert opt.defaults["fused"] is True
    else:
        assert not opt.defaults.get("fused")
