"""Fast finetune of the built-in quantizer: calib --fast_finetune, then test and deploy."""
import json
import os

import numpy as np
import pytest
import torch

from flow.checked_io import load_torch_file
from test_quantizer_golden import GOLDEN, run_quant
from dpu import reference
from vaiq.legalize import check_positions
from dpu.xmodel import read_xmodel
from conftest import X86_GOLDEN

pytestmark = X86_GOLDEN

CASE = "p1_trained_in2"


def features_and_targets():
    rows = np.load(os.path.join(GOLDEN, CASE, "calib.npy"))
    return rows[:, :2].astype(np.float32), rows[:, 2].astype(np.float32)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Default and finetuned runs of the same case: {name: folder}."""
    root = tmp_path_factory.mktemp("finetune")
    with pytest.MonkeyPatch.context() as mp:
        run_quant(mp, CASE, root / "default", "--quant_mode", "calib")
        run_quant(mp, CASE, root / "default", "--quant_mode", "test", "--save_outputs", str(root / "default.npy"))
        for name in ("ft", "ft_again"):
            run_quant(mp, CASE, root / name, "--quant_mode", "calib", "--fast_finetune")
        run_quant(mp, CASE, root / "ft", "--quant_mode", "test", "--fast_finetune",
                  "--save_outputs", str(root / "ft.npy"))
        run_quant(mp, CASE, root / "ft", "--quant_mode", "test", "--fast_finetune", "--deploy")
    return root


def test_quant_info_says_finetuned_and_keeps_the_calibrated_positions(results):
    default = json.load(open(str(results / "default" / "quant_info.json")))
    ft = json.load(open(str(results / "ft" / "quant_info.json")))
    assert ft["fast_finetuned"] is True and default["fast_finetuned"] is False
    assert ft["param"] == default["param"] and ft["output"] == default["output"]


def test_finetuned_model_is_better_on_the_calibration_rows(results):
    _, y = features_and_targets()
    default = np.mean((np.load(str(results / "default.npy"))[:, 0] - y) ** 2)
    ft = np.mean((np.load(str(results / "ft.npy"))[:, 0] - y) ** 2)
    assert ft < 0.9 * default


def test_finetuned_parameters_are_on_their_grids_and_the_shifts_legal(results):
    model = read_xmodel(str(results / "ft" / "FFN_int.xmodel"))   # the reader refuses off-grid consts
    info = json.load(open(str(results / "ft" / "quant_info.json")))
    for layer, name in zip(model.layers, ("l1", "l2", "l3")):
        assert layer.fp_w == info["param"]["FFN::{}.weight".format(name)][0][1]
        assert layer.fp_b == info["param"]["FFN::{}.bias".format(name)][0][1]
        assert layer.weight.dtype == np.int8
    from vaiq.trace import trace_chain
    from model import FFN
    positions = {section: {k: v[0][1] for k, v in info[section].items()} for section in ("param", "output")}
    assert check_positions(trace_chain(FFN(2)), positions) == []


def test_test_mode_reproduces_the_calib_mode_finetuned_outputs(tmp_path):
    """In one calib process, the quantized model after fast_finetune; in test mode,
    the same model from quant_info.json + param.pth: identical outputs."""
    import copy
    from model import FFN
    from vaiq import torch_quantizer
    x, _ = features_and_targets()
    x = torch.from_numpy(x)
    float_model = FFN(2)
    float_model.load_state_dict(load_torch_file(os.path.join(GOLDEN, CASE, "float_state_dict.pth")))
    calib = torch_quantizer("calib", copy.deepcopy(float_model), (x[:1],), output_dir=str(tmp_path))
    with torch.no_grad():
        for start in range(0, len(x), 64):
            calib.quant_model(x[start:start + 64])

    def run(model, inputs):
        with torch.no_grad():
            return torch.mean((model(inputs).flatten()) ** 2).item()

    calib.fast_finetune(run, (calib.quant_model, x))
    with torch.no_grad():
        calib_outputs = calib.quant_model(x)
    calib.export_quant_config()
    test = torch_quantizer("test", float_model, (x[:1],), output_dir=str(tmp_path))
    test.load_ft_param()
    with torch.no_grad():
        assert torch.equal(test.quant_model(x), calib_outputs)


def test_deploy_of_a_finetuned_model_passes_the_integer_reference(results):
    x, _ = features_and_targets()
    model = read_xmodel(str(results / "ft" / "FFN_int.xmodel"))
    assert reference.outputs(model, x).tobytes() == np.load(str(results / "ft.npy")).tobytes()
    checks = reference.compare_dumps(reference.deploy_dumps(model, x[0]),
                               str(results / "ft" / "deploy_check_data_int" / "FFN"))
    assert [c.describe() for c in checks if not c.ok] == []


def test_fast_finetune_is_deterministic(results):
    for name in ("param.pth", "quant_info.json", "bias_corr.pth"):
        assert (results / "ft" / name).read_bytes() == (results / "ft_again" / name).read_bytes()


def test_test_mode_fast_finetune_needs_a_finetuned_calibration(results, monkeypatch):
    from flow.checked_io import InputError
    with pytest.raises(InputError, match="calibrated without --fast_finetune, this run is with it"):
        run_quant(monkeypatch, CASE, results / "default", "--quant_mode", "test", "--fast_finetune", "--evaluate")
