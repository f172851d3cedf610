"""Fast finetune of the built-in quantizer: calib --fast_finetune, then test and deploy;
against the real vai_q_pytorch 3.5's fast finetune, bit for bit (tests/fixtures/finetune,
made by tools/make_finetune_fixtures.py)."""
import json
import os
import sys

import numpy as np
import pytest
import torch

import vai_q_pytorch_quant
from flow.checked_io import load_torch_file
from test_quantizer_golden import GOLDEN, run_quant
from dpu import reference
from vaiq.legalize import check_positions
from dpu.xmodel import read_xmodel
from conftest import GOLDEN_SQRT, X86_GOLDEN

pytestmark = X86_GOLDEN

CASE = "p1_trained_in2"
FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "finetune")
FT_CASES = sorted(c for c in os.listdir(FIXTURES) if os.path.isfile(os.path.join(FIXTURES, c, "case.json")))


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


def run_case(monkeypatch, case, out, *args):
    """The script's main on a fixture case, built-in backend."""
    folder = os.path.join(FIXTURES, case)
    info = json.load(open(os.path.join(folder, "case.json")))
    argv = ["--data_dir", os.path.join(folder, info["data_dir"]), "--calib_data", info["calib_data"],
            "--checkpoint_dir", os.path.join(folder, info["checkpoint_dir"]), "--model_name", info["model_name"],
            "--input_size", str(info["input_size"]), "--batch_size", str(info["batch_size"]),
            "--output_dir", str(out), "--backend", "builtin"] + list(args) + info["nndct_options"]
    monkeypatch.setattr(sys, "argv", ["vai_q_pytorch_quant.py"] + argv)
    assert vai_q_pytorch_quant.main(argv) == 0


def recording_passes(mp, arrays):
    """Hooks on vaiq.finetune that fill `arrays` as the fixtures' passes.npz is filled."""
    from vaiq import finetune
    train_pass, network_loss = finetune.train_pass, finetune.network_loss
    layers, losses = [], []

    def record_pass(layer, weight, bias, *args):
        train_pass(layer, weight, bias, *args)
        if not layers or layers[-1][0] is not layer:
            layers.append([layer, 0])
        name = "layer{}_pass{}_".format(len(layers) - 1, layers[-1][1])
        arrays[name + "weight"], arrays[name + "bias"] = weight.detach().numpy().copy(), bias.detach().numpy().copy()
        layers[-1][1] += 1

    def record_loss(*args):
        losses.append(network_loss(*args))
        arrays["net_losses"] = np.array(losses, dtype=np.float64)
        return losses[-1]
    mp.setattr(finetune, "train_pass", record_pass)
    mp.setattr(finetune, "network_loss", record_loss)


@pytest.fixture(scope="module", params=FT_CASES)
def finetuned(request, tmp_path_factory):
    """(fixture folder, built-in output folder) after calib and test with --fast_finetune;
    the built-in's passes (as passes.npz) in the output folder's passes.npz."""
    out = tmp_path_factory.mktemp(request.param)
    with pytest.MonkeyPatch.context() as mp:
        arrays = {}
        recording_passes(mp, arrays)
        run_case(mp, request.param, out, "--quant_mode", "calib", "--fast_finetune")
        np.savez(str(out / "passes.npz"), **arrays)
        run_case(mp, request.param, out, "--quant_mode", "test", "--fast_finetune",
                 "--save_outputs", str(out / "test_outputs.npy"))
    return os.path.join(FIXTURES, request.param, "expected"), out


def test_finetuned_parameters_are_the_real_ones(finetuned):
    """param.pth: the same values, layer by layer (the real one names the layers module_1, ...)."""
    expected, out = finetuned
    real = list(load_torch_file(os.path.join(expected, "param.pth")).values())
    ours = list(load_torch_file(str(out / "param.pth")).values())
    assert len(ours) == len(real)
    for a, b in zip(ours, real):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.numpy().tobytes() == b.numpy().tobytes()


