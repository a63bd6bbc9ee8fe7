"""The deployable exports keep the compression and compute what compress.load computes.

Against the oracle ``compress.load`` of the saved artifact, on tiny models: the compressed ONNX
(onnxruntime, also in a venv holding only onnxruntime and numpy) and the C export (compiled here
with the system C compiler, warnings as errors) give the same predicted class on every row and
logits within a stated tolerance; the ONNX file stores integer codes and onnxruntime folds the
expansion subgraphs when it creates the session; a layer an export lacks is one line.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from slimtune import compress
from slimtune.search import deploy
from slimtune.search.present.deploy_export import graph_for
from slimtune.spaces import SpecError
from tests import user_models

#: |onnxruntime or C logit - PyTorch logit| <= RTOL * max(1, max |logit|) (float32, other summation order).
RTOL = 1e-4
PRE = {"x_mean": 0.0, "x_std": 16.0, "classes": list(range(10))}


class Blocks(nn.Module):
    """A ResNet-shaped hook model: conv + BatchNorm, residual adds, pooling, a scaled branch."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(width)
        self.conv = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        h = torch.relu(self.bn0(self.stem(x.reshape(-1, 1, 8, 8))))
        h = h + 0.5 * torch.relu(self.bn1(self.conv(h)))
        h = self.pool(h).mean((2, 3))
        return self.head(h)


def _blocks(config):
    torch.manual_seed(0)
    model = Blocks()
    for bn in (model.bn0, model.bn1):  # non-trivial statistics, one negative gain
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        with torch.no_grad():
            bn.weight.uniform_(-1.5, 1.5)
    return model


CASES = {
    "mlp-4bit-pruned": ({"arch": "mlp", "input_shape": [8, 8], "output_dim": 10, "depth": 2, "width": 32},
                        [compress.MagnitudePrune(sparsity=0.8), compress.AffineQuantize(bits=4)]),
    "mlp-6bit": ({"arch": "mlp", "input_shape": [64], "output_dim": 10, "depth": 1, "width": 24},
                 [compress.AffineQuantize(bits=6, bits_first=8)]),
    "mlp-2bit-per-tensor": ({"arch": "mlp", "input_shape": [64], "output_dim": 10, "depth": 1, "width": 16},
                            [compress.AffineQuantize(bits=2, per_channel=False)]),
    "mlp-fp32-pruned": ({"arch": "mlp", "input_shape": [64], "output_dim": 10, "depth": 1, "width": 16},
                        [compress.MagnitudePrune(sparsity=0.9)]),
    "cnn1d-5bit-pruned": ({"arch": "cnn", "input_shape": [64], "output_dim": 10, "depth": 3, "width": 12},
                          [compress.MagnitudePrune(sparsity=0.5), compress.AffineQuantize(bits=5, bits_first=8)]),
    "cnn2d-3bit-symmetric": ({"arch": "cnn", "input_shape": [8, 8], "output_dim": 10, "depth": 2, "width": 8},
                             [compress.AffineQuantize(bits=3, symmetric=True)]),
    "hook-bn-residual": ({"arch": "hook", "hook": "blocks", "input_shape": [8, 8], "output_dim": 10},
                         [compress.MagnitudePrune(sparsity=0.4), compress.AffineQuantize(bits=4)]),
    # MLPerf Tiny's ResNet-8 and a DS-CNN (tests/user_models.py): structured and magnitude pruning, QAT
    "resnet8-structured-qat4": ({"arch": "hook", "hook": "tests.user_models:resnet8", "input_shape": [8, 8],
                                 "output_dim": 10, "config": {"input_shape": [8, 8], "output_dim": 10, "width": 8}},
                                [compress.StructuredPrune(ratio=0.25), compress.MagnitudePrune(sparsity=0.3),
                                 compress.FakeQuantize(bits=4), compress.AffineQuantize(bits=4)]),
    "dscnn-structured-6bit": ({"arch": "hook", "hook": "tests.user_models:ds_cnn", "input_shape": [64],
                               "output_dim": 10, "config": {"input_shape": [64], "output_dim": 10, "width": 12}},
                              [compress.StructuredPrune(ratio=0.25), compress.AffineQuantize(bits=6)]),
}
BUILDERS = {"blocks": _blocks, "tests.user_models:resnet8": user_models.resnet8,
            "tests.user_models:ds_cnn": user_models.ds_cnn}


def _compressed(name: str, tmp_path: Path):
    """The case's model, compressed, saved and loaded back (the oracle), and its input shape."""
    recipe, configs = CASES[name]
    torch.manual_seed(1)
    model = compress.build_model(recipe, builder=BUILDERS.get(recipe.get("hook")))
    small = compress.compress(model, *configs)
    path = tmp_path / "m.slim"
    compress.save(small, path, recipe=recipe)
    return compress.load(path, builders=BUILDERS), recipe["input_shape"]


