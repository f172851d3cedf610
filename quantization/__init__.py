"""What the quantization stages share whichever quantizer runs (the real pytorch_nndct
or the built-in vaiq): the calibration record that test mode checks."""
