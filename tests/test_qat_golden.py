"""The built-in QatProcessor (vaiq.qat) against a run of the real vai_q_pytorch 3.5 one,
bit for bit (fixtures/golden/qat/q1: case.json holds the procedure, replayed here step by
step; spec qat.md).

The procedure runs twice: on the model form the real tool was given (model_qat.py, with
its import line pointed at vaiq.nn), and on qat_form(model.FFN), the form the built-in makes
of the project's float model. Both must give every golden file.
"""
import collections
import json
import os
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import model as float_model
from dpu.xmodel import graph_summary, read_graph
from flow.checked_io import InputError, load_torch_file
from vaiq import QatProcessor
from vaiq.fixpoint import HALF_UP, fake_quantize
from vaiq.nn import QuantStub
from vaiq.qat import DEPLOYABLE, owns_storage, qat_chain, qat_form, quantizers
from vaiq.tqt import KERNEL_MODE, fix_position
from conftest import GOLDEN_SQRT, X86_GOLDEN

pytestmark = X86_GOLDEN

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "golden", "qat", "q1")
CASE = json.load(open(os.path.join(GOLDEN, "case.json")))
N = CASE["input_size"]
BATCH = CASE["batch_size"]
RESULT = "qat_result"
DUMPS = os.path.join(RESULT, "deploy_check_data_int", "FFN_0")


# The golden run trained with torch 2.13's Adam, which moves its first moment with lerp_;
# torch 1.x's (the Vitis AI dockers') uses mul_ and add_, which round otherwise, so every
# result after the first optimizer step can differ in the last bits there.
TRAINED = pytest.mark.skipif(int(torch.__version__.split(".")[0]) < 2,
                             reason="torch < 2: Adam's arithmetic is not the golden run's")


def golden(*parts):
    return os.path.join(GOLDEN, *parts)


def golden_model_class():
    """model_qat.py's FFN, importing QuantStub from vaiq.nn instead of pytorch_nndct.nn."""
    source = open(golden("model_qat.py")).read()
    assert source.count("from pytorch_nndct import nn as nndct_nn") == 1
    module = types.ModuleType("model_qat")
    exec(compile(source.replace("from pytorch_nndct import nn as nndct_nn", "from vaiq import nn as nndct_nn"),
                 golden("model_qat.py"), "exec"), module.__dict__)
    return module.FFN


def qat_model(form):
    """A fresh QAT-form FFN with the golden float weights, strictly loaded."""
    if form == "model_qat.py":
        model = golden_model_class()(N)
    else:
        model = qat_form(float_model.FFN(N))
    model.load_state_dict(load_torch_file(golden("float_state_dict.pth")))
    return model


def rows(name):
    data = np.load(golden(name))
    return torch.from_numpy(data[:, :N]).float(), torch.from_numpy(data[:, N:N + 1]).float()


def snapshot(state):
    """A copy of a state dict: training changes the tensors of the model's own in place."""
    return collections.OrderedDict((key, value.clone()) for key, value in state.items())


def in_batches(model, x):
    """Consecutive batches of BATCH rows under no_grad; each batch a clone (the deployable
    model rounds the tensor it is given in place)."""
    with torch.no_grad():
        return torch.cat([model(x[i:i + BATCH].clone()) for i in range(0, len(x), BATCH)]).numpy()


