"""FFN variants (LeakyReLU, ReLU6, BatchNorm1d, Dropout, depth, nn.Sequential) through
the built-in quantizer against the real vai_q_pytorch 3.5 (fixtures/golden/layers/),
with the golden protocol: calib, test and deploy on a copy of the model, a torch.randn
trace input after torch.manual_seed(0), batches of 100 under torch.no_grad()."""
import copy
import json
import os
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from flow.checked_io import load_torch_file
from dpu import reference
from vaiq import torch_quantizer
from dpu.xmodel import graph_summary, read_graph, read_xmodel
from conftest import X86_GOLDEN

pytestmark = X86_GOLDEN

LAYERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "golden", "layers")
CASES = sorted(c for c in os.listdir(LAYERS) if os.path.isfile(os.path.join(LAYERS, c, "case.json")))
BATCH = 100


class _Base(nn.Module):
    def __init__(self, n, widths=None):
        super().__init__()
        widths = widths or [n, 3 * n, 2 * n, 1]
        for k in range(len(widths) - 1):
            setattr(self, "l{}".format(k + 1), nn.Linear(widths[k], widths[k + 1]))


class FFN(_Base):
    def forward(self, inputs):
        return self.l3(F.relu(self.l2(F.relu(self.l1(inputs)))))


class FFN_V1(_Base):  # noqa: N801 - the class name is the net name
    def __init__(self, n):
        super().__init__(n)
        self.act1, self.act2 = nn.LeakyReLU(0.1), nn.LeakyReLU(0.1)

    def forward(self, inputs):
        return self.l3(self.act2(self.l2(self.act1(self.l1(inputs)))))


class FFN_V2(_Base):  # noqa: N801
    def forward(self, inputs):
        return self.l3(F.leaky_relu(self.l2(F.leaky_relu(self.l1(inputs), 0.01)), 0.01))


class FFN_V3(_Base):  # noqa: N801
    def __init__(self, n):
        super().__init__(n)
        self.act1, self.act2 = nn.ReLU6(), nn.ReLU6()

    def forward(self, inputs):
        return self.l3(self.act2(self.l2(self.act1(self.l1(inputs)))))


class FFN_V3b(_Base):  # noqa: N801
    def forward(self, inputs):
        return self.l3(F.relu6(self.l2(F.relu6(self.l1(inputs)))))


class FFN_V5(_Base):  # noqa: N801
    def __init__(self, n):
        super().__init__(n)
        self.bn1, self.bn2 = nn.BatchNorm1d(3 * n), nn.BatchNorm1d(2 * n)

    def forward(self, inputs):
        return self.l3(F.relu(self.bn2(self.l2(F.relu(self.bn1(self.l1(inputs)))))))


class FFN_V6(_Base):  # noqa: N801
    def __init__(self, n):
        super().__init__(n)
        self.drop1, self.drop2 = nn.Dropout(0.2), nn.Dropout(0.2)

    def forward(self, inputs):
        return self.l3(self.drop2(F.relu(self.l2(self.drop1(F.relu(self.l1(inputs)))))))


class FFN_V9(_Base):  # noqa: N801
    def __init__(self, n):
        super().__init__(n, [n, 3 * n, 3 * n, 2 * n, 2 * n, 1])

    def forward(self, inputs):
        x = inputs
        for k in range(1, 5):
            x = F.relu(getattr(self, "l{}".format(k))(x))
        return self.l5(x)


def sequential(n):
    return nn.Sequential(nn.Linear(n, 3 * n), nn.ReLU(), nn.Linear(3 * n, 2 * n), nn.ReLU(), nn.Linear(2 * n, 1))


MODELS = {"plain": FFN, "leaky_module": FFN_V1, "leaky_functional": FFN_V2, "relu6_module": FFN_V3,
          "relu6_functional": FFN_V3b, "batchnorm": FFN_V5, "dropout": FFN_V6, "depth5": FFN_V9,
          "sequential": sequential}


def info(case):
    with open(os.path.join(LAYERS, case, "case.json")) as f:
        return json.load(f)


def golden(case, *parts):
    return os.path.join(LAYERS, case, "expected", *parts)


def load_model(case):
    meta = info(case)
    model = MODELS[meta["model"]](meta["input_size"])
    model.load_state_dict(load_torch_file(os.path.join(LAYERS, case, meta["model_name"])))
    assert type(model).__name__ == meta["net_name"]
    return model.eval()


def run_batches(quant_model, x):
    with torch.no_grad():
        return torch.cat([quant_model(b) for b in torch.split(x, BATCH)]).numpy()


def quantizer(mode, model, out, batch=BATCH):
    torch.manual_seed(0)
    trace = torch.randn(batch, info_input_size(model))
    return torch_quantizer(mode, copy.deepcopy(model), (trace,), output_dir=str(out))


def info_input_size(model):
    first = next(m for m in model.modules() if isinstance(m, nn.Linear))
    return first.in_features


