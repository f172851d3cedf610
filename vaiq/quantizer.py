"""torch_quantizer: the calls a script makes on vai_q_pytorch, computed by the
built-in quantizer (spec: "API shape")."""
import copy
import sys

import torch

from checked_io import InputError

from . import export
from .fixpoint import BIT_WIDTH
from .legalize import legalize
from .options import parse_nndct_options
from .quant_info import read_bias_corr, read_quant_info, write_quant_info
from .quant_model import QuantModel
from .trace import trace_chain

MODES = ("calib", "test")


class torch_quantizer:  # noqa: N801 - the name of the vai_q_pytorch API
    def __init__(self, quant_mode, module, input_args=None, output_dir="quantize_result", bitwidth=8,
                 device=torch.device("cpu"), quant_config_file=None, target=None):
        if quant_mode not in MODES:
            raise InputError("quant_mode {!r}: the quantizer takes one of {}".format(quant_mode, ", ".join(MODES)))
        if bitwidth != BIT_WIDTH:
            raise InputError("bitwidth {}: the built-in quantizer supports {}-bit only".format(bitwidth, BIT_WIDTH))
        if quant_config_file is not None:
            raise InputError("{}: quant_config_file is not supported by the built-in quantizer".format(quant_config_file))
        self.quant_mode = quant_mode
        self.output_dir = output_dir
        self.options = parse_nndct_options(sys.argv[1:])
        self.chain = trace_chain(module)
        if quant_mode == "calib":
            self.fast_finetuned = False
            self.quant_model = QuantModel(self.chain, calib=True, param_corr=self.options["nndct_param_corr"])
        else:
            positions, bias_corrected, self.fast_finetuned = read_quant_info(output_dir, self.chain)
            bias_corr = read_bias_corr(output_dir, self.chain) if bias_corrected else None
            self.quant_model = QuantModel(self.chain, calib=False, positions=positions, bias_corr=bias_corr)
            self.quant_model.dumps = {}   # the deploy exports write the tensors of the last forward

    def _require(self, mode, what):
        if self.quant_mode != mode:
            raise InputError("{} needs quant_mode '{}', this quantizer is in '{}'".format(what, mode, self.quant_mode))

    def export_quant_config(self):
        """Legalize the calibrated positions for the DPU and write quant_info.json
        (and bias_corr.pth); returns the legalization changes, one text each."""
        self._require("calib", "export_quant_config")
        model = self.quant_model
        if not model.params_ready:
            raise InputError("export_quant_config: no calibration forward was run")
        positions = copy.deepcopy(model.positions)
        changes = legalize(self.chain, positions)
        bias_corr = model.corrected_biases() if model.corrections is not None else None
        write_quant_info(self.output_dir, self.chain, positions, bias_corr, self.fast_finetuned)
        return changes

    # ------------------------------------------------------------ deploy (test mode, one forward of batch 1)

    def export_xmodel(self, output_dir=None, deploy_check=False):
        self._require("test", "export_xmodel")
        export.export_xmodel(self.quant_model, output_dir or self.output_dir, deploy_check)

    def export_torch_script(self, output_dir=None):
        self._require("test", "export_torch_script")
        export.export_torch_script(self.quant_model, output_dir or self.output_dir)

    def export_onnx_model(self, output_dir=None):
        self._require("test", "export_onnx_model")
        export.export_onnx_model(self.quant_model, output_dir or self.output_dir)
