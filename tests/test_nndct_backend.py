"""With pytorch_nndct importable, the script drives it through the same API calls.

The real package exists only in the Vitis AI docker; here a stand-in package on
PYTHONPATH records every call and hands it on to the built-in quantizer."""
import json
import os
import shutil
import textwrap

import pytest

from conftest import REPO, assert_clean_error, run_script, snapshot

GOLDEN_P1 = os.path.join(os.path.dirname(__file__), "fixtures", "golden", "p1_trained_in2")

RECORDING_PACKAGE = textwrap.dedent('''
    import json, os, sys
    import vaiq

    LOG = os.environ["NNDCT_CALL_LOG"]

    def record(*call):
        with open(LOG, "a") as f:
            f.write(json.dumps([str(part) for part in call]) + "\\n")

    class Processor:
        """2.5's: fast finetune reads the batch size its hook found from adaquant._batch_size,
        which 2.5's hook leaves None for dense layers, and then fails."""
        adaquant = None

        def advanced_quant_setup(self):
            if self.adaquant is None:
                self.adaquant = type("AdvancedQuantProcessor", (), {"_batch_size": None})()

    class torch_quantizer:
        RELEASE_2_5 = os.environ.get("NNDCT_RELEASE") == "2.5"

        def __init__(self, quant_mode, module, input_args, output_dir="quantize_result", bitwidth=8, device=None):
            record("torch_quantizer", quant_mode, tuple(input_args[0].shape), output_dir, bitwidth,
                   " ".join(a for a in sys.argv if a.startswith("--nndct")))
            self._q = vaiq.torch_quantizer(quant_mode, module, input_args, output_dir=output_dir)
            self.quant_model = self._q.quant_model
            self.processor = Processor()

        def fast_finetune(self, run_fn, run_args):
            self.processor.advanced_quant_setup()
            if self.RELEASE_2_5 and self.processor.adaquant._batch_size is None:
                raise TypeError("unsupported operand type(s) for *: 'NoneType' and 'int'")
            record("fast_finetune", self.processor.adaquant._batch_size)
            return self._q.fast_finetune(run_fn, run_args)

        def __getattr__(self, name):
            if name == ("export_torch_script" if self.RELEASE_2_5 else "export_traced_torch_script"):
                raise AttributeError(name)   # each release has one of the two names
            method = getattr(self._q, name)
            def call(*args, **kwargs):
                record(name, sorted(kwargs.items()))
                return method(*args, **kwargs)
            return call
''')


def make_env(tmp_path, monkeypatch, version):
    """A work folder with p1's data and checkpoint, and a recording pytorch_nndct of `version`
    (release 2.5 from a source build says 0.1.0, and exports TorchScript by another name)."""
    package = tmp_path / "site" / "pytorch_nndct"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("__version__ = {!r}\n".format(version))
    monkeypatch.setenv("NNDCT_RELEASE", "3.5" if version.startswith("3.5") else "2.5")
    (package / "apis.py").write_text(RECORDING_PACKAGE)
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    shutil.copy(os.path.join(GOLDEN_P1, "calib.npy"), str(work / "data" / "test.npy"))
    shutil.copy(os.path.join(GOLDEN_P1, "float_state_dict.pth"), str(work / "model.pth"))
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("NNDCT_CALL_LOG", str(log))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path / "site"), REPO]))
    return work, log


@pytest.fixture
def nndct_env(tmp_path, monkeypatch):
    return make_env(tmp_path, monkeypatch, "3.5.0+b2b2279+torch2.13.0+cpu")


@pytest.fixture
def nndct25_env(tmp_path, monkeypatch):
    return make_env(tmp_path, monkeypatch, "0.1.0")


def calls(log):
    return [json.loads(line) for line in log.read_text().splitlines()]


def quant(work, *args):
    result = run_script("vai_q_pytorch_quant.py", "--model_name", "model.pth", "--batch_size", "64", *args,
                        cwd=str(work))
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_auto_backend_uses_pytorch_nndct_with_the_api_of_the_real_one(nndct_env):
    work, log = nndct_env
    assert "calib (nndct, vai_q_pytorch 3.5)" in quant(work, "--quant_mode", "calib", "--nndct_param_corr", "False")
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
    from dpu.xmodel import read_xmodel
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
    assert "calib (builtin, vai_q_pytorch 3.5)" in quant(work, "--quant_mode", "calib", "--backend", "builtin")
    assert not log.exists()


def test_release_2_5_is_driven_by_its_own_api_names(nndct25_env):
    work, log = nndct25_env
    assert "calib (nndct, vai_q_pytorch 2.5)" in quant(work, "--quant_mode", "calib")
    assert json.loads((work / "quantize_result" / "calibration.json").read_text())["release"] == "2.5"
    log.unlink()
    quant(work, "--quant_mode", "test", "--deploy")
    assert [c[0] for c in calls(log)] == ["torch_quantizer", "export_xmodel", "export_traced_torch_script",
                                           "export_onnx_model"]


def test_release_2_5_fast_finetune_is_given_the_batch_size_its_hook_misses(nndct25_env):
    work, log = nndct25_env   # 1000 calibration rows: 15 batches of 64 and a last one of 40
    assert "calib (nndct, vai_q_pytorch 2.5)" in quant(work, "--quant_mode", "calib", "--fast_finetune")
    assert calls(log)[1] == ["fast_finetune", "40"]
    log.unlink()
    quant(work, "--quant_mode", "test", "--fast_finetune", "--deploy")
    assert [c[0] for c in calls(log)] == ["torch_quantizer", "load_ft_param", "export_xmodel",
                                           "export_traced_torch_script", "export_onnx_model"]


def test_release_2_5_refuses_a_3_5_calibration_in_one_line(nndct25_env):
    work, log = nndct25_env
    builtin = run_script("vai_q_pytorch_quant.py", "--model_name", "model.pth", "--batch_size", "64", "--backend",
                         "builtin", "--quant_mode", "calib", cwd=str(work))
    assert builtin.returncode == 0, builtin.stderr
    before = snapshot(str(work / "quantize_result"))
    result = run_script("vai_q_pytorch_quant.py", "--model_name", "model.pth", "--batch_size", "64",
                        "--quant_mode", "test", cwd=str(work))
    assert_clean_error(result, "calibration.json: calibrated by vai_q_pytorch 3.5 (builtin), this run is "
                       "vai_q_pytorch 2.5 (nndct)", "recalibrate: python vai_q_pytorch_quant.py --quant_mode calib")
    assert snapshot(str(work / "quantize_result")) == before
    assert not log.exists()   # refused before the quantizer was built


def test_a_release_the_installed_quantizer_is_not_is_refused(nndct25_env):
    work, _ = nndct25_env
    result = run_script("vai_q_pytorch_quant.py", "--model_name", "model.pth", "--quant_mode", "calib",
                        "--vai_release", "3.5", cwd=str(work))
    assert_clean_error(result, "--vai_release 3.5: the installed pytorch_nndct is 0.1.0 (2.5)")
