"""simulate.py on the golden xmodels: the outputs, the MSE and the deploy check,
and one-line errors for bad input."""
import os
import re
import shutil

import numpy as np
import pytest
from conftest import REPO, assert_clean_error, run_script

GOLDEN = os.path.join(REPO, "tests", "fixtures", "golden")
# p4 was deployed at batch 4: its dumps hold rows 0 to 3 of calib.npy.
CASES = ["p1_trained_in2", "p2_trained_in2_nocorr", "p3_random_in4", "p4_trained_in2_deploy4"]


def case_paths(case):
    result = os.path.join(GOLDEN, case, "expected", "quantize_result")
    return (os.path.join(result, "FFN_int.xmodel"), os.path.join(GOLDEN, case, "calib.npy"),
            os.path.join(result, "deploy_check_data_int", "FFN"))


def simulate(*args):
    return run_script("simulate.py", *args, timeout=120)


def printed_mse(stdout):
    """The MSE of the summary line, as printed: six digits after the point, like every stage."""
    text = re.search(r"MSE (\S+?),", stdout.splitlines()[-1]).group(1)
    assert re.match(r"^\d\.\d{6}e[-+]\d\d$", text), text
    return text


@pytest.mark.parametrize("case", CASES)
def test_golden_xmodel_matches_quantizer(case, tmp_path):
    xmodel, data, dumps = case_paths(case)
    out = tmp_path / "outputs.npy"
    run = simulate(xmodel, "--data", data, "--check", dumps, "--output", out, "--verbose")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    tensor_lines = [line for line in lines if line.startswith("  ")]
    assert len(tensor_lines) == 22 and all(line.endswith(": ok") for line in tensor_lines)
    assert "all 22 tensors match" in lines[-1]
    quiet = simulate(xmodel, "--data", data, "--check", dumps)   # without --verbose: the summary alone
    assert quiet.returncode == 0 and quiet.stdout.splitlines() == [lines[-1].replace(", outputs in {}".format(out), "")]
    expected = np.load(os.path.join(GOLDEN, case, "expected", "test_outputs.npy"))
    got = np.load(str(out))
    assert got.dtype == np.float32 and np.array_equal(got, expected)
    targets = np.load(data)[:, -1]
    mse = float(np.mean((expected[:, 0].astype(np.float64) - targets) ** 2))
    assert printed_mse(run.stdout) == "{:.6e}".format(mse)


def test_shipped_mse_as_printed():
    run = simulate(os.path.join(REPO, "quantize_result", "FFN_int.xmodel"), "--data",
                   os.path.join(REPO, "data", "test.npy"))
    assert run.returncode == 0, run.stderr
    assert "MSE 1.374880e-04" in run.stdout.splitlines()[-1]


def test_check_accepts_the_parent_folder_and_input_size():
    xmodel, data, dumps = case_paths("p3_random_in4")
    run = simulate(xmodel, "--data", data, "--check", os.path.dirname(dumps), "--input_size", 4)
    assert run.returncode == 0, run.stderr
    assert "all 22 tensors match" in run.stdout


def test_a_differing_dump_fails(tmp_path):
    xmodel, data, dumps = case_paths("p1_trained_in2")
    folder = str(tmp_path / "FFN")
    shutil.copytree(dumps, folder)
    fix = os.path.join(folder, "FFN__FFN_ret_7_fix.bin")
    q = np.fromfile(fix, dtype=np.int8)
    q[0] -= 1
    q.tofile(fix)
    run = simulate(xmodel, "--data", data, "--check", folder)
    assert run.returncode == 1
    assert "  FFN__FFN_ret_7_fix.bin: 1 of 4 values differ, max diff 1" in run.stdout.splitlines()
    assert "1 of 22 tensors differ" in run.stdout.splitlines()[-1]


@pytest.mark.parametrize("case, question", [
    ("p1_trained_in2", "is row 0 of the data the deploy row?"),
    ("p4_trained_in2_deploy4", "are rows 0 to 3 of the data the deploy rows?"),   # batch 4
])
def test_data_not_starting_with_the_deploy_rows_fails(case, question, tmp_path):
    xmodel, data, dumps = case_paths(case)
    shifted = str(tmp_path / "shifted.npy")
    np.save(shifted, np.load(data)[1:])
    run = simulate(xmodel, "--data", shifted, "--check", dumps)
    assert run.returncode == 1
    assert question in run.stdout.splitlines()[-1]