@pytest.fixture(scope="module", params=CASES)
def quantized(request, tmp_path_factory):
    """A layers case after calib, test (test rows and the int8 grid) and deploy."""
    case = request.param
    out = tmp_path_factory.mktemp(case) / "quantize_result"
    model = load_model(case)
    x = torch.from_numpy(np.load(os.path.join(LAYERS, case, "calib.npy"))[:, :2].astype(np.float32))
    grid = torch.from_numpy(np.load(golden(case, "grid_inputs.npy")))
    sys_argv = sys.argv
    sys.argv = ["quant"]   # the quantizer reads --nndct_* options there; these cases use the defaults
    try:
        calib = quantizer("calib", model, out)
        run_batches(calib.quant_model, x)
        calib.export_quant_config()
        test = quantizer("test", model, out)
        test_outputs = run_batches(test.quant_model, x)
        with torch.no_grad():   # test mode is row by row: one batch gives the batches' outputs
            grid_outputs = test.quant_model(grid).numpy()
        deploy = quantizer("test", model, out, batch=1)
        with torch.no_grad():
            deploy.quant_model(x[:1])
        deploy.export_xmodel(str(out), deploy_check=True)
        deploy.export_torch_script(str(out))
        deploy.export_onnx_model(str(out))
    finally:
        sys.argv = sys_argv
    return dict(case=case, out=out, x=x.numpy(), grid=grid.numpy(), net=info(case)["net_name"],
                messages=calib.chain.messages, test_outputs=test_outputs, grid_outputs=grid_outputs)


def test_quant_info_text_equals_golden_but_the_version(quantized):
    ours = (quantized["out"] / "quant_info.json").read_text().splitlines()
    with open(golden(quantized["case"], "quantize_result", "quant_info.json")) as f:
        theirs = f.read().splitlines()
    assert [line for line in ours if '"version"' not in line] == [line for line in theirs if '"version"' not in line]


def test_bias_corr_equals_golden_to_the_last_bit(quantized):
    ours = load_torch_file(str(quantized["out"] / "bias_corr.pth"))
    theirs = load_torch_file(golden(quantized["case"], "quantize_result", "bias_corr.pth"))
    assert list(ours) == list(theirs)
    for key in theirs:
        assert np.array_equal(np.float64(ours[key]).view(np.uint64), np.float64(theirs[key]).view(np.uint64)), key


def test_test_and_grid_outputs_equal_golden(quantized):
    for name in ("test_outputs", "grid_outputs"):
        theirs = np.load(golden(quantized["case"], name + ".npy"))
        assert quantized[name].tobytes() == theirs.tobytes(), name


def test_quantizer_messages_equal_golden(quantized):
    assert quantized["messages"] == info(quantized["case"])["quantizer_messages"]


def test_xmodel_equals_golden_when_parsed(quantized):
    name = quantized["net"] + "_int.xmodel"
    assert graph_summary(read_graph(str(quantized["out"] / name))) == \
        graph_summary(read_graph(golden(quantized["case"], "quantize_result", name)))


def test_deploy_check_files_equal_golden_bytes(quantized):
    ours = quantized["out"] / "deploy_check_data_int" / quantized["net"]
    theirs = golden(quantized["case"], "quantize_result", "deploy_check_data_int", quantized["net"])
    assert sorted(os.listdir(str(ours))) == sorted(os.listdir(theirs))
    for name in os.listdir(theirs):
        with open(os.path.join(theirs, name), "rb") as f:
            assert (ours / name).read_bytes() == f.read(), name


def test_integer_reference_of_the_golden_xmodel_alone(quantized):
    """The real quantizer's xmodel on the integer DPU reference: every test and grid row,
    and every deploy dump, exactly."""
    case, net = quantized["case"], quantized["net"]
    model = read_xmodel(golden(case, "quantize_result", net + "_int.xmodel"))
    for rows, name in ((quantized["x"], "test_outputs"), (quantized["grid"], "grid_outputs")):
        assert reference.outputs(model, rows).tobytes() == np.load(golden(case, name + ".npy")).tobytes(), name
    folder = golden(case, "quantize_result", "deploy_check_data_int", net)
    dumps = reference.deploy_dumps(model, quantized["x"][:1])
    assert sorted(dumps) == sorted(f for f in os.listdir(folder) if f.endswith(".bin"))
    for name, array in dumps.items():
        with open(os.path.join(folder, name), "rb") as f:
            assert f.read() == array.tobytes(), name


@pytest.mark.filterwarnings("ignore::DeprecationWarning")   # torch.jit.load, the format asked for
def test_onnx_and_torchscript_give_the_test_outputs(quantized):
    """(test_deploy.py runs a TorchScript file in a process without the project.)"""
    import onnx
    import onnxruntime as ort
    out, net, x = quantized["out"], quantized["net"], quantized["x"]
    written = (out / (net + "_int.onnx")).read_bytes()
    model = onnx.load_from_string(written)
    onnx.checker.check_model(model)
    assert model.SerializeToString() == written   # vaiq.onnx_proto writes what onnx writes
    session = ort.InferenceSession(str(out / (net + "_int.onnx")), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert onnx_out.tobytes() == quantized["test_outputs"].tobytes()
    scripted = torch.jit.load(str(out / (net + "_int.pt")))
    assert scripted(torch.from_numpy(x)).detach().numpy().tobytes() == quantized["test_outputs"].tobytes()