@pytest.fixture(scope="module", params=["model_qat.py", "qat_form"])
def run(request, tmp_path_factory):
    """case.json's procedure; every result the golden files record, by their names."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("qat")
    x, y = rows("train.npy")
    got = {"form": request.param}
    qat = QatProcessor(qat_model(request.param), (x[0:BATCH],), bitwidth=8)
    qm = qat.trainable_model()
    got["trainable"] = qm
    got["trainable_model.txt"] = str(qm)
    got["init_state.pth"] = snapshot(qm.state_dict())
    qm.train()
    out0 = qm(x[0:BATCH])
    got["forward0.npy"] = out0.detach().numpy()
    got["after_warmup_state.pth"] = snapshot(qm.state_dict())
    F.mse_loss(out0, y[0:BATCH]).backward()
    got["grads0.pth"] = {name: p.grad.clone() for name, p in qm.named_parameters()}

    opt = torch.optim.Adam([{"params": qm.quantizer_parameters(), "lr": 1e-2, "name": "quantizer"},
                            {"params": qm.non_quantizer_parameters(), "lr": 1e-3, "name": "weight"}], lr=1e-3)
    torch.manual_seed(0)
    losses, log_thresholds, step = [], [], 0
    while step < CASE["steps"]:
        perm = torch.randperm(len(x))
        for b in range(len(x) // BATCH):
            idx = perm[b * BATCH:(b + 1) * BATCH]
            opt.zero_grad()
            loss = F.mse_loss(qm(x[idx]), y[idx])
            loss.backward()
            opt.step()
            step += 1
            losses.append(loss.item())
            log_thresholds.append([p.item() for p in qm.quantizer_parameters()])
            if step % CASE["save_every"] == 0:
                got["state_step{}.pth".format(step)] = snapshot(qm.state_dict())
            if step == CASE["steps"]:
                break
    got["losses.npy"] = np.array(losses, dtype=np.float32)
    got["logt_per_step.npy"] = np.array(log_thresholds, dtype=np.float32)

    eval_x, _ = rows("calib.npy")
    qm.eval()
    got["qat_trainable_outputs.npy"] = in_batches(qm, eval_x)
    result = str(out / RESULT)
    deployable = qat.to_deployable(qm, result)
    deployable.eval()
    got["deployable"] = deployable
    got["deployable_outputs.npy"] = in_batches(deployable, eval_x)

    # Deploy as the example's --mode deploy does, with a new processor of a fresh model.
    qat = QatProcessor(qat_model(request.param), (x[0:BATCH],), bitwidth=8)
    deployed = qat.deployable_model(result, used_for_xmodel=True)
    got["deploy_output.npy"] = deployed(eval_x[0:1]).detach().numpy()
    qat.export_xmodel(result, deploy_check=True)
    got["out"] = str(out)
    return got


def same_tensor(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and a.numpy().tobytes() == b.numpy().tobytes()


def assert_same_state(ours, theirs_file):
    theirs = load_torch_file(golden(theirs_file))
    assert list(ours) == list(theirs)
    different = [key for key in theirs if not same_tensor(ours[key], theirs[key])]
    assert not different, different


def quantizers_by_name(run):
    """[(section, quant_info key, quantizer module name)] of the trainable model."""
    qm = run["trainable"]
    names = {id(module): name for name, module in qm.named_modules()}
    return [(section, key, names[id(q)]) for section, key, q in quantizers(qm, qat_chain(qat_model(run["form"])))]


def test_quantizers_are_the_golden_ones(run):
    """Names, tensor types, rounding modes and the quant_info keys of the 10 quantizers."""
    qm = run["trainable"]
    expected = json.load(open(golden("quantizers.json")))
    names = {id(module): name for name, module in qm.named_modules()}
    chain = qat_chain(qat_model(run["form"]))
    traced = {chain.input_tensor: chain.input_traced}
    for layer in chain.layers:
        traced[layer.output_tensor] = layer.act_traced or layer.traced
    found = {}
    for section, key, quantizer in quantizers(qm, chain):
        config = expected[names[id(quantizer)]]
        assert (config["tensor_type"], config["rounding_mode"]) == (section, KERNEL_MODE[quantizer.rounding])
        assert config["nndct_quant_config"]["key"] == (key if section == "param" else traced[key])
        found[names[id(quantizer)]] = quantizer
    assert sorted(found) == sorted(expected)
    assert [name for name, module in qm.named_modules() if module in found.values()] == list(expected)
    assert chain.input_traced == "FFN::FFN/QuantStub[quant_stub]/57"


def test_trainable_model_prints_as_golden(run):
    assert run["trainable_model.txt"] == open(golden("trainable_model.txt")).read().rstrip("\n")


@pytest.mark.parametrize("name", ["init_state.pth", "after_warmup_state.pth"])
def test_states_before_training_equal_golden(run, name):
    """The state dict before the warm-up forward and after it (the initial thresholds)."""
    assert_same_state(run[name], name)


@TRAINED
@GOLDEN_SQRT
@pytest.mark.parametrize("step", [50, 100, 150, 200])
def test_states_while_training_equal_golden(run, step):
    name = "state_step{}.pth".format(step)
    assert_same_state(run[name], name)


def test_initial_thresholds_equal_golden(run):
    """The warm-up's thresholds (3-sigma for parameters, max|x| for activations) to the bit,
    and the fix positions they give."""
    thresholds = json.load(open(golden("thresholds_init.json")))
    state = run["after_warmup_state.pth"]
    assert sorted(thresholds) == sorted(name for _, _, name in quantizers_by_name(run))
    for name, info in thresholds.items():
        log_threshold = state[name + ".log_threshold"]
        assert log_threshold.numpy().view(np.uint32)[0] == int(info["log_threshold_f32_hex"], 16), name
        assert fix_position(log_threshold.item(), 8) == info["fix_position"], name


def test_warmup_forward_equals_golden(run):
    assert run["forward0.npy"].tobytes() == np.load(golden("forward0.npy")).tobytes()


def test_every_gradient_of_the_warmup_batch_equals_golden(run):
    theirs = load_torch_file(golden("grads0.pth"))
    ours = run["grads0.pth"]
    assert list(ours) == list(theirs)
    for name in theirs:
        assert same_tensor(ours[name], theirs[name]), name


@TRAINED
@pytest.mark.parametrize("name", ["losses.npy", pytest.param("logt_per_step.npy", marks=GOLDEN_SQRT),
                                  "qat_trainable_outputs.npy", "deployable_outputs.npy", "deploy_output.npy"])
def test_arrays_equal_golden(run, name):
    theirs = np.load(golden(name))
    assert run[name].dtype == theirs.dtype and run[name].shape == theirs.shape
    assert run[name].tobytes() == theirs.tobytes()


@TRAINED
def test_thresholds_cross_fix_position_boundaries(run):
    """The golden run is a real test of the path: the input's position flips while training."""
    column = run["logt_per_step.npy"][:, 0]
    assert np.count_nonzero(np.diff(np.ceil(column))) == 9


