"""The QAT stage (vai_q_pytorch_qat.py): --mode train, then --mode deploy in a new process.

Small runs (2 epochs on 1500 rows) of the shipped checkpoint: the result goes through the
integer DPU reference, simulate.py --check and the compile pre-flight like a PTQ xmodel, a
re-run gives the same bytes, the real pytorch_nndct is driven through the golden procedure's
calls, a model.py of another chain goes through, and every bad input ends in one line with
the earlier result untouched. The recipe's quality is measured by tools/quant_quality.py,
not here; the engine's bit-exactness by test_qat_golden.py.
"""
import json
import os
import shutil
import textwrap

import numpy as np
import pytest
import torch

from conftest import MODEL_PY_HEAD, REPO, assert_clean_error, run_script, snapshot
from dpu.simulation import load_model, run_reference
from flow.checked_io import load_torch_file

EPOCHS = 2
FLAGS = ("--epochs", EPOCHS)
XMODEL = "FFN_0_int.xmodel"
DUMPS = os.path.join("deploy_check_data_int", "FFN_0")
CHECKPOINT = os.path.join(REPO, "checkpoints", "ffn_state_dict.pth")


def qat(work, *args, ok=True):
    result = run_script("vai_q_pytorch_qat.py", *args, cwd=str(work))
    if ok:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def make_work(root):
    """A folder with small data and the shipped checkpoint, where the stage's defaults apply."""
    root.mkdir(parents=True, exist_ok=True)
    made = run_script("generate_data.py", "--n_samples", 2000, "--output_dir", root / "data", "--seed", 7)
    assert made.returncode == 0, made.stderr
    (root / "checkpoints").mkdir()
    shutil.copy(CHECKPOINT, str(root / "checkpoints"))
    return root


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """The work folder after train and deploy into qat_result/; the stage's output."""
    root = make_work(tmp_path_factory.mktemp("qat") / "work")
    trained = qat(root, "--mode", "train", *FLAGS)
    deployed = qat(root, "--mode", "deploy")
    return root, trained, deployed


def printed_int8_mse(trained):
    line = next(line for line in trained.stdout.splitlines() if line.split()[:1] == ["mse"])
    return line.split()[2]


def test_train_writes_the_deployable_result_and_deploy_the_exports(work):
    root, trained, deployed = work
    result = root / "qat_result"
    assert sorted(os.listdir(str(result))) == sorted([
        "quant_info.json", "test", "deployable.pth", "train.csv", "valid.csv", "hparams.json",
        XMODEL, "deploy_check_data_int", "FFN_0_int.pt", "FFN_0_int.onnx"])
    assert os.listdir(str(result / "test")) == ["quant_info.json"]
    info = json.load(open(str(result / "quant_info.json")))
    assert list(info["output"])[0] == "FFN::nndct_quant_stub_1" and info["bias_corrected"] is False
    # deployable.pth: the trained float parameters, under the float checkpoint's keys
    assert list(load_torch_file(str(result / "deployable.pth"))) == list(load_torch_file(CHECKPOINT))
    assert "train (builtin, vai_q_pytorch 3.5): {} epochs on 1500 rows".format(EPOCHS) in trained.stdout
    assert deployed.stdout.startswith("deploy (builtin, vai_q_pytorch 3.5): the first row of data/test.npy")
    assert trained.stderr == "" and deployed.stderr == ""


