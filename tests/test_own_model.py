"""A user edits model.py: the stage scripts take whatever FFN(input_size) builds.

A copy of the scripts with a LeakyReLU + BatchNorm1d FFN goes through data, a short
training, calibration, deploy at batch 4, the integer reference and the compile
pre-flight; a model with a layer the built-in quantizer cannot take is named before
training and refused by the quantizer script in one line."""
import os
import shutil
import subprocess
import sys

from conftest import MODEL_PY_HEAD, REPO, assert_clean_error

SCRIPTS = [f for f in os.listdir(REPO) if f.endswith(".py")] + ["vaiq", "dpu", "flow", "quantization", "hls", "reporting", "compile.sh"]

LEAKY_BN = MODEL_PY_HEAD + '''        self.bn1 = nn.BatchNorm1d(3 * input_size)
        self.act1 = nn.LeakyReLU(0.1015625)
        self.drop = nn.Dropout(0.1)

    def forward(self, x):
        x = self.drop(self.act1(self.bn1(self.l1(x))))
        return self.l3(F.leaky_relu(self.l2(x), 0.1))
'''
HARDTANH = MODEL_PY_HEAD + '''        self.act = nn.Hardtanh()

    def forward(self, x):
        return self.l3(F.relu(self.l2(self.act(self.l1(x)))))
'''


def project(tmp_path, model_source):
    work = tmp_path / "work"
    work.mkdir()
    for name in set(SCRIPTS):
        source = os.path.join(REPO, name)
        if os.path.isdir(source):
            shutil.copytree(source, str(work / name), ignore=shutil.ignore_patterns("__pycache__"))
        elif os.path.exists(source):
            shutil.copy(source, str(work / name))
    (work / "model.py").write_text(model_source)
    return work


def run(work, *command):
    return subprocess.run([sys.executable] + list(command), cwd=str(work), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=600)


def ok(result):
    assert result.returncode == 0, result.stdout + result.stderr
    return result


TRAIN = ["run.py", "--data_dir", "data", "--lr", "1e-2", "--n_epochs", "2", "--batch_size", "64", "--train",
         "--checkpoint_dir", "checkpoints"]


def test_a_leaky_relu_batchnorm_ffn_goes_through_every_stage(tmp_path):
    work = project(tmp_path, LEAKY_BN)
    ok(run(work, "generate_data.py", "--n_samples", "600", "--output_dir", "data", "--seed", "1"))
    trained = ok(run(work, *TRAIN))
    assert "warning" not in trained.stderr
    calib = ok(run(work, "vai_q_pytorch_quant.py", "--quant_mode", "calib", "--batch_size", "64"))
    # The real quantizer's own words about these layers, as it prints them.
    assert "[VAIQ_NOTE][QUANTIZER_TORCH_NOT_FUSED_BN]: Node FFN::FFN/BatchNorm1d[bn1]/ret.3" in calib.stdout
    assert ("[VAIQ_WARN][QUANTIZER_TORCH_LEAKYRELU]: Force to change negative_slope of LeakyReLU from 0.1 "
            "to 0.1015625") in calib.stdout
    ok(run(work, "vai_q_pytorch_quant.py", "--quant_mode", "test", "--deploy", "--deploy_batch", "4",
           "--batch_size", "64"))
    simulated = ok(run(work, "simulate.py", "quantize_result/FFN_int.xmodel", "--data", "data/test.npy",
                       "--check", "quantize_result/deploy_check_data_int"))
    assert simulated.stdout.splitlines()[-1].endswith("deploy check: all 30 tensors match")
    preflight = run(work, "-m", "dpu.preflight", "quantize_result/FFN_int.xmodel", "DPUCADF8H", "--no_compiler")
    ok(preflight)
    assert "ops data/const/fix/matmul/scale/leaky-relu" in preflight.stdout
    assert "ok: activations leaky-relu: DPUCADF8H's engines have them" in preflight.stdout
    assert "skip: scale ops of bn1 (BatchNorm1d, not folded by the quantizer)" in preflight.stdout
    assert "ok: deploy check: all 30 tensors" in preflight.stdout


def test_a_layer_outside_the_list_is_named_before_training_and_refused_by_the_quantizer(tmp_path):
    work = project(tmp_path, HARDTANH)
    ok(run(work, "generate_data.py", "--n_samples", "200", "--output_dir", "data", "--seed", "1"))
    trained = ok(run(work, *(TRAIN[:6] + ["1"] + TRAIN[7:])))
    warning = [line for line in trained.stderr.splitlines() if "warning" in line]
    assert warning == ["run.py: warning: model.py: FFN: unsupported operation Hardtanh (a module); the built-in "
                       "quantizer takes a chain of nn.Linear and nn.BatchNorm1d layers, each optionally followed by "
                       "ReLU, LeakyReLU or F.relu6 (nn.ReLU6 becomes ReLU), with nn.Dropout anywhere; vai_q_pytorch "
                       "makes it a custom op nndct_hardtanh whose bounds the xmodel does not store, and DPUCADF8H "
                       "has no hardtanh engine"]
    refused = run(work, "vai_q_pytorch_quant.py", "--quant_mode", "calib", "--batch_size", "64",
                  "--backend", "builtin")
    assert_clean_error(refused, "FFN: unsupported operation Hardtanh", "nndct_hardtanh")
    assert not (work / "quantize_result").exists()


def test_a_checkpoint_that_does_not_fit_model_py(tmp_path):
    """The shipped checkpoint against an edited model.py: the missing keys, one line."""
    work = project(tmp_path, LEAKY_BN)
    shutil.copytree(os.path.join(REPO, "data"), str(work / "data"))
    shutil.copytree(os.path.join(REPO, "checkpoints"), str(work / "checkpoints"))
    refused = run(work, "vai_q_pytorch_quant.py", "--quant_mode", "calib", "--batch_size", "64",
                  "--backend", "builtin")
    assert_clean_error(refused, "checkpoints/ffn_state_dict.pth: keys do not match the model", "missing ['bn1.")