def _raw(shape, n: int = 64) -> np.ndarray:
    """Raw features (digits pixels 0..16) and the model input (/16)."""
    from sklearn.datasets import load_digits

    x = load_digits().data[:n].astype(np.float32)
    return x.reshape(n, *shape)


def _oracle(model, raw: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(raw / np.float32(16.0))).numpy()


def _close(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    assert np.array_equal(got.argmax(1), want.argmax(1))
    assert float(np.abs(got - want).max()) <= RTOL * max(1.0, float(np.abs(want).max()))


@pytest.mark.parametrize("name", sorted(CASES))
def test_onnx_and_c_compute_what_compress_load_computes(name, tmp_path):
    model, shape = _compressed(name, tmp_path)
    raw = _raw(shape)
    want = _oracle(model, raw)
    graph = deploy.graph_of(model, shape, PRE)
    blob = deploy.onnx_bytes(graph)
    sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    _close(sess.run(None, {"x": raw})[0], want)
    deploy.write_c(graph, tmp_path / "c")
    _close(deploy.run_export(tmp_path / "c", raw), want)


def test_batchnorm_is_folded_and_quantized_weights_are_integer_codes(tmp_path):
    model, shape = _compressed("hook-bn-residual", tmp_path)
    graph = deploy.graph_of(model, shape, PRE)
    assert [op.kind for op in graph.ops].count("conv") == 2 and "bn" not in {op.kind for op in graph.ops}
    proto = onnx.load_from_string(deploy.onnx_bytes(graph))
    ops = [n.op_type for n in proto.graph.node]
    assert "BatchNormalization" not in ops and ops.count("DequantizeLinear") == 3
    floats = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    assert all(np.prod(t.dims) <= 16 for t in floats), "no weight tensor is stored as float32"
    assert max(len(n) for n in [*(t.name for t in proto.graph.initializer), *(o for n in proto.graph.node
                                                                               for o in n.output)]) <= 2


def test_a_dense_4bit_weight_is_uint4_packed_two_per_byte(tmp_path):
    model = compress.compress(compress.build_model(CASES["mlp-6bit"][0]), compress.AffineQuantize(bits=4))
    proto = onnx.load_from_string(deploy.onnx_bytes(deploy.graph_of(model, [64], PRE)))
    codes = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.UINT4 and len(t.dims) == 2]
    assert sorted(tuple(t.dims) for t in codes) == [(10, 24), (24, 64)]
    assert all(len(t.raw_data) == (int(np.prod(t.dims)) + 1) // 2 for t in codes)


def test_onnxruntime_folds_the_expansion_when_the_session_is_created(tmp_path):
    model, shape = _compressed("cnn1d-5bit-pruned", tmp_path)
    graph = deploy.graph_of(model, shape, PRE)
    proto = deploy.onnx_model(graph, sparse=True, unpack=True)
    assert {f.name for f in proto.functions} >= {"U", "M"}, "the case exercises the expansion functions"
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    left = {n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node}
    folded = {"E", "U", "G", "M", "ScatterElements", "Gather", "CumSum", "Where", "Range", "Expand", "Cast"}
    assert not left & folded, left
    gaps = deploy.graph_of(*_compressed("mlp-4bit-pruned", tmp_path), PRE)
    proto = deploy.onnx_model(gaps, sparse=True, unpack=False)
    assert {f.name for f in proto.functions} == {"G", "E"}
    ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    left = {n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node}
    assert left == {"DequantizeLinear", "Div", "Flatten", "Gemm", "Relu"}, left


def test_c_export_compiles_with_warnings_as_errors_and_reports_its_footprint(tmp_path):
    model, shape = _compressed("cnn1d-5bit-pruned", tmp_path)
    src = deploy.write_c(deploy.graph_of(model, shape, PRE), tmp_path)
    header = (tmp_path / "model.h").read_text()
    assert "int slimtune_predict(const float *input, float *output);" in header
    assert f"#define SLIMTUNE_ARENA_BYTES {4 * src.arena_floats}" in header
    assert "malloc" not in src.source and "FILE" not in src.source and "static const uint8_t" in src.source
    fp = deploy.footprint(tmp_path)
    flash = [k for k in fp.sections if k.startswith((".text", ".rodata", ".data"))]
    assert ".rodata" in flash and fp.flash_bytes == sum(fp.sections[k] for k in flash)
    assert fp.ram_bytes >= 4 * (src.arena_floats + src.row_floats) and fp.stack_bytes > 0


def test_a_layer_an_export_lacks_is_one_line_naming_it():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.LayerNorm(16), nn.Linear(16, 10))
    manifest = {"model": {"input_shape": [64], "kind": "classification"}, "preprocess": PRE}
    with pytest.raises(SpecError) as err:
        graph_for(model, manifest, "c")
    assert "2 (LayerNorm)" in str(err.value) and "\n" not in str(err.value)
    lstm = nn.LSTM(8, 8)
    with pytest.raises(deploy.Unsupported, match="LSTM"):
        deploy.graph_of(nn.Sequential(lstm), [8, 8])