def test_deployable_model_equals_the_xmodel_on_the_integer_reference_on_every_row(work):
    """The deployable model of the result (as the stage makes it) and the deployed xmodel on
    the integer DPU reference give the same outputs, bit for bit: the MSE the stage printed."""
    import model as float_model
    from vaiq import QatProcessor
    from vaiq.qat import qat_form

    root, trained, _ = work
    result, data = str(root / "qat_result"), str(root / "data" / "test.npy")
    form = qat_form(float_model.FFN(2))
    form.load_state_dict(load_torch_file(CHECKPOINT))
    rows = np.load(data)
    x = torch.from_numpy(rows[:, :2].astype(np.float32))
    deployable = QatProcessor(form, (x[:1],)).deployable_model(result)
    with torch.no_grad():
        ours = torch.cat([deployable(x[i:i + 64].clone()) for i in range(0, len(x), 64)]).numpy()
    _, reference, mse = run_reference(os.path.join(result, XMODEL), load_model(os.path.join(result, XMODEL)), data)
    assert ours.shape == reference.shape == (len(rows), 1)
    assert ours.tobytes() == reference.astype(np.float32).tobytes()
    # the stage's MSE is taken against float32 targets, the reference's against the file's float64
    assert float(printed_int8_mse(trained)) == pytest.approx(mse, rel=1e-6)


def test_the_hidden_thresholds_stay_where_the_recipe_fixed_them(work):
    """--hidden_max 1.95 (the default): both hidden ReLU outputs end at threshold 2, fix
    position 6, the output's LSB; the input and output positions are trained."""
    root, _, _ = work
    info = json.load(open(str(root / "qat_result" / "quant_info.json")))["output"]
    assert [info["FFN::nndct_relu_3"], info["FFN::nndct_relu_5"]] == [[[8, 6]], [[8, 6]]]


def shipped_form():
    from preprocessors import load_from_state_dict
    from vaiq.qat import qat_form
    from model import FFN
    return qat_form(load_from_state_dict(FFN(2), CHECKPOINT))


def hidden_maxima(form, rows):
    with torch.no_grad():
        h1 = torch.relu(form.l1(rows))
        return h1.max(0).values, torch.relu(form.l2(h1)).max(0).values


@pytest.mark.parametrize("revive", [0, 1])
def test_reshaping_the_hidden_units_keeps_the_function_and_fills_the_fixed_range(revive):
    """Each live hidden unit scaled to the maximum 1.95 on the rows, the next layer scaled back:
    the same function to float rounding. With revive, the shipped model's dead units (1 of 6,
    2 of 4) become copies of live ones, 1/256 to either side: the function moves by less than
    that, and no unit is dead any more."""
    from quantization.qat import RECIPE, reshape_hidden

    rows = torch.from_numpy(np.load(os.path.join(REPO, "data", "train.npy"))[:, :2]).float()
    form = shipped_form()
    with torch.no_grad():
        before = form(rows)
    dead = [int((top == 0).sum()) for top in hidden_maxima(form, rows)]
    assert dead == [1, 2]
    assert reshape_hidden(form, rows, RECIPE._replace(hidden_max=1.95, revive=revive)) == 1.0
    with torch.no_grad():
        moved = float((form(rows) - before).abs().max())
    for top in hidden_maxima(form, rows):
        live = top[top > 0]
        if revive:
            assert len(live) == len(top) and float((live - 1.95).abs().max()) <= 1 / 256 + 1e-6
        else:
            assert float((live - 1.95).abs().max()) < 1e-5
    assert moved < (1 / 256 if revive else 1e-6)


def test_the_threshold_norm_term_takes_no_mkl_square_root(monkeypatch):
    """C * sqrt(sum log_threshold^2), its square root the norm's exact one: torch.sqrt (and
    pow 0.5) run MKL's, whose last bits follow the CPU's rsqrtps (flow/kernels.py)."""
    from quantization.qat import threshold_norm

    class Trainable:
        def quantizer_parameters(self):
            return params

    params = [torch.nn.Parameter(torch.tensor([v])) for v in (1.7, -2.3, 0.4, 3.1)]
    monkeypatch.setattr(torch, "sqrt", None)
    monkeypatch.setattr(torch.Tensor, "sqrt", None)
    penalty = threshold_norm(Trainable(), 1e-2)()
    penalty.backward()
    exact = 1e-2 * np.sqrt(np.sum(np.array([1.7, -2.3, 0.4, 3.1], dtype=np.float32).astype(np.float64) ** 2))
    assert float(penalty.detach()) == pytest.approx(exact, rel=1e-6)
    assert [float(p.grad) for p in params] == pytest.approx([1e-2 * float(p.detach()) / (exact / 1e-2) for p in params], rel=1e-5)
    assert threshold_norm(Trainable(), 0) is None


