"""vai_q_pytorch_quant.py on bad input: one clear line, a non-zero exit, no
traceback, and the earlier quantize_result/ left as it was."""
import json
import os
import shutil

import numpy as np
import pytest


from conftest import assert_clean_error, p1_workspace, run_script, snapshot

GOLDEN = os.path.join(os.path.dirname(__file__), "fixtures", "golden")
P1 = os.path.join(GOLDEN, "p1_trained_in2")
P3 = os.path.join(GOLDEN, "p3_random_in4")


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """A workspace with data/test.npy, a checkpoint and a calibrated quantize_result/."""
    work = p1_workspace(tmp_path_factory.mktemp("work"))
    result = run_script("vai_q_pytorch_quant.py", "--quant_mode", "calib", "--batch_size", "64",
                        "--backend", "builtin", cwd=str(work))
    assert result.returncode == 0, result.stderr
    return work


@pytest.fixture
def work(calibrated, tmp_path):
    """A fresh copy of the calibrated workspace for one test."""
    copy = tmp_path / "work"
    shutil.copytree(str(calibrated), str(copy))
    return copy


def quant(work, *args):
    return run_script("vai_q_pytorch_quant.py", "--batch_size", "64", "--backend", "builtin", *args, cwd=str(work))


def assert_refused(work, args, *must_contain):
    before = snapshot(str(work / "quantize_result"))
    assert_clean_error(quant(work, *args), *must_contain)
    assert snapshot(str(work / "quantize_result")) == before


def edit_quant_info(work, change):
    path = work / "quantize_result" / "quant_info.json"
    info = json.loads(path.read_text())
    change(info)
    path.write_text(json.dumps(info))


TEST = ("--quant_mode", "test", "--evaluate")


def test_test_mode_without_calibration(work):
    shutil.rmtree(str(work / "quantize_result"))
    assert_clean_error(quant(work, *TEST), "quant_info.json", "run --quant_mode calib first")
    assert not (work / "quantize_result").exists()


def test_deploy_without_calibration(work):
    shutil.rmtree(str(work / "quantize_result"))
    assert_clean_error(quant(work, "--quant_mode", "test", "--deploy"), "quant_info.json", "not found")
    assert not (work / "quantize_result").exists()


def test_malformed_quant_info(work):
    (work / "quantize_result" / "quant_info.json").write_text('{"param": {')
    assert_refused(work, TEST, "quant_info.json", "not valid JSON")


def test_quant_info_with_a_missing_tensor(work):
    edit_quant_info(work, lambda info: info["param"].pop("FFN::l2.bias"))
    assert_refused(work, TEST, "quant_info.json", "missing ['FFN::l2.bias']", "another model")


def test_quant_info_with_an_extra_tensor(work):
    edit_quant_info(work, lambda info: info["output"].update({"FFN::nndct_dense_7": [[8, 4]]}))
    assert_refused(work, TEST, "quant_info.json", "FFN::nndct_dense_7")


def test_quant_info_with_a_wrong_bit_width(work):
    edit_quant_info(work, lambda info: info["param"].update({"FFN::l1.weight": [[16, 7]]}))
    assert_refused(work, TEST, "quant_info.json", "FFN::l1.weight", "bit width 16")


def test_quant_info_with_a_non_integer_position(work):
    edit_quant_info(work, lambda info: info["output"].update({"FFN::nndct_relu_2": [[8, "6"]]}))
    assert_refused(work, TEST, "quant_info.json", "FFN::nndct_relu_2")


def test_bias_corr_missing_while_quant_info_says_corrected(work):
    os.remove(str(work / "quantize_result" / "bias_corr.pth"))
    assert_refused(work, TEST, "bias_corr.pth", "not found", "bias was corrected")


def test_bias_corr_of_another_model(work):
    shutil.copy(os.path.join(P3, "expected", "quantize_result", "bias_corr.pth"),
                str(work / "quantize_result" / "bias_corr.pth"))
    assert_refused(work, TEST, "bias_corr.pth", "FFN::nndct_dense_1", "has 12 values, the layer has 6",
                   "run --quant_mode calib again")


def test_bias_corr_that_is_not_a_torch_file(work):
    (work / "quantize_result" / "bias_corr.pth").write_bytes(b"not a torch file")
    assert_refused(work, TEST, "bias_corr.pth", "not a loadable")


@pytest.mark.parametrize("mode", ["calib", "float"])
def test_deploy_outside_test_mode(work, mode):
    assert_refused(work, ("--quant_mode", mode, "--deploy"), "--deploy needs --quant_mode test")


def write_calib(work, rows):
    np.save(str(work / "data" / "bad.npy"), rows)
    return ("--quant_mode", "calib", "--calib_data", "bad.npy")


def test_calibration_file_with_the_wrong_column_count(work):
    args = write_calib(work, np.zeros((10, 5)))
    assert_refused(work, args, "bad.npy", "has 5 columns, expected 3")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_calibration_file_with_nan_or_inf(work, value):
    rows = np.load(os.path.join(P1, "calib.npy"))
    rows[7, 1] = value
    args = write_calib(work, rows)
    assert_refused(work, args, "bad.npy", "NaN or Inf", "row 7")


