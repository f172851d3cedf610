"""Random FFNs and data through the built-in quantizer, checked against what holds
without the real quantizer: the integer DPU reference of the written xmodel equals
the test-mode outputs (but where an input beyond int32 became -128), the deploy
dumps equal the reference's, calib mode equals test mode where nothing moves
between them, the positions are legal, and re-runs write the same bytes.

The golden cases found three edges of the real quantizer (signed zeros, int32
overflow, float64 bookkeeping); these draws look for the next one.
"""
import os
import sys

import numpy as np
import pytest
import torch

from model import FFN
from dpu import reference
from vaiq import torch_quantizer
from vaiq.legalize import check_positions
from dpu.xmodel import read_xmodel

N_CASES = 16


def draw(seed):
    """(model, features, batch size, bias correction on) of one random case."""
    rng = np.random.RandomState(1000 + seed)
    n = int(rng.randint(1, 9))
    torch.manual_seed(seed)
    model = FFN(n).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(float(10 ** rng.uniform(-2.5, 1.5)))
    batch = int(rng.choice([1, 7, 32, 64, 256, 1024]))
    rows = int(rng.randint(8, 60 if batch == 1 else 400))   # batch 1 is slow: fewer rows
    kind = rng.randint(4)
    x = rng.standard_normal((rows, n)) * 10 ** rng.uniform(-3, 3)
    if kind == 1:      # heavy tails
        x = rng.standard_cauchy((rows, n))
    elif kind == 2:    # a constant column and exact half-LSB ties at a likely position
        x[:, 0] = 1.5
        x[: rows // 2, -1] = (rng.randint(-100, 100, rows // 2) + 0.5) / 32
    elif kind == 3 and rows > 2 * batch:   # an outlier after the first batches: an int32 overflow
        x[rows - 3, int(rng.randint(n))] = 1e9
    return model, x.astype(np.float32), batch, bool(rng.randint(2))


def run_case(seed, out, monkeypatch):
    model, x, batch, corr = draw(seed)
    monkeypatch.setattr(sys, "argv", ["quant"] + ([] if corr else ["--nndct_param_corr", "False"]))
    features = torch.from_numpy(x)
    batches = torch.split(features, batch)
    calib = torch_quantizer("calib", model, (batches[0],), output_dir=str(out))
    with torch.no_grad():
        calib_out = torch.cat([calib.quant_model(b) for b in batches])
    changes = calib.export_quant_config()
    test = torch_quantizer("test", model, (batches[0],), output_dir=str(out))
    with torch.no_grad():
        test_out = torch.cat([test.quant_model(b) for b in batches])
    deploy_rows = features[:min(4, len(features))]
    deploy = torch_quantizer("test", model, (deploy_rows,), output_dir=str(out))
    with torch.no_grad():
        deploy.quant_model(deploy_rows)
    deploy.export_xmodel(str(out), deploy_check=True)
    return dict(x=x, batches=len(batches), corr=corr, changes=changes, calib_out=calib_out.numpy(),
                test_out=test_out.numpy(), positions=test.quant_model.positions, chain=test.chain,
                deploy_rows=deploy_rows.numpy())


def files(folder):
    found = {}
    for root, _, names in os.walk(str(folder)):
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                found[os.path.relpath(os.path.join(root, name), str(folder))] = f.read()
    return found


@pytest.mark.parametrize("seed", range(N_CASES))
def test_random_case(seed, tmp_path, monkeypatch):
    out = tmp_path / "q"
    case = run_case(seed, out, monkeypatch)
    assert check_positions(case["chain"], case["positions"]) == []

    # The integer reference of the xmodel alone gives the test-mode outputs, every row,
    # but where the quantizer turned an input beyond int32 into -128 (the DPU saturates).
    model = read_xmodel(str(out / "FFN_int.xmodel"))
    int_outputs = reference.outputs(model, case["x"])
    overflow = np.zeros(len(case["x"]), dtype=bool)
    overflow[reference.int32_overflow_rows(case["x"], model.fp_in)] = True
    differ = (int_outputs != case["test_out"]).any(axis=1)
    assert not (differ & ~overflow).any(), np.flatnonzero(differ & ~overflow)
    assert np.array_equal(int_outputs[~overflow].view(np.uint32), case["test_out"][~overflow].view(np.uint32))

    # Every deploy dump, byte for byte, from the xmodel alone.
    folder = out / "deploy_check_data_int" / "FFN"
    dumps = reference.deploy_dumps(model, case["deploy_rows"])
    assert sorted(dumps) == sorted(f for f in os.listdir(str(folder)) if f.endswith(".bin"))
    for name, array in dumps.items():
        assert (folder / name).read_bytes() == array.tobytes(), name

    # One batch, no correction, no legalization: nothing changes between calib and test mode.
    if case["batches"] == 1 and not case["corr"] and not case["changes"]:
        assert case["calib_out"].tobytes() == case["test_out"].tobytes()

    # The same draw again writes the same bytes.
    again = tmp_path / "again"
    run_case(seed, again, monkeypatch)
    assert files(again) == files(out)


def test_the_draws_cover_the_edges():
    """The cases above include overflows, ties, single-batch runs and both correction settings."""
    draws = [draw(seed) for seed in range(N_CASES)]
    assert any((np.abs(x) >= 1e8).any() for _, x, _, _ in draws)
    assert any(len(x) <= b and not corr for _, x, b, corr in draws)   # calib mode against test mode
    assert {corr for _, _, _, corr in draws} == {True, False}
    assert len({x.shape[1] for _, x, _, _ in draws}) >= 5
