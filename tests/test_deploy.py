"""Deploy (test mode with --deploy) against the real quantizer's golden exports."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, X86_GOLDEN
from test_quantizer_golden import CASES, GOLDEN, case_info, deployed_outputs, expected, run_quant
from dpu.xmodel import graph_summary, read_graph

pytestmark = X86_GOLDEN


def deploy_args(case):
    """The deploy flags of a golden case: its deploy_batch (1 when absent)."""
    return ["--quant_mode", "test", "--deploy", "--deploy_batch", str(case_info(case).get("deploy_batch", 1))]


@pytest.fixture(scope="module", params=CASES)
def deployed(request, tmp_path_factory):
    case = request.param
    out = tmp_path_factory.mktemp(case) / "quantize_result"
    with pytest.MonkeyPatch.context() as mp:
        run_quant(mp, case, out, "--quant_mode", "calib")
        run_quant(mp, case, out, *deploy_args(case))
    return case, out


def calib_features(case):
    info = json.load(open(os.path.join(GOLDEN, case, "case.json")))
    rows = np.load(os.path.join(GOLDEN, case, "calib.npy"))
    return rows[:, :info["input_size"]].astype(np.float32)


def test_xmodel_equals_golden_when_parsed(deployed):
    case, out = deployed
    ours = graph_summary(read_graph(str(out / "FFN_int.xmodel")))
    theirs = graph_summary(read_graph(expected(case, "quantize_result", "FFN_int.xmodel")))
    assert ours == theirs


def test_deploy_check_dumps_equal_golden_bytes(deployed):
    case, out = deployed
    golden_dir = expected(case, "quantize_result", "deploy_check_data_int", "FFN")
    ours_dir = out / "deploy_check_data_int" / "FFN"
    assert sorted(os.listdir(str(ours_dir))) == sorted(os.listdir(golden_dir))
    for name in os.listdir(golden_dir):
        assert (ours_dir / name).read_bytes() == open(os.path.join(golden_dir, name), "rb").read(), name


def test_torchscript_loads_without_the_project_and_gives_test_outputs(deployed, tmp_path):
    case, out = deployed
    np.save(str(tmp_path / "x.npy"), calib_features(case))
    code = ("import numpy as np, torch; m = torch.jit.load({!r}); "
            "np.save('y.npy', m(torch.from_numpy(np.load('x.npy'))).detach().numpy())").format(str(out / "FFN_int.pt"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), env=env, check=True)
    assert np.load(str(tmp_path / "y.npy")).tobytes() == np.load(expected(case, "test_outputs.npy")).tobytes()


def test_torchscript_holds_no_path_of_this_machine(deployed):
    """No debug records (they hold the checkout's and torch's absolute paths): the same
    bytes from any clone, so the committed FFN_int.pt reproduces."""
    import zipfile
    _, out = deployed
    data = (out / "FFN_int.pt").read_bytes()
    assert REPO.encode() not in data and os.path.dirname(torch_file()).encode() not in data
    assert not [n for n in zipfile.ZipFile(str(out / "FFN_int.pt")).namelist() if n.endswith(".debug_pkl")]


def torch_file():
    import torch
    return torch.__file__


# The attributes of the operators in the real quantizer's ONNX (IR 11, opset 23) that
# opset 13 already has, with the same meaning for int8 and float32.
OPSET_13_ATTRIBUTES = {"Constant": {"value"}, "QuantizeLinear": {"axis"}, "DequantizeLinear": {"axis"},
                       "Gemm": {"alpha", "beta", "transA", "transB"}, "Relu": set(), "LeakyRelu": {"alpha"}}


def as_opset_13(model):
    """The model as IR 8 / opset 13, which onnxruntime 1.10 (the newest for numpy 1.19)
    reads; None if it uses an operator or attribute that opset 13 lacks."""
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx") or not \
                {a.name for a in node.attribute} <= OPSET_13_ATTRIBUTES.get(node.op_type, {None}):
            return None
    model.ir_version = 8
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = 13
    return model


def onnx_outputs(path, x):
    import onnx
    import onnxruntime as ort
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # an onnxruntime older than the file's IR version or opset
        older = as_opset_13(onnx.load(str(path)))
        if older is None:
            pytest.skip("onnxruntime {} cannot read {} ({})".format(ort.__version__, path, str(e).splitlines()[0]))
        session = ort.InferenceSession(older.SerializeToString(), providers=["CPUExecutionProvider"])
    batch = session.get_inputs()[0].shape[0]
    step = batch if isinstance(batch, int) else 1   # the real quantizer's ONNX has the deploy batch fixed
    assert len(x) % step == 0
    return np.concatenate([session.run(None, {session.get_inputs()[0].name: x[k:k + step]})[0]
                           for k in range(0, len(x), step)])


def test_onnx_in_onnxruntime_equals_test_outputs_on_every_row(deployed):
    """Zero differences, where the real quantizer's own ONNX differs by up to 2 LSB."""
    case, out = deployed
    x = calib_features(case)
    ours = onnx_outputs(out / "FFN_int.onnx", x)
    reference = deployed_outputs(case, x)
    assert ours.tobytes() == reference.tobytes()
    theirs = onnx_outputs(expected(case, "quantize_result", "FFN_int.onnx"), x)
    lsb = 2.0 ** -json.load(open(expected(case, "quantize_result", "quant_info.json")))["output"]["FFN::nndct_dense_5"][0][1]
    assert np.abs(theirs - reference).max() <= 2 * lsb


def test_onnx_uses_standard_operators_with_power_of_two_scales(deployed):
    import onnx
    from onnx import numpy_helper
    case, out = deployed
    model = onnx.load(str(out / "FFN_int.onnx"))
    onnx.checker.check_model(model)
    # Written without the onnx package (vaiq.onnx_proto): the bytes onnx itself writes.
    assert model.SerializeToString() == (out / "FFN_int.onnx").read_bytes()
    assert all(node.domain in ("", "ai.onnx") for node in model.graph.node)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            scale = float(inits[node.input[1]])
            assert scale > 0 and np.log2(scale) == np.round(np.log2(scale))


def test_deploy_is_deterministic(deployed, tmp_path):
    case, out = deployed
    again = tmp_path / "quantize_result"
    with pytest.MonkeyPatch.context() as mp:
        run_quant(mp, case, again, "--quant_mode", "calib")
        run_quant(mp, case, again, *deploy_args(case))
    for name in ("FFN_int.xmodel", "FFN_int.onnx", "quant_info.json"):
        assert (again / name).read_bytes() == (out / name).read_bytes(), name