@TRAINED
@pytest.mark.parametrize("name", ["quant_info.json", os.path.join("test", "quant_info.json")])
def test_quant_info_equals_golden(run, name):
    """Byte for byte, but for the version string that names the quantizer."""
    ours = open(os.path.join(run["out"], RESULT, name), "rb").read().decode()
    theirs = open(golden(RESULT, name), "rb").read().decode()

    def without_version(text):
        return [line for line in text.split("\n") if '"version"' not in line]

    assert without_version(ours) == without_version(theirs)
    assert not ours.endswith("\n")


@TRAINED
def test_deployable_pth_equals_golden(run):
    ours = os.path.join(run["out"], RESULT, DEPLOYABLE)
    assert_same_state(load_torch_file(ours), os.path.join(RESULT, DEPLOYABLE))
    if torch.__version__.split("+")[0] == CASE["versions"]["torch"].split("+")[0]:
        # The same torch writes the same archive (other releases write other zip records).
        assert open(ours, "rb").read() == open(golden(RESULT, DEPLOYABLE), "rb").read()


@TRAINED
def test_xmodel_equals_golden(run):
    ours = graph_summary(read_graph(os.path.join(run["out"], RESULT, "FFN_0_int.xmodel")))
    assert ours == graph_summary(read_graph(golden(RESULT, "FFN_0_int.xmodel")))


@TRAINED
def test_deploy_check_dumps_equal_golden_byte_for_byte(run):
    ours = os.path.join(run["out"], DUMPS)
    assert sorted(os.listdir(ours)) == sorted(os.listdir(golden(DUMPS)))
    for name in os.listdir(golden(DUMPS)):
        assert open(os.path.join(ours, name), "rb").read() == open(golden(DUMPS, name), "rb").read(), name


def test_deployable_model_rounds_an_input_that_owns_its_storage_in_place(run):
    deployable = run["deployable"]
    x, _ = rows("calib.npy")
    fresh = x[0:BATCH].clone()
    with torch.no_grad():
        out = deployable(fresh)
    assert owns_storage(fresh) and not torch.equal(fresh, x[0:BATCH])
    assert torch.equal(fresh, fake_quantize(x[0:BATCH], 6, HALF_UP))   # the input's position, 6
    with torch.no_grad():   # a view (rows of a bigger tensor) is copied first, as nndct does
        assert torch.equal(deployable(x[0:BATCH]), out) and not owns_storage(x[0:BATCH])
    assert torch.equal(x[0:BATCH], rows("calib.npy")[0][0:BATCH])


def test_the_float_model_is_refused_as_the_real_tool_refuses_it():
    """errors.txt: the unchanged model (no stub) and the stub with F.relu, in the real words."""
    errors = open(golden("errors.txt")).read()
    x = torch.zeros(BATCH, N)
    with pytest.raises(InputError) as refused:
        QatProcessor(float_model.FFN(N), (x,))
    assert str(refused.value).startswith("[VAIQ_ERROR][QUANTIZER_TORCH_INPUT_NOT_QUANTIZED]: ")
    assert str(refused.value).split(" (vaiq.qat")[0] in errors

    def functional_relu(self, inputs):
        return self.l3(F.relu(self.l2(F.relu(self.l1(self.quant_stub(inputs))))))

    stubbed = type("FFN", (golden_model_class(),), {"forward": functional_relu})(N)
    with pytest.raises(InputError) as refused:
        QatProcessor(stubbed, (x,))
    message = str(refused.value).split(" (vaiq.qat")[0]
    assert message.startswith("[VAIQ_ERROR][QUANTIZER_TORCH_NOT_A_MODULE]: Quantized operation(FFN::FFN/ret.5)")
    assert message + "The original source range is:" in errors


