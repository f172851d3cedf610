"""With pytorch_nndct importable, the script drives it through the same API calls.

The real package exists only in the Vitis AI docker; here a stand-in package on
PYTHONPATH records every call and hands it on to the built-in quantizer."""
import json
import os
import shutil
import textwrap

import pytest

from conftest import REPO, run_script

GOLDEN_P1 = os.path.join(os.path.dirname(__file__), "fixtures", "golden", "p1_trained_in2")

RECORDING_PACKAGE = textwrap.dedent('''
    import json, os, sys
    import vaiq

    LOG = os.environ["NNDCT_CALL_LOG"]

    def record(*call):
        with open(LOG, "a") as f:
            f.write(json.dumps([str(part) for part in call]) + "\\n")

    class torch_quantizer:
        def __init__(self, quant_mode, module, input_args, output_dir="quantize_result", bitwidth=8, device=None):
            record("torch_quantizer", quant_mode, tuple(input_args[0].shape), output_dir, bitwidth,
                   " ".join(a for a in sys.argv if a.startswith("--nndct")))
            self._q = vaiq.torch_quantizer(quant_mode, module, input_args, output_dir=output_dir)
            self.quant_model = self._q.quant_model

        def __getattr__(self, name):
            method = getattr(self._q, name)
            def call(*args, **kwargs):
                record(name, sorted(kwargs.items()))
                return method(*args, **kwargs)
            return call
''')


@pytest.fixture
def nndct_env(tmp_path, monkeypatch):
    package = tmp_path / "site" / "pytorch_nndct"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "apis.py").write_text(RECORDING_PACKAGE)
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    shutil.copy(os.path.join(GOLDEN_P1, "calib.npy"), str(work / "data" / "test.npy"))
    shutil.copy(os.path.join(GOLDEN_P1, "float_state_dict.pth"), str(work / "model.pth"))
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("NNDCT_CALL_LOG", str(log))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path / "site"), REPO]))
    return work, log


def calls(log):
    return [json.loads(line) for line in log.read_text().splitlines()]


def quant(work, *args):
    result = run_script("vai_q_pytorch_quant.py", "--model_name", "model.pth", "--batch_size", "64", *args,
                        cwd=str(work))
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_auto_backend_uses_pytorch_nndct_with_the_api_of_the_real_one(nndct_env):
    work, log = nndct_env
    assert "calib (nndct)" in quant(work, "--quant_mode", "calib", "--nndct_param_corr", "False")
    assert calls(log) == [["torch_quantizer", "calib", "(64, 2)", "quantize_result", "8", "--nndct_param_corr"],
                          ["export_quant_config", "[]"]]
    log.unlink()
    quant(work, "--quant_mode", "test", "--deploy")
    assert calls(log) == [
        ["torch_quantizer", "test", "(1, 2)", "quantize_result", "8", ""],   # deploy: batch 1
        ["export_xmodel", "[('deploy_check', True), ('output_dir', 'quantize_result')]"],
        ["export_torch_script", "[('output_dir', 'quantize_result')]"],
        ["export_onnx_model", "[('output_dir', 'quantize_result')]"],
    ]
    assert (work / "quantize_result" / "FFN_int.xmodel").exists()
    log.unlink()
    quant(work, "--quant_mode", "test", "--deploy", "--deploy_batch", "4")
    assert calls(log)[0] == ["torch_quantizer", "test", "(4, 2)", "quantize_result", "8", ""]   # DPUCADF8H
    from vaiq.xmodel import read_xmodel
    assert read_xmodel(str(work / "quantize_result" / "FFN_int.xmodel")).batch == 4


def test_fast_finetune_calls_the_real_api(nndct_env):
    work, log = nndct_env
    quant(work, "--quant_mode", "calib", "--fast_finetune")
    assert [c[0] for c in calls(log)] == ["torch_quantizer", "fast_finetune", "export_quant_config"]
    log.unlink()
    quant(work, "--quant_mode", "test", "--fast_finetune", "--evaluate")
    assert [c[0] for c in calls(log)] == ["torch_quantizer", "load_ft_param"]


def test_builtin_backend_is_used_when_asked_even_with_pytorch_nndct_present(nndct_env):
    work, log = nndct_env
    assert "calib (builtin)" in quant(work, "--quant_mode", "calib", "--backend", "builtin")
    assert not log.exists()
