"""Mixed precision through a sweep: the spec's per-layer width keys are drawn, recorded in the
rows (``bits_first``, ``bits_last``, ``bits_assign``; ``layer_bits``, ``avg_bits``), and each
artifact stores exactly the widths its row says."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from slimtune import compress
from slimtune.cli import main
from slimtune.search import load_results
from slimtune.search.task.data import load_data
from slimtune.search.trial import TrialSetup, run_trial
from slimtune.spaces import parse_spec


def _stored(artifact: Path) -> str:
    """The widths the artifact's header stores for the Linear/Conv weights, in layer order."""
    model = compress.load(artifact)
    entries = dict(zip(model.state_dict(), compress.read_manifest(artifact)["tensors"], strict=True))
    return ",".join(str(entries[f"{n}.weight"]["bits"]) for n, _ in compress.prunable_modules(model))


SPEC = {
    "name": "t-mixed",
    "task": {"dataset": "digits", "model": "mlp", "epochs": 1},
    "space": {"lr": 0.01, "batch_size": 64, "depth": 2, "width": {"choice": [16, 24]}},
    "compress": {"quantize": {"bits": 3, "bits_first": 8, "bits_last": {"choice": [6, 8]},
                              "assign": {"choice": ["manual", "sensitivity"]}}},
    "search": {"trials": 2, "concurrency": 2, "sampler": "random", "seed": 1},
}


@pytest.mark.slow
def test_sweep_rows_hold_the_widths_their_artifacts_store(ray_session, tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    out = tmp_path / "run"
    assert main(["sweep", str(path), "--out", str(out), "--quiet"]) == 0
    df = load_results(out)
    assert len(df) == 2 and (df["status"] == "ok").all(), df["error"].tolist()
    assert (df["bits_first"] == 8).all() and set(df["bits_last"]) <= {6, 8}
    assert set(df["bits_assign"]) == {"manual", "sensitivity"}  # what seed 1 draws
    for _, row in df.iterrows():
        assert _stored(out / row["artifact"]) == row["layer_bits"]
        widths = [int(w) for w in row["layer_bits"].split(",")]
        assert len(widths) == 3 and 3 <= row["avg_bits"] <= 8
        if row["bits_assign"] == "manual":
            assert widths == [8, 3, int(row["bits_last"])]


def test_sensitivity_trial_keeps_the_manual_average_and_stores_its_widths(tmp_path: Path) -> None:
    spec = parse_spec(SPEC)
    data = load_data(spec.task)
    setup = TrialSetup(out_dir=str(tmp_path), model="mlp", kind=data.kind)
    base = {"lr": 0.01, "batch_size": 64, "depth": 2, "width": 16, "epochs": 1, "seed": 5, "prune_method": "none",
            "bits": 3, "per_channel": True, "symmetric": False, "quant_mode": "ptq", "bits_first": 8, "bits_last": 8}
    rows = {a: run_trial({**base, "bits_assign": a, "trial_number": i}, data, setup, report=lambda m: None)
            for i, a in enumerate(["manual", "sensitivity"])}
    assert rows["manual"]["layer_bits"] == "8,3,8"
    assert rows["sensitivity"]["avg_bits"] <= rows["manual"]["avg_bits"] + 1e-9
    for row in rows.values():
        assert _stored(tmp_path / row["artifact"]) == row["layer_bits"]
    again = run_trial({**base, "bits_assign": "sensitivity", "trial_number": 1}, data, setup, report=lambda m: None)
    assert again["layer_bits"] == rows["sensitivity"]["layer_bits"]  # deterministic
