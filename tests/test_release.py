"""--vai_release and --nndct_param_corr_rate with the built-in quantizer: release 2.5's
default rate, 3.5's numbers from 2.5 at 3.5's rate, and a calibration of the other
release refused in one line with the command that recalibrates."""
import os
import shutil

import numpy as np
import pytest

from conftest import X86_GOLDEN, assert_clean_error, run_script, snapshot
from flow.checked_io import load_torch_file

pytestmark = X86_GOLDEN

GOLDEN = os.path.join(os.path.dirname(__file__), "fixtures", "golden")


@pytest.fixture
def work(tmp_path):
    """p1's checkpoint and rows as a project folder."""
    (tmp_path / "data").mkdir()
    (tmp_path / "checkpoints").mkdir()
    shutil.copy(os.path.join(GOLDEN, "p1_trained_in2", "calib.npy"), str(tmp_path / "data" / "test.npy"))
    shutil.copy(os.path.join(GOLDEN, "p1_trained_in2", "float_state_dict.pth"),
                str(tmp_path / "checkpoints" / "ffn_state_dict.pth"))
    return tmp_path


def quant(work, *args):
    return run_script("vai_q_pytorch_quant.py", "--batch_size", "64", "--backend", "builtin", *args, cwd=str(work))


def bias_corr(path):
    return [np.array(v).tobytes() for v in load_torch_file(str(path)).values()]


def test_release_2_5_at_3_5s_rate_gives_3_5s_corrections(work):
    """As measured with the real 2.5: its rate set to 0.05 gives 3.5's results exactly."""
    result = quant(work, "--quant_mode", "calib", "--vai_release", "2.5", "--nndct_param_corr_rate", "0.05")
    assert result.returncode == 0, result.stderr
    golden = os.path.join(GOLDEN, "p1_trained_in2", "expected", "quantize_result", "bias_corr.pth")
    assert bias_corr(work / "quantize_result" / "bias_corr.pth") == bias_corr(golden)
    golden25 = os.path.join(GOLDEN, "vai25", "p1_trained_in2", "expected", "quantize_result", "bias_corr.pth")
    assert bias_corr(golden) != bias_corr(golden25)   # the default rates differ where correction runs


def test_a_calibration_of_the_other_release_is_refused(work):
    assert quant(work, "--quant_mode", "calib").returncode == 0
    before = snapshot(str(work / "quantize_result"))
    result = quant(work, "--quant_mode", "test", "--vai_release", "2.5")
    assert_clean_error(result, "quantize_result/calibration.json: calibrated by vai_q_pytorch 3.5 (builtin), this "
                       "run is vai_q_pytorch 2.5 (builtin)",
                       "recalibrate: python vai_q_pytorch_quant.py --quant_mode calib", "--vai_release 2.5")
    assert snapshot(str(work / "quantize_result")) == before
    assert quant(work, "--quant_mode", "test").returncode == 0   # its own release reads it


@pytest.mark.parametrize("args, message", [
    (("--vai_release", "2.0"), "--vai_release: invalid choice: '2.0'"),
    (("--nndct_param_corr_rate", "0"), "--nndct_param_corr_rate: expected a positive number, got '0'"),
    (("--nndct_param_corr_rate", "-0.1"), "--nndct_param_corr_rate: expected a positive number, got '-0.1'"),
    (("--nndct_param_corr_rate", "fast"), "--nndct_param_corr_rate: expected a positive number, got 'fast'"),
    (("--nndct_param_corr_rate=inf",), "--nndct_param_corr_rate: expected a positive number, got 'inf'"),
])
def test_bad_release_flags_are_refused_before_any_work(work, args, message):
    assert quant(work, "--quant_mode", "calib").returncode == 0
    before = snapshot(str(work / "quantize_result"))
    assert_clean_error(quant(work, "--quant_mode", "calib", *args), message)
    assert snapshot(str(work / "quantize_result")) == before
