"""report.py on the golden case p1: the page, its tables and plots, and how it fails."""
import json
import os

import numpy as np
import pytest

from flow.checked_io import InputError
from conftest import assert_clean_error, run_script, snapshot

import report
from reporting import page

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "golden")
CASE = os.path.join(GOLDEN, "p1_trained_in2")
EXPECTED = os.path.join(CASE, "expected")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

TRAIN_CSV = "step,loss,r2\n1,0.04,0.93\n2,4.6e-05,0.9999\n3,3.1e-05,0.99995\n"
VALID_CSV = "step,loss,r2\n1,7.5e-05,0.9998\n2,2.0e-05,0.99996\n3,2.3e-05,0.99996\n"


def golden_args(tmp_path, **changes):
    """Command-line flags for the golden case: its rows, checkpoint and xmodel, fake logs, output in tmp_path."""
    logs = tmp_path / "logs"
    if not logs.exists():
        logs.mkdir()
        (logs / "train.csv").write_text(TRAIN_CSV)
        (logs / "valid.csv").write_text(VALID_CSV)
    flags = {"data_dir": CASE, "eval_data": "calib.npy", "input_size": 2, "checkpoint_dir": CASE,
             "model_name": "float_state_dict.pth", "log_dir": logs,
             "quant_dir": os.path.join(EXPECTED, "quantize_result"), "output_dir": tmp_path / "report",
             "qat_dir": tmp_path / "no_qat_result"}
    flags.update(changes)
    return [str(item) for key, value in flags.items() for item in ("--" + key, value)]


