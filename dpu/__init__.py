"""The DPU side: the targets table (targets), the pre-flight checks of compile.sh
(preflight), the DPU's shift ranges (shifts), the integer op model (int_model), the
integer reference (reference), the .xmodel file (xmodel, xmodel_pb2) and running an
xmodel on data with its deploy check (simulation). It imports only flow: the
quantizer (vaiq) uses it to write the xmodel, never the reverse."""