def test_batch_4_deploy_check_compares_all_4_rows(tmp_path):
    """Row 3 alone changed: the check sees it, so it does not stop at row 0."""
    xmodel, data, dumps = case_paths("p4_trained_in2_deploy4")
    changed = str(tmp_path / "changed.npy")
    rows = np.load(data)
    rows[3, 0] += 0.5
    np.save(changed, rows)
    run = simulate(xmodel, "--data", changed, "--check", dumps)
    assert run.returncode == 1
    assert "  FFN__input_0_fix.bin: 1 of 8 values differ, max diff 32" in run.stdout.splitlines()


def test_fewer_rows_than_the_batch(tmp_path):
    xmodel, data, dumps = case_paths("p4_trained_in2_deploy4")
    three = str(tmp_path / "three.npy")
    np.save(three, np.load(data)[:3])
    out = tmp_path / "out.npy"
    run = simulate(xmodel, "--data", three, "--check", dumps, "--output", out)
    assert_one_line_error(run, three, "has 3 rows, fewer than the xmodel's batch 4")
    assert not out.exists()
    # Without --check the batch does not matter: every row runs.
    run = simulate(xmodel, "--data", three)
    assert run.returncode == 0 and "3 rows" in run.stdout, run.stderr


def assert_one_line_error(run, *fragments):
    assert_clean_error(run, *fragments)
    assert run.returncode == 2      # an input error, not a deploy-check mismatch (1)


def test_missing_xmodel(tmp_path):
    _, data, _ = case_paths("p1_trained_in2")
    missing = str(tmp_path / "none.xmodel")
    assert_one_line_error(simulate(missing, "--data", data), missing, "not found")


def test_data_with_wrong_columns():
    xmodel, _, _ = case_paths("p1_trained_in2")
    _, data_in4, _ = case_paths("p3_random_in4")
    assert_one_line_error(simulate(xmodel, "--data", data_in4), data_in4, "has 5 columns, expected 3")


def test_missing_check_folder(tmp_path):
    xmodel, data, _ = case_paths("p1_trained_in2")
    missing = str(tmp_path / "no_dumps")
    assert_one_line_error(simulate(xmodel, "--data", data, "--check", missing), missing, "not found")


def test_check_folder_without_dumps(tmp_path):
    xmodel, data, _ = case_paths("p1_trained_in2")
    assert_one_line_error(simulate(xmodel, "--data", data, "--check", tmp_path), str(tmp_path), "no .bin")


def test_input_size_disagreeing_with_the_xmodel():
    xmodel, data, _ = case_paths("p1_trained_in2")
    assert_one_line_error(simulate(xmodel, "--data", data, "--input_size", 4), xmodel, "takes 2 inputs")


def test_output_must_be_npy(tmp_path):
    xmodel, data, _ = case_paths("p1_trained_in2")
    out = str(tmp_path / "out.txt")
    assert_one_line_error(simulate(xmodel, "--data", data, "--output", out), out, ".npy")
    assert not os.path.exists(out)


def test_corrupt_xmodel(tmp_path):
    _, data, _ = case_paths("p1_trained_in2")
    bad = tmp_path / "bad.xmodel"
    bad.write_bytes(b"\xff\xff\xff\xff not a protobuf")
    assert_one_line_error(simulate(bad, "--data", data), str(bad))


def test_an_input_beyond_int32_in_the_deploy_row_is_explained(tmp_path):
    """p6's row 128 holds 1e9: deployed on that row, the quantizer's input dump holds -128
    (as vai_q_pytorch), the DPU reference 127; the comparison says why."""
    p6 = os.path.join(GOLDEN, "p6_int32_overflow")
    rows = np.load(os.path.join(p6, "calib.npy"))
    (tmp_path / "data").mkdir()
    np.save(str(tmp_path / "data" / "test.npy"), rows[128:])
    out = tmp_path / "quantize_result"
    common = ["--data_dir", str(tmp_path / "data"), "--checkpoint_dir", p6, "--model_name", "float_state_dict.pth",
              "--input_size", "1", "--batch_size", "64", "--output_dir", str(out), "--backend", "builtin",
              "--nndct_param_corr", "False"]
    shutil.copytree(os.path.join(p6, "expected", "quantize_result"), str(out))
    deployed = run_script("vai_q_pytorch_quant.py", *(common + ["--quant_mode", "test", "--deploy"]))
    assert deployed.returncode == 0, deployed.stderr
    assert "became -128" in deployed.stdout
    result = simulate(str(out / "FFN_int.xmodel"), "--data", str(tmp_path / "data" / "test.npy"),
                      "--check", str(out / "deploy_check_data_int"))
    assert result.returncode == 1
    assert ("row 0 holds an input beyond int32 at fix position 5: vai_q_pytorch turns it into -128, "
            "the DPU (and this reference) saturate it to 127") in result.stdout.splitlines()[-1]