def markdown_table(text, first_header):
    """[{column: cell}] of the Markdown table whose first column is `first_header`."""
    lines = text.splitlines()
    start = next(k for k, line in enumerate(lines) if line.startswith("| {} |".format(first_header)))
    header = [cell.strip() for cell in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")))))
    return rows


def golden_mse(outputs_file):
    """MSE of a golden outputs file against the targets, which the flow reads as float32."""
    outputs = np.load(os.path.join(EXPECTED, outputs_file)).astype(np.float64).ravel()
    targets = np.load(os.path.join(CASE, "calib.npy"))[:, -1].astype(np.float32).astype(np.float64)
    return float(np.mean((outputs - targets) ** 2))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The report run twice into the same folder: (first files, second files, second process)."""
    tmp_path = tmp_path_factory.mktemp("report")
    args = golden_args(tmp_path)
    first = run_script("report.py", *args, cwd=str(tmp_path))
    assert first.returncode == 0, first.stderr
    before = snapshot(str(tmp_path / "report"))
    second = run_script("report.py", *args, cwd=str(tmp_path))
    assert second.returncode == 0, second.stderr
    return before, snapshot(str(tmp_path / "report")), second


def test_report_holds_the_page_and_the_linked_plots(runs):
    _, files, _ = runs
    assert sorted(files) == ["README.md", "errors.png", "loss.png", "predictions.png"]
    page = files["README.md"].decode("utf-8")
    for name, data in files.items():
        if name.endswith(".png"):
            assert data.startswith(PNG_SIGNATURE), name
            assert len(data) > 10000, name
            assert "]({})".format(name) in page, name


def test_layer_table_holds_the_golden_positions_and_shifts(runs):
    _, files, _ = runs
    rows = {row["layer"]: row for row in markdown_table(files["README.md"].decode("utf-8"), "layer")}
    assert rows["l1"]["input"] == "6" and rows["l1"]["weight"] == "7" and rows["l1"]["bias"] == "7"
    assert rows["l1"]["output"] == "6" and rows["l1"]["shift_cut"] == "7" and rows["l1"]["shift_bias"] == "6"
    with open(os.path.join(EXPECTED, "summary.json")) as f:
        golden = json.load(f)["layers"]
    assert sorted(rows) == sorted(golden)
    for name, layer in golden.items():
        found = {key: int(rows[name][column]) for key, column in (
            ("fp_in", "input"), ("fp_w", "weight"), ("fp_b", "bias"), ("fp_out", "output"),
            ("shift_cut", "shift_cut"), ("shift_bias", "shift_bias"))}
        assert found == {key: layer[key] for key in found}, name
        assert rows[name]["shift_cut range"] == "0..16"
        assert rows[name]["DPU"] == "ok"


def test_metrics_table_holds_the_quantizer_test_mode_mse(runs):
    _, files, _ = runs
    rows = {row["model"]: row for row in markdown_table(files["README.md"].decode("utf-8"), "model")}
    assert float(rows["int8"]["mse"]) == pytest.approx(golden_mse("test_outputs.npy"), rel=1e-6)
    assert float(rows["float"]["mse"]) == pytest.approx(golden_mse("float_outputs.npy"), rel=1e-6)
    assert float(rows["float"]["r^2"]) > float(rows["int8"]["r^2"]) > 0.99


def test_summary_line_says_where_and_what(runs):
    _, _, second = runs
    assert second.stdout.count("\n") == 1
    assert "README.md" in second.stdout and "calib.npy" in second.stdout and "int8" in second.stdout


def test_rerun_gives_the_same_bytes(runs):
    before, after, _ = runs
    assert after["README.md"] == before["README.md"]
    # No version or date in the PNGs either, so the plots are the same bytes too.
    for name in before:
        assert after[name] == before[name], name


def test_missing_xmodel_is_a_clean_error_and_writes_nothing(tmp_path):
    empty = tmp_path / "quantize_result"
    empty.mkdir()
    result = run_script("report.py", *golden_args(tmp_path, quant_dir=empty), cwd=str(tmp_path))
    assert_clean_error(result, "FFN_int.xmodel", "--quant_mode test --deploy")
    assert not (tmp_path / "report").exists()
    assert sorted(os.listdir(str(tmp_path))) == ["logs", "quantize_result"]


def test_missing_logs_are_noted_and_the_rest_is_made(tmp_path, capsys):
    assert report.main(golden_args(tmp_path, log_dir=tmp_path / "no_logs")) == 0
    out = tmp_path / "report"
    assert sorted(os.listdir(str(out))) == ["README.md", "errors.png", "predictions.png"]
    page = (out / "README.md").read_text()
    assert "no_logs/train.csv` not found" in page and "no_logs/valid.csv` not found" in page
    assert "loss.png" not in page and "| int8 |" in page
    assert "no training logs" in capsys.readouterr().out


def test_bad_log_names_the_file(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "train.csv").write_text("step,loss,r2\n1,abc,0.5\n")
    with pytest.raises(InputError, match="train.csv: line 2"):
        report.main(golden_args(tmp_path))
    assert not (tmp_path / "report").exists()


def test_interrupted_run_leaves_the_old_report(tmp_path, monkeypatch, capsys):
    args = golden_args(tmp_path)
    report.main(args)
    before = snapshot(str(tmp_path))

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "plot_errors", interrupted)
    with pytest.raises(KeyboardInterrupt):
        report.main(golden_args(tmp_path, log_dir=tmp_path / "no_logs"))
    assert snapshot(str(tmp_path)) == before


def test_folder_with_other_files_is_not_replaced(tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="notes.txt"):
        report.main(golden_args(tmp_path))
    assert os.listdir(str(out)) == ["notes.txt"]


def test_layer_table_of_a_batchnorm_leaky_model():
    """Whatever model.py builds: every op of the xmodel, its activation, scale ops not legalized."""
    from dpu.xmodel import read_xmodel
    layers = os.path.join(os.path.dirname(__file__), "fixtures", "golden", "layers")
    model = read_xmodel(os.path.join(layers, "V5", "expected", "quantize_result", "FFN_V5_int.xmodel"))
    lines, n_bad = page.layer_table(model)
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert [(c[0], c[1], c[2]) for c in cells] == [("l1", "matmul", "none"), ("bn1", "scale", "relu"),
                                                    ("l2", "matmul", "none"), ("bn2", "scale", "relu"),
                                                    ("l3", "matmul", "none")]
    assert n_bad == 0 and cells[1][-1] == "scale: not legalized, placed by the compiler"
    assert [c[3] for c in cells] == ["5", "5", "5", "6", "4"]   # each op's input position


@pytest.mark.parametrize("shape", [(1000, 3), (1000, 2)])
def test_hls_outputs_with_other_columns_name_the_expected_shape(tmp_path, shape):
    """Not "input_size 0 + 1 target": the C-simulation outputs are one column."""
    hls = tmp_path / "hls.npy"
    np.save(str(hls), np.zeros(shape, dtype=np.float32))
    result = run_script("report.py", *golden_args(tmp_path, hls_outputs=hls), cwd=str(tmp_path))
    assert_clean_error(result, "{}: has {} columns, expected 1 (one output per row: shape (rows, 1), as "
                               "hls4ml_project.py --save_outputs writes it)".format(hls, shape[1]))
    assert "input_size" not in result.stderr
    assert not (tmp_path / "report").exists()


def test_a_qat_result_adds_its_loss_curve_and_its_row(tmp_path):
    """The committed qat_result/: its train.csv and valid.csv plotted, its xmodel's int8 MSE
    on the rows beside the PTQ one's, from the integer reference."""
    from conftest import REPO
    from dpu import reference
    from dpu.xmodel import read_xmodel

    qat = os.path.join(REPO, "qat_result")
    assert report.main(golden_args(tmp_path, qat_dir=qat)) == 0
    assert (tmp_path / "report" / "qat_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (tmp_path / "report" / "README.md").read_text()
    assert "![QAT loss per epoch](qat_loss.png)" in text
    rows = {row["model"]: row for row in markdown_table(text, "model")}
    data = np.load(os.path.join(CASE, "calib.npy"))
    outputs = reference.outputs(read_xmodel(os.path.join(qat, "FFN_0_int.xmodel")), data[:, :2].astype(np.float32))
    mse = float(np.mean((outputs[:, 0].astype(np.float64) - data[:, 2].astype(np.float32).astype(np.float64)) ** 2))
    assert float(rows["int8 QAT ({})".format(os.path.join(qat, "FFN_0_int.xmodel"))]["mse"]) == \
        pytest.approx(mse, rel=1e-5)