def test_qat_form_keeps_the_float_model_and_its_checkpoint():
    """model.py stays as written; its QAT form has the same class name and loads the float
    checkpoint strictly, with modules in forward order (model_qat.py's)."""
    plain = float_model.FFN(N)
    form = qat_form(plain)
    assert type(form).__name__ == "FFN" and isinstance(form, float_model.FFN)
    assert [name for name, _ in form.named_children()] == ["quant_stub", "l1", "relu1", "l2", "relu2", "l3"]
    assert list(form.state_dict()) == list(plain.state_dict())
    assert [name for name, _ in plain.named_children()] == ["l1", "l2", "l3"]
    form.load_state_dict(load_torch_file(golden("float_state_dict.pth")))
    x = torch.randn(7, N)
    plain.load_state_dict(form.state_dict())
    assert torch.equal(form(x), plain(x))


# ---------------------------------------------------------------- names beyond the golden chain

class Block(torch.nn.Module):
    def __init__(self, a, b, functional=False):
        super().__init__()
        self.lin = torch.nn.Linear(a, b)
        if not functional:
            self.act = torch.nn.ReLU()
        self.functional = functional

    def forward(self, x):
        return F.relu(self.lin(x)) if self.functional else self.act(self.lin(x))


class Mixed(torch.nn.Module):
    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.quant_stub = QuantStub()
        self.m0, self.m1, self.m2, self.m3 = nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 4), nn.LeakyReLU(0.1)
        self.m4, self.m5, self.m6 = nn.Linear(4, 5), nn.ReLU6(), nn.Linear(5, 1)

    def forward(self, x):
        x = self.m1(self.m0(self.quant_stub(x)))
        return self.m6(self.m5(self.m4(self.m3(self.m2(x)))))


class Deep(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = torch.nn.Sequential(Block(2, 6))
        self.b2 = Block(6, 4)

    def forward(self, x):
        return self.b2(self.inner(x))


class M(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.quant_stub, self.deep, self.out = QuantStub(), Deep(), torch.nn.Linear(4, 1)

    def forward(self, x):
        return self.out(self.deep(self.quant_stub(x)))


class A(torch.nn.Module):
    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.body = nn.Sequential(QuantStub(), nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))

    def forward(self, x):
        return self.body(x)


class NestedF(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(Block(2, 6, functional=True), Block(6, 4, functional=True))
        self.out = torch.nn.Linear(4, 1)

    def forward(self, x):
        return self.out(self.body(x))


def _sequential():
    nn = torch.nn
    return nn.Sequential(QuantStub(), nn.Linear(2, 6), nn.ReLU(), nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 1))


# What the real QatProcessor 3.5 (torch 2.13, numpy 1.24.2) named these models' quantized
# outputs, measured on a build of it (not golden files): the stub's value number counts the
# whole forward, container calls included; a module called past its container is named
# from the caller, its own class first.
NAMES = [
    (lambda: type("FFN", (Mixed,), {})(),   # the class name is the net name
     ["FFN::FFN/QuantStub[quant_stub]/82", "FFN::FFN/ReLU[m1]/ret.5", "FFN::FFN/LeakyReLU[m3]/ret.9",
      "FFN::FFN/ReLU6[m5]/ret.13", "FFN::FFN/Linear[m6]/ret"]),
    (M, ["M::M/QuantStub[quant_stub]/81", "M::M/Deep[deep]/Sequential[inner]/Block[0]/ReLU[act]/ret.5",
         "M::M/Deep[deep]/Block[b2]/ReLU[act]/ret.9", "M::M/Linear[out]/ret"]),
    (A, ["A::A/Sequential[body]/QuantStub[0]/52", "A::A/Sequential[body]/ReLU[2]/ret.5",
         "A::A/Sequential[body]/Linear[3]/ret"]),
    (_sequential, ["Sequential::Sequential/QuantStub[0]/57", "Sequential::Sequential/ReLU[2]/ret.5",
                   "Sequential::Sequential/ReLU[4]/ret.9", "Sequential::Sequential/Linear[5]/ret"]),
]


@pytest.mark.parametrize("make, names", NAMES, ids=["mixed", "nested", "stub_in_sequential", "sequential"])
def test_names_of_other_chains_follow_the_real_tool(make, names):
    chain = qat_chain(make())
    ours = [chain.input_traced] + [layer.act_traced or layer.traced for layer in chain.layers]
    assert ours == names


def test_qat_form_names_a_layer_called_past_its_container_as_the_real_tool():
    """qat_form calls every module from the model itself: body.1.lin becomes Linear[body]/Block[1]/Linear[lin]."""
    chain = qat_chain(qat_form(NestedF()))
    assert [layer.traced for layer in chain.layers] == [
        "NestedF::NestedF/Linear[body]/Block[0]/Linear[lin]/ret.3",
        "NestedF::NestedF/Linear[body]/Block[1]/Linear[lin]/ret.7", "NestedF::NestedF/Linear[out]/ret"]