@GOLDEN_SQRT
def test_every_pass_is_the_real_ones(finetuned):
    """Inside fast finetune: each layer's parameters at the end of every pass, before
    rounding, and the network loss of every evaluation, to the last bit."""
    expected, out = finetuned
    with open(os.path.join(expected, "quant_info.json")) as f:
        made_with = json.load(f)["version"].split("+torch")[-1].split("+")[0]
    if torch.__version__.split("+")[0] != made_with:   # Adam's and autograd's last bits follow torch's release
        pytest.skip("passes.npz was made on torch {}, this is {} (the results after rounding are compared "
                    "on every torch)".format(made_with, torch.__version__))
    real, ours = np.load(os.path.join(expected, "passes.npz")), np.load(str(out / "passes.npz"))
    assert sorted(ours.files) == sorted(real.files)
    for name in real.files:
        assert ours[name].dtype == real[name].dtype and ours[name].tobytes() == real[name].tobytes(), name


def test_finetuned_quant_info_and_bias_corr_are_the_real_ones(finetuned):
    expected, out = finetuned

    def lines(path):
        return [line for line in open(path).read().splitlines() if '"version"' not in line]
    assert lines(str(out / "quant_info.json")) == lines(os.path.join(expected, "quant_info.json"))
    real_corr = os.path.join(expected, "bias_corr.pth")
    assert os.path.isfile(real_corr) == (out / "bias_corr.pth").is_file()
    if os.path.isfile(real_corr):   # float bias - finetuned bias, in graph order
        assert list(load_torch_file(str(out / "bias_corr.pth")).values()) == \
            list(load_torch_file(real_corr).values())


def test_finetuned_test_outputs_are_the_real_ones(finetuned):
    expected, out = finetuned
    assert np.load(str(out / "test_outputs.npy")).tobytes() == \
        np.load(os.path.join(expected, "test_outputs.npy")).tobytes()


@pytest.fixture(scope="module", params=FT_CASES)
def finetuned25(request, tmp_path_factory):
    """(expected25 folder, built-in output folder) of calib and test with --fast_finetune
    and --vai_release 2.5: the real 2.5's fast finetune is 3.5's, at 2.5's correction rate
    (it runs once given the batch size its hook misses: quantization/backend.py)."""
    out = tmp_path_factory.mktemp(request.param + "_25")
    with pytest.MonkeyPatch.context() as mp:
        run_case(mp, request.param, out, "--quant_mode", "calib", "--fast_finetune", "--vai_release", "2.5")
        run_case(mp, request.param, out, "--quant_mode", "test", "--fast_finetune", "--vai_release", "2.5",
                 "--save_outputs", str(out / "test_outputs.npy"))
    return os.path.join(FIXTURES, request.param, "expected25"), out


def test_release_2_5_fast_finetune_is_the_real_2_5s(finetuned25):
    """param.pth and bias_corr.pth values in graph order (2.5 names them its own way), and
    the test outputs, to the last bit."""
    expected, out = finetuned25
    for name in ("param.pth", "bias_corr.pth"):
        real_file = os.path.join(expected, name)
        assert os.path.isfile(real_file) == (out / name).is_file(), name
        if os.path.isfile(real_file):
            real = list(load_torch_file(real_file).values())
            ours = list(load_torch_file(str(out / name)).values())
            assert len(ours) == len(real)
            for a, b in zip(ours, real):
                a, b = (a.numpy(), b.numpy()) if hasattr(a, "numpy") else (np.array(a), np.array(b))
                assert a.shape == b.shape and a.tobytes() == b.tobytes(), name
    assert np.load(str(out / "test_outputs.npy")).tobytes() == \
        np.load(os.path.join(expected, "test_outputs.npy")).tobytes()


def test_on_p1_the_real_finetune_gives_the_default_test_outputs():
    """A fact of the fixtures: on p1 no pass of the real 3.5 lowers the network loss, so
    every layer keeps its calibrated parameters and test mode (which subtracts
    bias_corr.pth, float bias - finetuned bias, from them) gives the default
    calibration's outputs, bit for bit."""
    ft = np.load(os.path.join(FIXTURES, CASE, "expected", "test_outputs.npy"))
    default = np.load(os.path.join(GOLDEN, CASE, "expected", "test_outputs.npy"))
    assert ft.tobytes() == default.tobytes()


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
