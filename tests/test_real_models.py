"""Two real model shapes swept end to end: MLPerf Tiny's ResNet-8 on 8x8 digits and a DS-CNN on
MNIST-1D (tests/user_models.py), each pruned (structured or magnitude), quantized (PTQ or QAT),
stored (each trial checks that its artifact reloads to the same outputs), reloaded and exported
to ONNX and C. The compression contract suite (tests/test_compress.py) runs over both as well."""

from __future__ import annotations

import pytest

from slimtune.search import export_trial, load_model, load_results, run_sweep
from slimtune.spaces import parse_spec
from tests.test_sweep import digits_spec

SWEEPS = {
    "resnet8": {"task": {"dataset": "digits", "model": "tests.user_models:resnet8", "epochs": 2},
                "space": {"lr": 0.01, "batch_size": 64, "width": 8}},
    "dscnn": {"task": {"dataset": "mnist1d", "model": "tests.user_models:ds_cnn", "epochs": 2},
              "space": {"lr": 0.01, "batch_size": 128, "width": 12, "depth": 2}},
}


@pytest.mark.parametrize("name", sorted(SWEEPS))
def test_a_real_model_shape_sweeps_compresses_reloads_and_exports(name, ray_session, tmp_path):
    spec = digits_spec(name=f"t-{name}", **SWEEPS[name])
    spec["compress"] = {"prune": {"method": {"choice": ["structured", "magnitude"]},
                                  "sparsity": {"uniform": [0.2, 0.5]}, "finetune_epochs": 1},
                        "quantize": {"bits": {"choice": [4, 8]}, "mode": {"choice": ["ptq", "qat"]}, "qat_epochs": 1}}
    spec["search"] = {"trials": 3, "concurrency": 2, "sampler": "random", "seed": 0}
    out = tmp_path / "run"
    run_sweep(parse_spec(spec), out, quiet=True)
    ok = load_results(out).query("status == 'ok'")
    assert len(ok) >= 3 and set(ok["prune_method"]) <= {"structured", "magnitude"}
    assert (ok["uncompressed_params"] > 0).all()  # BatchNorm's own parameters stay float32 (folded on export)
    assert set(ok["device"]) == {"cpu"}
    row = ok.sort_values("accuracy").iloc[-1]
    assert row["accuracy"] > 0.2  # learned something in two epochs (10 classes)
    n = int(row["trial_number"])
    assert load_model(out, n, trust_code=True) is not None
    export_trial(out, n, "onnx", tmp_path / "m.onnx", trust_code=True)
    export_trial(out, n, "c", tmp_path / "c", trust_code=True)
    assert (tmp_path / "m.onnx").stat().st_size < int(row["dense_bytes"])
