"""torch_quantizer: the calls a script makes on vai_q_pytorch, computed by the
built-in quantizer (spec: "API shape")."""
import copy
import os
import sys

import torch

from flow.checked_io import InputError

from . import export, finetune
from dpu.int_model import BIT_WIDTH
from .legalize import check_positions, legalize
from .options import DEFAULT_RELEASE, RELEASES, parse_nndct_options
from .quant_info import QUANT_INFO, read_bias_corr, read_ft_params, read_quant_info, write_quant_info
from .quant_model import QuantModel, bias_corrections, float_network
from .trace import trace_chain

MODES = ("calib", "test")
# What each release prints when the deploy forward's batch is not 1 (it then exports anyway).
BATCH_SIZE_ERROR = {
    "3.5": "[VAIQ_ERROR][QUANTIZER_TORCH_XMODEL_BATCHSIZE]: Batch size must be 1 when exporting xmodel.",
    "2.5": "[VAIQ_ERROR]: Batch size must be 1 when exporting xmodel.",
}


class torch_quantizer:  # noqa: N801 - the name of the vai_q_pytorch API
    def __init__(self, quant_mode, module, input_args=None, output_dir="quantize_result", bitwidth=8,
                 device=torch.device("cpu"), quant_config_file=None, target=None, release=DEFAULT_RELEASE):
        # release: not an argument of the real API (whose release is the one installed): the
        # vai_q_pytorch release whose defaults this built-in follows (options.RELEASES).
        if quant_mode not in MODES:
            raise InputError("quant_mode {!r}: the quantizer takes one of {}".format(quant_mode, ", ".join(MODES)))
        if bitwidth != BIT_WIDTH:
            raise InputError("bitwidth {}: the built-in quantizer supports {}-bit only".format(bitwidth, BIT_WIDTH))
        if quant_config_file is not None:
            raise InputError("{}: quant_config_file is not supported by the built-in quantizer".format(quant_config_file))
        if release not in RELEASES:
            raise InputError("release {!r}: the built-in quantizer follows {}".format(release, ", ".join(RELEASES)))
        self.quant_mode = quant_mode
        self.output_dir = output_dir
        self.release = release
        self.options = parse_nndct_options(sys.argv[1:], release)
        self.chain = trace_chain(module)
        for message in self.chain.messages:   # what the real quantizer says about these layers
            print(message)
        self.calibration_result, self.ft_params = None, None   # set by fast_finetune
        if quant_mode == "calib":
            self.quant_model = QuantModel(self.chain, calib=True, param_corr=self.options["nndct_param_corr"],
                                          corr_rate=self.options["nndct_param_corr_rate"])
        else:
            positions, bias_corrected, self.fast_finetuned = read_quant_info(output_dir, self.chain)
            bias_corr = read_bias_corr(output_dir, self.chain) if bias_corrected else None
            self.quant_model = QuantModel(self.chain, calib=False, positions=positions, bias_corr=bias_corr)
            self.quant_model.dumps = {}   # the deploy exports write the tensors of the last forward

    def _require(self, mode, what):
        if self.quant_mode != mode:
            raise InputError("{} needs quant_mode '{}', this quantizer is in '{}'".format(what, mode, self.quant_mode))

    def _require_calibrated(self, what):
        if not self.quant_model.params_ready:
            raise InputError("{}: no calibration forward was run".format(what))

    def _calibration_result(self):
        """(legalized positions, bias corrections or None, legalization changes) of
        the calibration forwards run so far."""
        self._require_calibrated("export_quant_config")
        model = self.quant_model
        positions = copy.deepcopy(model.positions)
        changes = legalize(self.chain, positions)
        return positions, model.corrected_biases(), changes

    def export_quant_config(self):
        """Write quant_info.json (and bias_corr.pth, and param.pth after fast
        finetune) with positions legalized for the DPU; returns the legalization
        changes, one text each."""
        self._require("calib", "export_quant_config")
        positions, bias_corr, changes = self.calibration_result or self._calibration_result()
        write_quant_info(self.output_dir, self.chain, positions, bias_corr, self.ft_params)
        return changes

    # ------------------------------------------------------------ fast finetune (AdaQuant)

    def fast_finetune(self, run_fn, run_args):
        """Calib mode, after the calibration forwards: finetune every Linear layer's
        parameters on the batches that run_fn(*run_args) feeds the quantized model
        (vaiq/finetune.py). As vai_q_pytorch 3.5 and 2.5, run_fn runs twice: in float (the
        reference outputs), then as one more calibration pass without bias correction.
        The quantized model then runs as test mode will run the result."""
        self._require("calib", "fast_finetune")
        self._require_calibrated("fast_finetune")
        model = self.quant_model
        reference = [(w.clone(), b.clone()) for w, b in model.params]
        batches, targets = [], []

        def float_forward(x):   # the quantizer's model with quantization off
            x = x.detach().float().clone()
            out = float_network(x, reference, self.chain)
            batches.append(x)
            targets.append(out)
            return out

        model.forward = float_forward   # for this one call of run_fn
        try:
            run_fn(*run_args)
        finally:
            del model.forward
        if not batches:
            raise InputError("fast_finetune: the run function ran no forward on quant_model")
        # The calibration pass: positions go on from the history, parameters as they are.
        corrections, model.corrections = model.corrections, None
        run_fn(*run_args)
        tuned = finetune.fast_finetune(self.chain, model.positions, reference, batches, targets)
        positions, _, changes = self._calibration_result()
        for problem in check_positions(self.chain, positions):   # legalized as after calibration: a guard
            raise InputError("fast_finetune: positions left the DPU ranges ({})".format(problem))
        # What the quantizer saves: float bias - tuned bias.
        bias_corr = None if corrections is None else bias_corrections(self.chain, model.float_params, tuned)
        self.ft_params = {layer.name: (w, b) for layer, (w, b) in zip(self.chain.layers, tuned)}
        self.calibration_result = positions, bias_corr, changes
        model.use_test_params(tuned, bias_corr, copy.deepcopy(positions))

    def load_ft_param(self):
        """Test mode: use the parameters fast finetune saved (param.pth). As in
        vai_q_pytorch, bias_corr.pth is then subtracted from the finetuned biases."""
        self._require("test", "load_ft_param")
        if not self.fast_finetuned:
            raise InputError("{}: not fast-finetuned; run --quant_mode calib --fast_finetune first".format(
                os.path.join(self.output_dir, QUANT_INFO)))
        params = read_ft_params(self.output_dir, self.chain)
        bias_corrected = read_quant_info(self.output_dir, self.chain)[1]
        bias_corr = read_bias_corr(self.output_dir, self.chain) if bias_corrected else None
        self.quant_model.use_test_params([params[layer.name] for layer in self.chain.layers], bias_corr)

    # ------------------------------------------------------------ deploy (test mode, one forward of batch 1)

    def export_xmodel(self, output_dir=None, deploy_check=False):
        self._require("test", "export_xmodel")
        if self.quant_model.dumps and export.deploy_batch(self.quant_model) != 1:
            print(BATCH_SIZE_ERROR[self.release])
        export.export_xmodel(self.quant_model, output_dir or self.output_dir, deploy_check)

    def export_torch_script(self, output_dir=None):
        self._require("test", "export_torch_script")
        export.export_torch_script(self.quant_model, output_dir or self.output_dir)

    # Release 2.5's name of the same export.
    export_traced_torch_script = export_torch_script

    def export_onnx_model(self, output_dir=None):
        self._require("test", "export_onnx_model")
        export.export_onnx_model(self.quant_model, output_dir or self.output_dir)