@pytest.mark.parametrize("hidden_max, log_threshold", [(1.95, 1.0), (1.984375, 1.0), (1.99, 2.0), (2.0, 2.0), (0.9, 0.0)])
def test_the_fixed_threshold_holds_hidden_max_in_its_int8_range(hidden_max, log_threshold):
    """The smallest power of two whose int8 range, 127/128 of it, holds the units' maximum."""
    from quantization.qat import RECIPE, reshape_hidden

    rows = torch.from_numpy(np.load(os.path.join(REPO, "data", "train.npy"))[:200, :2]).float()
    assert reshape_hidden(shipped_form(), rows, RECIPE._replace(hidden_max=hidden_max)) == log_threshold


def test_a_unit_below_one_lsb_is_revived_not_scaled_up():
    """A unit whose maximum is under the hidden LSB rounds to zero in int8: it is taken as
    dead (a copy of a live unit), not scaled up by thousands."""
    from quantization.qat import RECIPE, reshape_hidden

    rows = torch.from_numpy(np.load(os.path.join(REPO, "data", "train.npy"))[:, :2]).float()
    form = shipped_form()
    with torch.no_grad():
        first, _ = hidden_maxima(form, rows)
        weak = int(torch.argmin(torch.where(first > 0, first, torch.full_like(first, 1e9))))
        form.l1.weight[weak] *= 1e-3
        form.l1.bias[weak] *= 1e-3
    assert 0 < float(hidden_maxima(form, rows)[0][weak]) < 1 / 64
    reshape_hidden(form, rows, RECIPE._replace(revive=1))
    assert float(form.l1.weight.detach().abs().max()) < 100
    assert all(float(top) >= 1.95 - 1 / 256 - 1e-6 for top in hidden_maxima(form, rows)[0])