def test_calibration_file_with_fewer_rows_than_subset_len(work):
    assert_refused(work, ("--quant_mode", "calib", "--subset_len", "5000"), "test.npy", "fewer than subset_len 5000")


def test_checkpoint_for_another_input_size(work):
    shutil.copy(os.path.join(P3, "float_state_dict.pth"), str(work / "checkpoints" / "ffn_state_dict.pth"))
    assert_refused(work, ("--quant_mode", "calib"), "ffn_state_dict.pth", "another --input_size")


def test_backend_nndct_without_the_package(work):
    pytest.importorskip("torch")
    try:
        import pytorch_nndct  # noqa: F401
        pytest.skip("pytorch_nndct is installed here")
    except ImportError:
        pass
    assert_refused(work, ("--quant_mode", "calib", "--backend", "nndct"), "--backend nndct", "pytorch_nndct")


def test_unsupported_nndct_option_with_the_builtin_backend(work):
    assert_refused(work, ("--quant_mode", "calib", "--nndct_equalization", "True"), "--nndct_equalization",
                   "not supported by the built-in quantizer")


def test_bad_nndct_option_value(work):
    assert_refused(work, ("--quant_mode", "calib", "--nndct_param_corr", "maybe"), "--nndct_param_corr")


def test_unknown_option(work):
    assert_refused(work, ("--quant_mode", "calib", "--calib_rows", "3"), "unrecognized arguments: --calib_rows 3")


def test_nndct_option_turns_bias_correction_off(work):
    result = quant(work, "--quant_mode", "calib", "--nndct_param_corr", "False")
    assert result.returncode == 0, result.stderr
    info = json.loads((work / "quantize_result" / "quant_info.json").read_text())
    assert info["bias_corrected"] is False
    assert not (work / "quantize_result" / "bias_corr.pth").exists()
    golden = json.load(open(os.path.join(GOLDEN, "p2_trained_in2_nocorr", "expected", "quantize_result",
                                         "quant_info.json")))
    assert info["param"] == golden["param"] and info["output"] == golden["output"]



@pytest.mark.parametrize("args, must_contain", [
    (("--quant_mode", "test", "--save_outputs", "out.txt"), ("--save_outputs", "out.txt", ".npy")),
    (("--quant_mode", "calib", "--save_outputs", "out.npy"), ("--save_outputs needs --quant_mode float or test",)),
    (("--quant_mode", "float", "--fast_finetune"), ("--fast_finetune needs --quant_mode calib or test",)),
    (("--quant_mode", "calib", "--seed", "-1"), ("--seed",)),
    (("--quant_mode", "calib", "--output_dir", "/sys/kernel/q"), ("/sys/kernel/q", "cannot create")),
])
def test_flags_the_mode_would_ignore_or_cannot_write(work, args, must_contain):
    assert_refused(work, args, *must_contain)


def test_calibration_data_beyond_float32(work):
    rows = np.load(os.path.join(P1, "calib.npy"))
    rows[4, 0] = 1e300     # finite in the float64 file, infinite as the model's float32
    assert_refused(work, write_calib(work, rows), "bad.npy", "beyond the float32 range", "row 4")


def test_calibration_that_needs_positions_beyond_the_file_limits_writes_nothing(work):
    rows = np.load(os.path.join(P1, "calib.npy"))
    rows[:, :2] *= 1e30
    assert_refused(work, write_calib(work, rows), "quant_info.json", "outside [-64, 64]")


def test_calibration_of_tiny_values_caps_the_positions(work):
    rows = np.load(os.path.join(P1, "calib.npy"))
    rows[:, :2] *= 1e-42   # below 2^-128: every candidate position is past the cap of 12
    result = quant(work, *write_calib(work, rows))
    assert result.returncode == 0, result.stderr
    info = json.loads((work / "quantize_result" / "quant_info.json").read_text())
    assert info["output"]["FFN::nndct_input_0"] == [[8, 12]]


def test_linear_without_bias_is_refused():
    from flow.checked_io import InputError
    from vaiq.trace import trace_chain
    with pytest.raises(InputError, match="l2 is an nn.Linear without bias"):
        trace_chain(_no_bias_model())


def _no_bias_model():
    import torch.nn as nn

    class NoBias(nn.Module):
        def __init__(self):
            super().__init__()
            self.l1, self.l2 = nn.Linear(2, 3), nn.Linear(3, 1, bias=False)

        def forward(self, x):
            return self.l2(self.l1(x).relu())
    return NoBias()


@pytest.mark.parametrize("args, must_contain", [
    (("--quant_mode", "test", "--deploy", "--deploy_batch", "0"), ("--deploy_batch", "must be positive")),
    (("--quant_mode", "test", "--deploy", "--deploy_batch", "-4"), ("--deploy_batch", "must be positive")),
    (("--quant_mode", "test", "--deploy", "--deploy_batch", "1001"), ("--deploy_batch 1001", "test.npy",
                                                                      "only 1000 rows")),
    (("--quant_mode", "test", "--deploy_batch", "4"), ("--deploy_batch needs --deploy",)),
])
def test_bad_deploy_batch(work, args, must_contain):
    assert_refused(work, args, *must_contain)