def test_an_onnxruntime_only_venv_predicts_the_test_split_like_compress_load(tmp_path):
    """Stock onnxruntime on CPU, nothing else installed: the file alone (labels from its metadata)."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    torch.manual_seed(0)
    model = compress.build_model(CASES["mlp-4bit-pruned"][0])
    xt, yt = torch.from_numpy(x[:1400] / 16).float(), torch.from_numpy(y[:1400])
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(100):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    configs = compress.MagnitudePrune(sparsity=0.5), compress.AffineQuantize(bits=4)
    compress.save(compress.compress(model, *configs), tmp_path / "m.slim")
    oracle = compress.load(tmp_path / "m.slim")
    test = x[1400:].astype(np.float32).reshape(-1, 8, 8)
    want = _oracle(oracle, test)
    (tmp_path / "m.onnx").write_bytes(deploy.onnx_bytes(deploy.graph_of(oracle, [8, 8], PRE)))
    np.save(tmp_path / "x.npy", test)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    pins = [f"onnxruntime=={ort.__version__}", f"numpy=={np.__version__}"]
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", *pins], check=True, timeout=600)
    code = ("import json, sys, numpy as np, onnxruntime as ort\n"
            "s = ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])\n"
            "y = s.run(None, {'x': np.load(sys.argv[2])})[0]\n"
            "labels = json.loads(s.get_modelmeta().custom_metadata_map['classes'])\n"
            "np.save(sys.argv[3], y)\n"
            "print(json.dumps([labels[i] for i in y.argmax(1)]))\n")
    out = subprocess.run([py, "-I", "-c", code, str(tmp_path / "m.onnx"), str(tmp_path / "x.npy"),
                          str(tmp_path / "y.npy")], check=True, capture_output=True, text=True, timeout=300)
    listed = subprocess.run([py, "-m", "pip", "list", "--format", "json"], check=True, capture_output=True, text=True)
    assert {p["name"] for p in json.loads(listed.stdout)} <= {"onnxruntime", "numpy", "pip", "setuptools"}
    assert json.loads(out.stdout) == want.argmax(1).tolist()
    _close(np.load(tmp_path / "y.npy"), want)
    assert (want.argmax(1) == y[1400:]).mean() > 0.7  # a trained model, not a constant


def _flash_spec(**over) -> dict:
    from tests.test_sweep import digits_spec

    spec = digits_spec(name="t-flash", objectives={"accuracy": "max", "flash_bytes": "min"},
                       constraints={"onnx_bytes": {"max": 1_000_000}})
    spec["search"] = {**spec["search"], "trials": 3}
    spec.update(over)
    return spec


def test_a_sweep_on_flash_bytes_reports_what_the_compiler_reports_for_its_exports(ray_session, tmp_path):
    import yaml

    from slimtune.cli import main
    from slimtune.search import export_trial, load_results, pareto_front

    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(_flash_spec()))
    out = tmp_path / "run"
    assert main(["sweep", str(spec), "--out", str(out), "--quiet"]) == 0
    df = load_results(out)
    ok = df[df["status"] == "ok"]
    assert len(ok) >= 3 and ok[["flash_bytes", "ram_bytes", "onnx_bytes"]].notna().all().all()
    assert list(pareto_front(df).columns).count("flash_bytes") == 1
    for _, row in ok.head(3).iterrows():
        n = int(row["trial_number"])
        export_trial(out, n, "c", tmp_path / f"c{n}")
        c = json.loads((tmp_path / f"c{n}" / "slimtune.json").read_text())["c"]
        assert (c["flash_bytes"], c["ram_bytes"]) == (int(row["flash_bytes"]), int(row["ram_bytes"]))
        export_trial(out, n, "onnx", tmp_path / f"m{n}.onnx")
        assert (tmp_path / f"m{n}.onnx").stat().st_size == int(row["onnx_bytes"])


def test_flash_bytes_without_a_c_compiler_stops_before_ray_starts(monkeypatch, tmp_path):
    from slimtune.search.driver.checks import prepare
    from slimtune.spaces import parse_spec

    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert deploy.find_compiler() is None
    with pytest.raises(SpecError) as err:
        prepare(parse_spec(_flash_spec()), tmp_path / "run")
    assert str(err.value).startswith("objectives.flash_bytes") and "C compiler" in str(err.value)
    assert not (tmp_path / "run" / "sweep.json").exists()