def test_a_chain_with_other_activations_is_not_reshaped():
    from quantization.qat import RECIPE, reshape_hidden
    from vaiq.qat import qat_form

    model = qat_form(torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.LeakyReLU(0.1), torch.nn.Linear(3, 1)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert reshape_hidden(model, torch.randn(8, 2), RECIPE) is None
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_simulate_checks_every_deploy_dump(work):
    root, _, _ = work
    result = run_script("simulate.py", "qat_result/" + XMODEL, "--data", "data/test.npy", "--check",
                        "qat_result/deploy_check_data_int", cwd=str(root))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "deploy check: all 22 tensors match" in result.stdout


def test_compile_preflight_passes(work):
    root, _, _ = work
    result = run_script("dpu.preflight", "qat_result/" + XMODEL, "DPUCADF8H", "--no_compiler", cwd=str(root))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok: shifts in the DPU ranges" in result.stdout and "deploy check: all 22 tensors" in result.stdout


def test_training_log_has_one_row_per_epoch_and_the_kept_epoch_is_the_lowest(work):
    root, trained, _ = work
    logs = {}
    for name in ("train", "valid"):
        lines = (root / "qat_result" / (name + ".csv")).read_text().splitlines()
        assert lines[0] == "step,loss,r2"
        logs[name] = [line.split(",") for line in lines[1:]]
        assert [int(row[0]) for row in logs[name]] == list(range(1, EPOCHS + 1))
    valid = [float(row[1]) for row in logs["valid"]]
    best = valid.index(min(valid)) + 1
    assert "kept epoch {} (int8 MSE {:.6e} on data/valid.npy)".format(best, min(valid)) in trained.stdout
    hparams = json.load(open(str(root / "qat_result" / "hparams.json")))
    assert hparams["epochs"] == EPOCHS and hparams["backend"] == "builtin" and hparams["seed"] == 42
    # into a pipe: one line per epoch, no progress bars
    assert len([line for line in trained.stdout.splitlines() if line.startswith("epoch ")]) == EPOCHS


def test_a_rerun_gives_the_same_bytes(work, tmp_path):
    root, _, _ = work
    again = tmp_path / "again"
    qat(root, "--mode", "train", "--output_dir", again, *FLAGS)
    qat(root, "--mode", "deploy", "--output_dir", again)
    first, second = snapshot(str(root / "qat_result")), snapshot(str(again))
    assert sorted(first) == sorted(second)
    assert [name for name in first if first[name] != second[name]] == []
    assert str(tmp_path).encode() not in b"".join(v for v in second.values() if v)   # no absolute path


def test_deploy_at_batch_4_exports_batch_4(work, tmp_path):
    root, _, _ = work
    result = tmp_path / "b4"
    shutil.copytree(str(root / "qat_result"), str(result))
    qat(root, "--mode", "deploy", "--output_dir", result, "--deploy_batch", 4)
    assert load_model(str(result / XMODEL)).batch == 4
    checked = run_script("simulate.py", result / XMODEL, "--data", "data/test.npy", "--check",
                         result / "deploy_check_data_int", cwd=str(root))
    assert checked.returncode == 0, checked.stdout + checked.stderr


# ---------------------------------------------------------------- the real QatProcessor's API

FAKE_NNDCT = {
    "__init__.py": '''
        __version__ = "3.5.0+fake+torch2.13.0+cpu"
        from .qat import QatProcessor
        from . import nn
    ''',
    "nn.py": '''
        import vaiq.nn

        class QuantStub(vaiq.nn.QuantStub):
            pass
    ''',
    "qat.py": '''
        import json, os
        import vaiq.qat
        from .nn import QuantStub

        def record(*call):
            with open(os.environ["NNDCT_CALL_LOG"], "a") as f:
                f.write(json.dumps([str(part) for part in call]) + "\\n")

        class QatProcessor(object):
            """Records each call of the stage and hands it on to the built-in QatProcessor."""

            def __init__(self, model, inputs, bitwidth=8):
                stubs = [type(m).__module__ + "." + type(m).__name__ for m in model.modules()
                         if isinstance(m, vaiq.nn.QuantStub)]
                record("QatProcessor", stubs, tuple(inputs[0].shape), bitwidth)
                self._q = vaiq.qat.QatProcessor(model, inputs, bitwidth=bitwidth)

            def trainable_model(self):
                record("trainable_model")
                return self._q.trainable_model()

            def to_deployable(self, trained_model, output_dir):
                record("to_deployable", os.path.basename(output_dir))
                return self._q.to_deployable(trained_model, output_dir)

            def deployable_model(self, src_dir, used_for_xmodel=False):
                record("deployable_model", src_dir, used_for_xmodel)
                model = self._q.deployable_model(src_dir, used_for_xmodel=used_for_xmodel)
                model.register_forward_pre_hook(lambda module, args: record("forward", tuple(args[0].shape)))
                return model

            def export_xmodel(self, output_dir, deploy_check=False):
                record("export_xmodel", output_dir, deploy_check)
                self._q.export_xmodel(output_dir, deploy_check=deploy_check)

            def export_torch_script(self, output_dir):
                record("export_torch_script", output_dir)
                self._q.export_torch_script(output_dir)

            def export_onnx_model(self, output_dir):
                record("export_onnx_model", output_dir)
                self._q.export_onnx_model(output_dir)
    ''',
}


def test_with_pytorch_nndct_the_stage_makes_the_calls_of_the_golden_procedure(work, tmp_path, monkeypatch):
    """A stand-in pytorch_nndct on the path: the stage swaps its QuantStub into the model and
    calls QatProcessor as Xilinx's example and the golden run (case.json) do; the result is the
    built-in's, byte for byte."""
    root, _, _ = work
    package = tmp_path / "site" / "pytorch_nndct"
    package.mkdir(parents=True)
    for name, source in FAKE_NNDCT.items():
        (package / name).write_text(textwrap.dedent(source))
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("NNDCT_CALL_LOG", str(log))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path / "site"), REPO]))
    out = tmp_path / "nndct_result"
    trained = qat(root, "--mode", "train", "--output_dir", out, *FLAGS)
    deployed = qat(root, "--mode", "deploy", "--output_dir", out)
    assert "train (nndct, vai_q_pytorch 3.5.0)" in trained.stdout and "deploy (nndct, " in deployed.stdout
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    stub = ["pytorch_nndct.nn.QuantStub"]
    assert calls == [
        ["QatProcessor", str(stub), "(64, 2)", "8"], ["trainable_model"], ["to_deployable", "nndct_result"],
        ["QatProcessor", str(stub), "(1, 2)", "8"], ["deployable_model", str(out), "True"], ["forward", "(1, 2)"],
        ["export_xmodel", str(out), "True"], ["export_torch_script", str(out)], ["export_onnx_model", str(out)]]
    builtin = snapshot(str(root / "qat_result"))
    ours = snapshot(str(out))
    ours["hparams.json"] = ours["hparams.json"].replace(b'"nndct"', b'"builtin"')
    assert ours == builtin
    assert qat(root, "--mode", "train", "--backend", "builtin", "--output_dir", tmp_path / "b", *FLAGS).stdout
    assert "nndct" not in open(str(tmp_path / "b" / "hparams.json")).read()


