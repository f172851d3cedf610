"""The hls4ml route (hls/project.py): the deployed int8 network as an HLS project for the
U250 whose C simulation computes the DPU's numbers exactly. It imports dpu and flow only."""
