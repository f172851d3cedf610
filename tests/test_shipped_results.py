"""The committed quantize_result/ is what the pipeline's commands give for the
shipped checkpoint on data/test.npy (calibration and evaluation at batch 64, deploy
at batch 1: compile.sh gives DPUCADF8H's compiler batch 4 with vai_c_xir --options)."""
import os

import numpy as np
import pytest
import torch

import vai_q_pytorch_quant
from flow.checked_io import load_torch_file
from conftest import REPO, X86_GOLDEN
from dpu import reference
from dpu.xmodel import graph_summary, read_graph, read_xmodel

pytestmark = X86_GOLDEN

SHIPPED = os.path.join(REPO, "quantize_result")
# As the Makefile runs them, from the checkout: calibration.json records these paths.
COMMON = ["--data_dir", "data", "--checkpoint_dir", "checkpoints", "--batch_size", "64", "--backend", "builtin"]


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory):
    out = tmp_path_factory.mktemp("shipped") / "quantize_result"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO)
        for mode in (["--quant_mode", "calib"], ["--quant_mode", "test", "--deploy", "--deploy_batch", "1"]):
            argv = COMMON + ["--output_dir", str(out)] + mode
            mp.setattr("sys.argv", ["vai_q_pytorch_quant.py"] + argv)
            assert vai_q_pytorch_quant.main(argv) == 0
    return out


def read(folder, *parts):
    with open(os.path.join(str(folder), *parts), "rb") as f:
        return f.read()


@pytest.mark.parametrize("name", ["quant_info.json", "calibration.json", "FFN_int.onnx",
                                  "deploy_check_data_int/FFN/shape.txt"])
def test_committed_file_equals_a_regeneration(regenerated, name):
    shipped, again = read(SHIPPED, name), read(regenerated, name)
    if name == "quant_info.json":
        # byte for byte but for the version line, which names the torch it ran on
        version = '  "version":"3.5.0+builtin+torch{}",'.format(torch.__version__.split("+")[0]).encode()
        assert version in again.splitlines()
        shipped, again = ([line for line in text.splitlines() if b'"version"' not in line] for text in (shipped, again))
    assert shipped == again


def test_committed_bias_corr_equals_a_regeneration(regenerated):
    ours = load_torch_file(os.path.join(SHIPPED, "bias_corr.pth"))
    again = load_torch_file(str(regenerated / "bias_corr.pth"))
    assert ours == again


def test_committed_xmodel_and_dumps_equal_a_regeneration(regenerated):
    assert graph_summary(read_graph(os.path.join(SHIPPED, "FFN_int.xmodel"))) == \
        graph_summary(read_graph(str(regenerated / "FFN_int.xmodel")))
    folder = os.path.join("deploy_check_data_int", "FFN")
    assert sorted(os.listdir(os.path.join(SHIPPED, folder))) == sorted(os.listdir(str(regenerated / folder)))
    for name in os.listdir(os.path.join(SHIPPED, folder)):
        assert read(SHIPPED, folder, name) == read(regenerated, folder, name), name


def test_committed_xmodel_on_the_integer_reference_gives_the_documented_mse():
    rows = np.load(os.path.join(REPO, "data", "test.npy"))
    model = read_xmodel(os.path.join(SHIPPED, "FFN_int.xmodel"))
    assert model.batch == 1
    outputs = reference.outputs(model, rows[:, :2])
    mse = float(np.mean((outputs[:, 0].astype(np.float64) - rows[:, 2]) ** 2))
    assert mse == pytest.approx(1.374880e-04, rel=1e-6)


def test_committed_torchscript_equals_the_deploy_command(tmp_path):
    """FFN_int.pt byte for byte from the Makefile's deploy command, run from a copy of the
    checkout elsewhere: no path of the machine in it. (A process that traced before names
    its classes ___torch_mangle_N, so this runs the command in a fresh one.)"""
    import json
    import shutil
    import subprocess
    import sys
    made_with = json.load(open(os.path.join(SHIPPED, "quant_info.json")))["version"].split("+torch")[-1]
    if torch.__version__.split("+")[0] != made_with:   # the archive's bytes follow torch's release
        pytest.skip("FFN_int.pt was written by torch {}, this is {}".format(made_with, torch.__version__))
    work = tmp_path / "elsewhere"
    for folder in ("data", "checkpoints", "quantize_result"):
        shutil.copytree(os.path.join(REPO, folder), str(work / folder))
    command = [sys.executable, os.path.join(REPO, "vai_q_pytorch_quant.py"), "--data_dir", "data", "--quant_mode",
               "test", "--deploy", "--deploy_batch", "1", "--batch_size", "64", "--backend", "builtin"]
    subprocess.run(command, cwd=str(work), check=True, stdout=subprocess.DEVNULL)
    assert read(work / "quantize_result", "FFN_int.pt") == read(SHIPPED, "FFN_int.pt")