def test_without_pytorch_nndct_backend_nndct_is_refused_in_one_line(work):
    root, _, _ = work
    before = snapshot(str(root / "qat_result"))
    assert_clean_error(qat(root, "--backend", "nndct", *FLAGS, ok=False), "--backend nndct", "builtin")
    assert snapshot(str(root / "qat_result")) == before


# ---------------------------------------------------------------- another chain in model.py

LEAKY = MODEL_PY_HEAD + '''        self.act1 = nn.LeakyReLU(0.1015625)
        self.drop = nn.Dropout(0.1)

    def forward(self, x):
        x = self.drop(self.act1(self.l1(x)))
        return self.l3(F.leaky_relu(self.l2(x), 0.1))
'''
BATCH_NORM = MODEL_PY_HEAD + '''        self.bn1 = nn.BatchNorm1d(3 * input_size)

    def forward(self, x):
        return self.l3(F.relu(self.l2(F.relu(self.bn1(self.l1(x))))))
'''
PROJECT = [f for f in os.listdir(REPO) if f.endswith(".py")] + ["vaiq", "dpu", "flow", "quantization"]


def project(tmp_path, model_source):
    """A copy of the scripts with model.py replaced, data and a float checkpoint of that model."""
    work = tmp_path / "project"
    work.mkdir()
    for name in PROJECT:
        source = os.path.join(REPO, name)
        if os.path.isdir(source):
            shutil.copytree(source, str(work / name), ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, str(work / name))
    (work / "model.py").write_text(model_source)
    made = run_script("generate_data.py", "--n_samples", 1000, "--output_dir", work / "data", "--seed", 3)
    assert made.returncode == 0, made.stderr
    return work


def test_a_leaky_relu_dropout_ffn_goes_through_qat_and_the_reference(tmp_path):
    """The real tool takes neither F.leaky_relu nor an unstubbed input: qat_form converts them."""
    work = project(tmp_path, LEAKY)
    trained = run_script(os.path.join(str(work), "run.py"), "--data_dir", "data", "--train", "--lr", 1e-2,
                         "--n_epochs", 2, cwd=str(work))
    assert trained.returncode == 0, trained.stderr
    for mode in ("train", "deploy"):
        result = run_script(os.path.join(str(work), "vai_q_pytorch_qat.py"), "--mode", mode,
                            *(FLAGS if mode == "train" else ()), cwd=str(work))
        assert result.returncode == 0, result.stdout + result.stderr
        trained_qat = result if mode == "train" else trained_qat
    # the real tool's warning about the slope, as it prints it
    assert "Force to change negative_slope of LeakyReLU from 0.1 to 0.1015625" in result.stdout
    assert "note: --hidden_max 1.95: model.py is not a chain of Linear layers with ReLU between" in trained_qat.stderr
    checked = run_script(os.path.join(str(work), "simulate.py"), "qat_result/" + XMODEL, "--data", "data/test.npy",
                         "--check", "qat_result/deploy_check_data_int", cwd=str(work))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "leaky" in open(str(work / "qat_result" / "quant_info.json")).read()


