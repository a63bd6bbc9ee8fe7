"""Plots, the HTML report (in headless Chromium), exports and predictions, CLI manners.

One tiny real sweep (digits, 4 trials, 2 epochs, pruning and quantization choices) on the
shared Ray; everything else reads it or a copy of it with a failed row added.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from slimtune import compress
from slimtune.cli import commands, main
from slimtune.search import (
    export_trial,
    hypervolume,
    load_exported,
    load_results,
    pareto_front,
    plot_sweep,
    write_report,
)
from slimtune.search.present.plot import hypervolume_curve
from slimtune.search.present.report import param_importances
from slimtune.search.results.table import write_results
from tests.test_sweep import digits_spec

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ONNX_ATOL = 1e-4  # logits: onnxruntime vs PyTorch
FAILED_ERROR = "ValueError: <script>alert('x')</script> & not <b>bold</b>"


def _spec() -> dict:
    return digits_spec(name="t-report")


@pytest.fixture(scope="module")
def run(ray_session, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("report")
    spec = tmp / "spec.yaml"
    spec.write_text(yaml.safe_dump(_spec()))
    out = tmp / "run"
    assert main(["sweep", str(spec), "--out", str(out), "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def with_failure(run, tmp_path_factory) -> Path:
    """A copy of the sweep with one failed trial whose error text holds HTML."""
    out = tmp_path_factory.mktemp("failed") / "run"
    shutil.copytree(run, out, ignore=shutil.ignore_patterns("ray"))
    df = load_results(out)
    failed = {"trial_id": "deadbeef", "trial_number": int(df["trial_number"].max()) + 1, "status": "failed",
              "error": FAILED_ERROR, "lr": 0.01, "batch_size": 64, "depth": 1, "width": 16, "epochs": 2}
    params = json.loads((out / "sweep.json").read_text())["params"]
    write_results(out, [*df.to_dict("records"), failed], params)
    return out


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """Raw digits rows (pixels 0..16, as a user's CSV holds them) and the model input (/16)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.data, (d.images / 16.0).astype(np.float32)


# ----------------------------------------------------------------- plot


def test_plot_writes_a_valid_png_of_nontrivial_size(with_failure, tmp_path):
    import matplotlib.image

    out = tmp_path / "plots" / "pareto.png"
    assert main(["plot", str(with_failure), "--out", str(out)]) == 0
    data = out.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 20_000
    img = matplotlib.image.imread(out)
    assert img.shape[0] >= 400 and img.shape[1] >= 800 and img.shape[2] in (3, 4)
    assert float(img[..., :3].std()) > 0.05  # not a blank canvas
    # default path: inside the sweep folder
    assert plot_sweep(with_failure) == with_failure / "pareto.png"
    assert (with_failure / "pareto.png").read_bytes()[:8] == PNG_SIGNATURE


def test_plot_of_a_sweep_without_finished_trials(with_failure, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(with_failure / "sweep.json", empty / "sweep.json")
    out = plot_sweep(empty, tmp_path / "p.png")
    assert out.read_bytes()[:8] == PNG_SIGNATURE


# ----------------------------------------------------------------- hypervolume


def test_hypervolume_known_values():
    df = pd.DataFrame({"a": [0.9, 0.5, 0.2], "s": [300.0, 100.0, 2000.0], "status": "ok", "feasible": True})
    # (max a, min s), ref (0, 1000): boxes [300,1000]x[0,0.9] and [100,1000]x[0,0.5]; point 3 is beyond ref
    want = 0.9 * 700 + 0.5 * (300 - 100)
    assert hypervolume(df, {"a": "max", "s": "min"}, {"a": 0.0, "s": 1000.0}) == pytest.approx(want)
    # failed and infeasible rows add nothing
    more = pd.concat([df, pd.DataFrame({"a": [1.0, 1.0], "s": [1.0, 1.0], "status": ["failed", "ok"],
                                        "feasible": [None, False]})])
    assert hypervolume(more, {"a": "max", "s": "min"}, {"a": 0.0, "s": 1000.0}) == pytest.approx(want)
    cube = pd.DataFrame({"x": [1.0], "y": [2.0], "z": [3.0]})
    assert hypervolume(cube, {"x": "min", "y": "min", "z": "min"}, {"x": 2, "y": 4, "z": 6}) == pytest.approx(6.0)
    assert hypervolume(df.iloc[:0], {"a": "max", "s": "min"}, {"a": 0.0, "s": 1000.0}) == 0.0


@settings(max_examples=60, deadline=None)
@given(dims=st.integers(2, 3), data=st.data())
def test_hypervolume_equals_the_count_of_dominated_grid_cells(dims, data):
    """Integer points in [0, 5)^k, ref 5: the volume is the number of unit cells some point is <= ."""
    pts = data.draw(st.lists(st.tuples(*[st.integers(0, 4)] * dims), min_size=1, max_size=8))
    cols = [f"c{i}" for i in range(dims)]
    df = pd.DataFrame(pts, columns=cols, dtype=float)
    grid = np.stack(np.meshgrid(*[np.arange(5)] * dims, indexing="ij"), -1).reshape(-1, dims)
    arr = np.array(pts)
    cells = int(np.sum(np.any(np.all(arr[None, :, :] <= grid[:, None, :], axis=2), axis=1)))
    got = hypervolume(df, {c: "min" for c in cols}, {c: 5.0 for c in cols})
    assert got == pytest.approx(cells)


def test_hypervolume_curve_grows_to_the_hypervolume_of_the_sweep(with_failure):
    df = load_results(with_failure)
    ref = {"accuracy": 0.0, "size_bytes": float(df["dense_bytes"].max())}
    numbers, hv = hypervolume_curve(df, {"accuracy": "max", "size_bytes": "min"}, ref)
    assert list(numbers) == sorted(df["trial_number"])
    assert np.all(np.diff(hv) >= 0) and hv[-1] > 0
    assert hv[-1] == pytest.approx(hypervolume(df, {"accuracy": "max", "size_bytes": "min"}, ref))


# ----------------------------------------------------------------- report


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI") == "true":
        pytest.fail("headless Chromium is needed for the report test: apt-get install -y chromium")
    pytest.skip("chromium is not installed (apt-get install -y chromium); CI fails here instead")


PROBE = """<script>
console.log("slimtune-probe");
window.addEventListener("load", () => {
  const front = document.querySelector("table#front");
  document.body.setAttribute("data-probe", JSON.stringify({
    frontRows: front ? front.querySelectorAll("tbody tr").length : -1,
    frontHead: front ? [...front.querySelectorAll("thead th")].map(th => th.textContent) : [],
    images: [...document.images].map(i => [i.id, i.naturalWidth, i.naturalHeight,
                                           Math.round(i.getBoundingClientRect().width)]),
    failed: (document.querySelector("#failed") || {}).textContent || "",
  }));
});
</script>"""


def test_report_renders_in_headless_chromium_without_console_errors(with_failure, tmp_path):
    chromium = _chromium()
    out = tmp_path / "report.html"
    assert main(["report", str(with_failure), "--out", str(out)]) == 0
    text = out.read_text()
    # self-contained: no script, nothing fetched from a network
    assert "<script" not in text.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    assert "<script>alert" not in text and html.escape(FAILED_ERROR) in text
    # Chromium loads a copy with a probe script that records what was rendered
    probed = tmp_path / "probed.html"
    probed.write_text(text.replace("</body>", PROBE + "</body>"))
    profile = tmp_path / "profile"
    proc = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
         "--enable-logging=stderr", "--v=0", "--window-size=1400,2000", "--dump-dom", probed.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [ln for ln in proc.stderr.splitlines() if ":CONSOLE" in ln]
    assert any("slimtune-probe" in ln for ln in console), proc.stderr[-2000:]  # console capture works
    assert [ln for ln in console if "slimtune-probe" not in ln] == []  # and nothing else was logged
    m = re.search(r'data-probe="([^"]*)"', proc.stdout)
    assert m, proc.stdout[:2000]
    probe = json.loads(html.unescape(m.group(1)))
    front = pareto_front(load_results(with_failure))
    assert probe["frontRows"] == len(front) >= 1
    assert "trial_number" in probe["frontHead"] and "size_bytes" in probe["frontHead"]
    [(img_id, width, height, shown)] = probe["images"]
    assert img_id == "pareto-plot" and width >= 800 and height >= 400 and shown > 300  # decoded and laid out
    assert FAILED_ERROR in probe["failed"]  # shown as text, not run


def test_report_default_path_and_importances(run):
    imps = param_importances(run)
    assert set(imps) == {"accuracy", "size_bytes"}
    for _name, imp in imps.items():
        assert isinstance(imp, dict), imp
        assert imp and sum(imp.values()) == pytest.approx(1.0)
        assert set(imp) <= {"lr", "depth", "width", "prune_method", "sparsity", "bits"}
    path = write_report(run)
    assert path == run / "report.html" and 'id="front"' in path.read_text()


def test_importances_need_two_complete_trials(run, tmp_path):
    import optuna

    folder = tmp_path / "one"
    folder.mkdir()
    shutil.copy(run / "sweep.json", folder / "sweep.json")
    assert all("no study.db" in v for v in param_importances(folder).values())
    study = optuna.create_study(study_name="t-report", storage=f"sqlite:///{folder / 'study.db'}",
                                directions=["maximize", "minimize"])
    study.add_trial(optuna.trial.create_trial(params={"lr": 0.01}, values=[0.5, 100.0],
                                              distributions={"lr": optuna.distributions.FloatDistribution(1e-3, 1e-1)}))
    imps = param_importances(folder)
    assert all(isinstance(v, str) and "at least 2 complete trials" in v for v in imps.values())
    assert "not available" in write_report(folder, tmp_path / "r.html").read_text()


# ----------------------------------------------------------------- export and predict


@pytest.fixture(scope="module")
def member(run) -> pd.Series:
    """A front member that is compressed (quantized or pruned) when the front has one."""
    front = pareto_front(load_results(run))
    squeezed = front[(front["bits"] < 32) | (front["prune_method"] == "magnitude")]
    return (squeezed if len(squeezed) else front).iloc[0]


@pytest.mark.parametrize("fmt,suffix", [("slim", ".slim"), ("onnx", ".onnx"), ("onnx-dense", ".onnx"),
                                        ("torchscript", ".pt"), ("c", "")])
def test_export_reloads_and_predicts_like_the_sweeps_model(run, member, tmp_path, capsys, fmt, suffix):
    out = tmp_path / f"model{suffix}"
    flags = ["--format", "onnx", "--dense"] if fmt == "onnx-dense" else ["--format", fmt]
    assert main(["export", str(run), "--trial", str(int(member["trial_number"])), *flags, "--out", str(out)]) == 0
    raw, x = _digits()
    model = compress.load(run / member["artifact"])
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    exported = load_exported(out, trust_code=fmt == "c")
    assert exported.format == fmt.removesuffix("-dense")
    got = exported.logits(exported.model_input(raw))  # onnx and c take the raw pixels
    assert got.shape == want.shape
    tol = ONNX_ATOL * max(1.0, float(np.abs(want).max())) if fmt in ("onnx", "onnx-dense", "c") else 1e-6
    assert float(np.max(np.abs(got - want))) <= tol
    assert np.array_equal(got.argmax(1), want.argmax(1))
    # the manifest
    m = exported.manifest
    assert m["format"] == fmt and m["trial"]["trial_number"] == int(member["trial_number"])
    assert m.get("raw_input", False) is (fmt in ("onnx", "onnx-dense", "c"))
    assert m["trial"]["trial_id"] == member["trial_id"] and m["trial"]["seed"] == int(member["seed"])
    assert m["trial"]["on_front"] is True
    assert m["params"]["width"] == int(member["width"]) and m["params"]["lr"] == pytest.approx(member["lr"])
    assert m["metrics"]["accuracy"] == pytest.approx(member["accuracy"])
    assert m["metrics"]["size_bytes"] == int(member["size_bytes"])
    assert m["spec"]["name"] == "t-report" and m["sweep"]["objectives"] == {"accuracy": "max", "size_bytes": "min"}
    assert {"torch", "numpy", "python", "slimtune"} <= set(m["versions"])
    assert m["model"]["input_shape"] == [8, 8] and m["preprocess"]["x_std"] == 16.0
    if fmt == "slim":  # the very artifact whose length is size_bytes
        assert out.read_bytes() == (run / member["artifact"]).read_bytes()
        assert out.stat().st_size == member["size_bytes"]
    if fmt in ("onnx", "onnx-dense"):
        import onnx

        props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
        assert json.loads(props["classes"]) == list(range(10))
        manifest = json.loads(props["slimtune"]) if fmt == "onnx-dense" else json.loads(Path(f"{out}.json").read_text())
        assert manifest["check"]["onnxruntime_max_abs_diff"] <= ONNX_ATOL * 100
        if fmt == "onnx":  # the compressed file holds only the labels besides the graph
            assert set(props) == {"classes"} and manifest["onnx_bytes"] == out.stat().st_size
    if fmt == "c":
        assert (out / "model.h").is_file() and m["c"]["flash_bytes"] > 0 and m["c"]["ram_bytes"] > 0
    # predict: a CSV of raw digits pixels, header row or not
    csv = tmp_path / "digits.csv"
    pd.DataFrame(raw[:200], columns=[f"pixel_{i}" for i in range(64)]).to_csv(csv, index=False)
    capsys.readouterr()
    trust = ["--trust-code"] if fmt == "c" else []  # a C export is compiled and run
    if fmt == "c":
        assert main(["predict", str(out), str(csv)]) == 2
    assert main(["predict", str(out), str(csv), *trust]) == 0
    printed = pd.read_csv(__import__("io").StringIO(capsys.readouterr().out))
    assert list(printed["prediction"]) == list(want[:200].argmax(1))
    bare = tmp_path / "bare.csv"
    pd.DataFrame(raw[:50]).to_csv(bare, index=False, header=False)
    preds = tmp_path / "out" / "pred.csv"
    assert main(["predict", str(out), str(bare), "--out", str(preds), *trust]) == 0
    assert list(pd.read_csv(preds)["prediction"]) == list(want[:50].argmax(1))


def test_export_by_trial_id_and_format_from_suffix(run, member, tmp_path):
    out = tmp_path / "m.onnx"
    assert main(["export", str(run), "--trial", str(member["trial_id"]), "--out", str(out)]) == 0
    assert load_exported(out).manifest["trial"]["trial_id"] == member["trial_id"]


def _fake_sweep(tmp_path: Path, kind: str, preprocess: dict) -> Path:
    """A sweep folder without Ray: one trial on 3 user features, with stored preprocessing."""
    folder = tmp_path / f"fake-{kind}"
    (folder / "artifacts").mkdir(parents=True)
    n_out = 1 if kind == "regression" else 2
    torch.manual_seed(0)
    model = compress.build_model({"arch": "mlp", "input_shape": [3], "output_dim": n_out, "depth": 1, "width": 8})
    size = compress.save(model, folder / "artifacts" / "abc.slim")
    metric = "r2" if kind == "regression" else "accuracy"
    meta = {"name": "fake", "objectives": {metric: "max", "size_bytes": "min"}, "constraints": {},
            "params": ["lr"], "kind": kind, "preprocess": preprocess,
            "spec": {"name": "fake", "task": {"dataset": "house.csv", "target": "y"}}}
    (folder / "sweep.json").write_text(json.dumps(meta))
    write_results(folder, [{"trial_id": "abc", "trial_number": 0, "status": "ok", "lr": 0.01, "seed": 1,
                            metric: 0.5, "size_bytes": size, "dense_bytes": size, "feasible": True,
                            "artifact": "artifacts/abc.slim"}], ["lr"])
    return folder


def test_predict_applies_stored_standardisation_labels_and_target_scale(tmp_path):
    """The contract for sweep.json's ``preprocess``: features (x - mean) / std, outputs to labels/units."""
    mean, std = [1.0, -2.0, 10.0], [2.0, 0.5, 4.0]
    rows = pd.DataFrame({"a": [1.0, 3.0, 0.0], "b": [-2.0, 0.0, 1.0], "c": [10.0, 2.0, 6.0], "y": [0.0, 1.0, 2.0]})
    csv = tmp_path / "rows.csv"
    rows.to_csv(csv, index=False)  # holds the target column too: it is dropped
    x = ((rows[["a", "b", "c"]].to_numpy() - mean) / std).astype(np.float32)
    for kind, extra in (("regression", {"y_mean": 100.0, "y_std": 5.0}),
                        ("classification", {"classes": ["cat", "dog"]})):
        folder = _fake_sweep(tmp_path, kind, {"x_mean": mean, "x_std": std, "target": "y", **extra})
        with torch.no_grad():
            out = compress.load(folder / "artifacts" / "abc.slim")(torch.from_numpy(x)).numpy()
        for fmt in ("onnx", "torchscript", "slim"):
            path = export_trial(folder, 0, fmt, tmp_path / f"{kind}.{fmt}")
            got = load_exported(path).predict(pd.read_csv(csv)[["a", "b", "c"]].to_numpy())
            assert main(["predict", str(path), str(csv), "--out", str(tmp_path / "p.csv")]) == 0
            printed = pd.read_csv(tmp_path / "p.csv")["prediction"]
            if kind == "regression":
                np.testing.assert_allclose(got, out[:, 0] * 5.0 + 100.0, atol=1e-3)
                np.testing.assert_allclose(printed, got, atol=1e-3)
            else:
                assert list(got) == list(np.array(["cat", "dog"])[out.argmax(1)]) == list(printed)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("slimtune: error: "), err
    return err[0]


def test_bad_input_exits_2_with_one_line(run, with_failure, member, tmp_path, capsys):
    onnx_out = tmp_path / "m.onnx"
    assert main(["export", str(run), "--trial", str(member["trial_number"]), "--out", str(onnx_out)]) == 0
    capsys.readouterr()
    cases = [
        (["export", str(run), "--trial", "999", "--format", "onnx", "--out", str(tmp_path / "x.onnx")], "--trial"),
        (["export", str(run), "--trial", "nosuchid", "--format", "onnx", "--out", str(tmp_path / "x.onnx")], "--trial"),
        (["export", str(with_failure), "--trial", "deadbeef", "--format", "slim", "--out", str(tmp_path / "x.slim")],
         "finished trial"),
        (["export", str(run), "--trial", "0", "--out", str(tmp_path / "x.bin")], "--format"),
        (["export", str(tmp_path / "nowhere"), "--trial", "0", "--format", "slim", "--out", str(tmp_path / "x")],
         "sweep folder"),
        (["plot", str(tmp_path / "nowhere")], "sweep folder"),
        (["report", str(tmp_path / "nowhere")], "sweep folder"),
        (["predict", str(tmp_path / "missing.onnx"), str(tmp_path / "d.csv")], "existing file"),
        (["predict", str(run / "sweep.json"), str(tmp_path / "d.csv")], "slimtune export"),
    ]
    wrong = tmp_path / "wrong.csv"
    pd.DataFrame(np.zeros((3, 5))).to_csv(wrong, index=False)
    cases.append((["predict", str(onnx_out), str(wrong)], "64 feature columns"))
    cases.append((["predict", str(onnx_out), str(tmp_path / "absent.csv")], "existing CSV"))
    lone = tmp_path / "lone.slim"
    shutil.copy(run / member["artifact"], lone)
    cases.append((["predict", str(lone), str(wrong)], "manifest beside it"))
    for argv, needle in cases:
        assert main(argv) == 2, argv
        assert needle in _one_error_line(capsys), argv
    with pytest.raises(SystemExit) as exc:
        main(["export", str(run), "--trial", "0", "--format", "pickle", "--out", "x"])
    assert exc.value.code == 2
    capsys.readouterr()
    user = _fake_sweep(tmp_path, "regression", {})
    meta = json.loads((user / "sweep.json").read_text())
    del meta["preprocess"]
    (user / "sweep.json").write_text(json.dumps(meta))
    assert main(["export", str(user), "--trial", "0", "--format", "onnx", "--out", str(tmp_path / "u.onnx")]) == 2
    assert "preprocess" in _one_error_line(capsys)


# ----------------------------------------------------------------- CLI manners


def test_every_subcommand_has_an_example_and_version_exists(capsys):
    for c in commands():
        with pytest.raises(SystemExit) as exc:
            main([c.name, "--help"])
        assert exc.value.code == 0
        assert "example" in capsys.readouterr().out, c.name
    with pytest.raises(SystemExit):
        main(["--version"])
    assert re.match(r"slimtune \d+\.\d+", capsys.readouterr().out)


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_script(shell, capsys):
    assert main(["completion", shell]) == 0
    script = capsys.readouterr().out
    for c in commands():
        assert c.name in script
    if shell == "zsh":
        assert script.startswith("autoload -U +X bashcompinit && bashcompinit")
    probe = script + ('\nCOMP_WORDS=(slimtune exp); COMP_CWORD=1; _slimtune; echo "${COMPREPLY[@]}"'
                      '\nCOMP_WORDS=(slimtune export runs/x --format o); COMP_CWORD=4; _slimtune;'
                      ' echo "${COMPREPLY[@]}"')
    if shell == "zsh":
        probe = probe.split("\n", 1)[1]  # bash itself has complete/compgen
    got = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=30)
    assert got.returncode == 0, got.stderr
    assert got.stdout.split("\n")[:2] == ["export", "onnx"]


def test_no_color_anywhere(run, member, tmp_path, capsys, monkeypatch):
    """NO_COLOR holds because nothing is ever coloured: no escape sequence in any output."""
    monkeypatch.setenv("NO_COLOR", "1")
    runs = [(["plot", str(run), "--out", str(tmp_path / "p.png")], 0),
            (["export", str(run), "--trial", str(int(member["trial_number"])), "--out", str(tmp_path / "m.slim")], 0),
            (["predict", str(tmp_path / "m.slim"), str(tmp_path / "absent.csv")], 2),
            (["results", str(run), "--pareto"], 0)]
    for argv, code in runs:
        assert main(argv) == code, argv
        got = capsys.readouterr()
        assert got.out + got.err and "\x1b" not in got.out + got.err, argv
