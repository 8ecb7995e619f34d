"""Run folders written by an earlier version still load and predict the same maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from nerveseg_cli.inference.predict import PredictOptions, predict
from nerveseg_cli.io.probmaps import read_probability_values
from nerveseg_cli.io.runs import load_run

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy-0.1.0"
RUNS = sorted(p.name for p in (LEGACY / "runs").iterdir())


def test_every_family_is_covered() -> None:
    assert {"unet-plain-sharp", "sharp-unet", "r2unet", "attention-unet", "attention-resunet",
            "inception-unet", "fcn8s"} <= set(RUNS)


@pytest.mark.parametrize("name", RUNS)
def test_network_outputs_are_unchanged(name: str) -> None:
    _, model = load_run(LEGACY / "runs" / name)
    expected = load_file(str(LEGACY / "runs" / name / "expected_outputs.safetensors"))
    with torch.no_grad():
        logits, presence = model(expected["input"])
    torch.testing.assert_close(logits, expected["logits"], rtol=1e-5, atol=1e-5)
    if "presence" in expected:
        torch.testing.assert_close(presence, expected["presence"], rtol=1e-5, atol=1e-5)
    else:
        assert presence is None


@pytest.mark.parametrize("name", RUNS)
def test_predict_writes_the_same_maps(name: str, tmp_path: Path) -> None:
    out = tmp_path / "maps"
    predict([LEGACY / "runs" / name], LEGACY / "images", out,
            PredictOptions(tta="flips", device="cpu", workers=1))
    expected = sorted((LEGACY / "maps" / name).glob("*.png"))
    assert expected
    for path in expected:
        np.testing.assert_array_equal(read_probability_values(out / path.name),
                                      read_probability_values(path))
    if (LEGACY / "maps" / name / "presence.csv").is_file():
        assert (out / "presence.csv").read_text() == \
            (LEGACY / "maps" / name / "presence.csv").read_text()