def test_a_model_qat_cannot_take_is_refused_in_one_line(tmp_path):
    work = project(tmp_path, BATCH_NORM)
    trained = run_script(os.path.join(str(work), "run.py"), "--data_dir", "data", "--train", "--n_epochs", 1,
                         cwd=str(work))
    assert trained.returncode == 0, trained.stderr
    (work / "qat_result").mkdir()
    (work / "qat_result" / "quant_info.json").write_text("earlier")
    before = snapshot(str(work / "qat_result"))
    result = run_script(os.path.join(str(work), "vai_q_pytorch_qat.py"), *FLAGS, cwd=str(work))
    assert_clean_error(result, "model.py: ", "BatchNorm1d", "QUANTIZER_TORCH_UNSUPPORTED_OPS")
    assert snapshot(str(work / "qat_result")) == before


def test_help_shows_every_flag_with_its_default_and_needs_no_torch():
    from test_usability import help_entries, help_without_torch

    run, imported = help_without_torch("vai_q_pytorch_qat.py")
    assert run.returncode == 0, run.stderr
    assert not [m for m in imported if m == "torch" or m.startswith(("torch.", "vaiq"))], "--help imported torch"
    entries = help_entries(run.stdout)
    assert "--weight_lr LR" in entries and "--deploy_batch N" in entries
    for entry, text in entries.items():
        if not entry.startswith("-h, --help"):
            assert "(default: " in text, "{}: {!r} shows no default".format(entry, text)


# ---------------------------------------------------------------- bad input

@pytest.fixture
def untouched(work):
    """The work folder; after the test, its result and inputs must be as they were."""
    root, _, _ = work
    before = snapshot(str(root))
    yield root
    assert snapshot(str(root)) == before


@pytest.mark.parametrize("flags, words", [
    (("--weight_lr", "0"), ("--weight_lr", "must be a positive number")),
    (("--quantizer_lr=-1e-2",), ("--quantizer_lr", "must be a positive number")),
    (("--weight_lr", "nan"), ("--weight_lr", "must be a positive number")),
    (("--epochs", "0"), ("--epochs", "must be positive")),
    (("--batch_size", "-3"), ("--batch_size", "must be positive")),
    (("--weight_lr_decay", "1.5"), ("--weight_lr_decay", "(0, 1]")),
    (("--quantizer_norm=-1",), ("--quantizer_norm", "must be 0 or a positive number")),
    (("--hidden_max=-1",), ("--hidden_max", "must be 0 or a positive number")),
    (("--revive", "2"), ("--revive", "invalid choice")),
    (("--mode", "deploy", "--epochs", "3"), ("--epochs is not used in --mode deploy",)),
    (("--deploy_batch", "4"), ("--deploy_batch is not used in --mode train",)),
], ids=lambda v: " ".join(v) if isinstance(v, tuple) and v[0].startswith("--") else None)
def test_bad_flags_are_refused_in_one_line(untouched, flags, words):
    assert_clean_error(qat(untouched, *flags, ok=False), *words)


def test_a_checkpoint_that_does_not_fit_is_refused_in_one_line(untouched, tmp_path):
    state = load_torch_file(CHECKPOINT)
    state["l2.weight"] = state["l2.weight"][:, :5]
    torch.save(state, str(tmp_path / "other.pth"))
    assert_clean_error(qat(untouched, "--model_name", tmp_path / "other.pth", *FLAGS, ok=False),
                       "other.pth", "l2.weight has shape (4, 5)")
    assert_clean_error(qat(untouched, "--input_size", 3, *FLAGS, ok=False), "ffn_state_dict.pth", "--input_size")
    assert_clean_error(qat(untouched, "--mode", "deploy", "--model_name", tmp_path / "other.pth", ok=False),
                       "other.pth", "l2.weight")


def test_an_infinite_loss_stops_the_training_and_writes_nothing(untouched, tmp_path):
    """A target of 1e25 in train.npy: its squared error is inf in float32."""
    data = tmp_path / "data"
    shutil.copytree(str(untouched / "data"), str(data))
    rows = np.load(str(data / "train.npy"))
    rows[100, -1] = 1e25
    np.save(str(data / "train.npy"), rows)
    result = qat(untouched, "--data_dir", data, *FLAGS, ok=False)
    assert_clean_error(result, "the QAT training diverged in epoch 1, batch ", "(the loss became inf)",
                       "train.npy", "--weight_lr", "nothing written (qat_result as it was)")


def test_a_threshold_that_runs_away_stops_the_training(untouched):
    assert_clean_error(qat(untouched, "--quantizer_lr", 1e30, *FLAGS, ok=False), "--quantizer_lr 1e+30",
                       "log_threshold reached", "nothing written")


@pytest.mark.parametrize("where", ["a_file", "a_file/qat_result", "foreign"])
def test_a_result_folder_that_cannot_be_written_is_refused_in_one_line(untouched, tmp_path, where):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    before = snapshot(str(tmp_path))
    result = qat(untouched, "--output_dir", tmp_path / where, *FLAGS, ok=False)
    assert_clean_error(result, str(tmp_path / where))
    assert snapshot(str(tmp_path)) == before


def test_deploy_without_a_training_result_is_refused_in_one_line(untouched, tmp_path):
    assert_clean_error(qat(untouched, "--mode", "deploy", "--output_dir", tmp_path / "none", ok=False),
                       "none", "run --mode train first")
    (tmp_path / "empty").mkdir()
    assert_clean_error(qat(untouched, "--mode", "deploy", "--output_dir", tmp_path / "empty", ok=False),
                       "empty", "deployable.pth", "run --mode train first")
    assert os.listdir(str(tmp_path / "empty")) == []


def test_deploy_batch_beyond_the_rows_is_refused_in_one_line(untouched):
    assert_clean_error(qat(untouched, "--mode", "deploy", "--deploy_batch", 401, ok=False),
                       "--deploy_batch 401", "test.npy has only 400 rows")


# ---------------------------------------------------------------- the runner's stop

def test_the_runner_stops_at_a_divergence_and_keeps_the_best_epoch_before_it(work, tmp_path):
    """runner.train_qat: a check that reports a problem in epoch 3 stops the run there; the
    Best returned is the lowest-validation epoch of epochs 1 and 2."""
    from preprocessors import make_dataloader
    from runner import Diverged, train_qat

    root, _, _ = work
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    loaders = [make_dataloader(str(root / "data"), name, name == "train.npy", 64, input_size=2)
               for name in ("train.npy", "valid.npy")]
    epochs_seen = []

    def check():
        return "stop here" if epochs_seen and epochs_seen[-1] == 2 else None

    best, stopped = train_qat(model, torch.optim.Adam(model.parameters(), 1e-2), loaders[0], loaders[1], 5, 42,
                              str(tmp_path), check=check, schedule=epochs_seen.append, verbose=False)
    assert isinstance(stopped, Diverged) and (stopped.epoch, stopped.batch, stopped.problem) == (3, 1, "stop here")
    valid = [float(line.split(",")[1]) for line in (tmp_path / "valid.csv").read_text().splitlines()[1:]]
    assert len(valid) == 2 and best.epoch == valid.index(min(valid)) + 1 and best.valid_loss == min(valid)
