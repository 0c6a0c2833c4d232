"""report.html: built from an evaluation folder and an explain folder, self-contained, and checked in a
real headless Chromium (no console errors, every section and image there, a screenshot kept)."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tests.evaluation.helpers import synthetic_predictions
from tests.explain.browser import browser_missing_reason, inspect_page
from tests.explain.synthetic import make_films

from cxrssl.evaluation import evaluate_predictions
from cxrssl.explain import run_explanations
from cxrssl.reporting.html import SECTIONS, write_report

ARTIFACTS = Path(__file__).resolve().parents[2] / "outputs" / "test_artifacts"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from cxrssl.models import Classifier, create_encoder

    root = tmp_path_factory.mktemp("report")
    test = synthetic_predictions(n_patients=60, seed=1)
    summary = evaluate_predictions(test, 0.5, root / "eval", cohort={"test": test}, n_boot=50, dataset="synthetic")
    (root / "eval" / "summary.json").write_text(
        pd.Series({"evaluation": summary}).to_json())  # what finish_run writes: {"evaluation": ...}
    torch.manual_seed(0)
    model = Classifier(create_encoder("test_resnet", output_stride=8)).eval()
    films = make_films(8, 64, 10, seed=3)
    probs = torch.sigmoid(model(films["image"])).detach().numpy()
    samples = [{"image": films["image"][i], "mask": films["mask"][i], "image_id": f"f{i}"} for i in range(8)]
    preds = pd.DataFrame({"image_id": [s["image_id"] for s in samples], "probability": probs,
                          "label": films["label"].numpy(), "predicted": (probs >= np.median(probs)).astype(int)})
    explain = run_explanations(model, samples, preds, methods=["gradcam", "saliency"], per_group=1,
                               out_dir=root / "explain", sanity="cascade", sanity_images=2, faithfulness_steps=3,
                               image_rows=False, progress=False)
    info = {"path": "/runs/ft/checkpoints/best.pt", "meta": {"backbone": "test_resnet", "pretext": "none",
                                                             "label_fraction": 1.0, "image_size": 64}}
    path = write_report(root / "report.html", info=info, evaluation_dir=root / "eval", explain_dir=root / "explain",
                        explain_summary=explain, run={"mlflow_run_id": "abc123", "tracking_uri": "sqlite:///x.db"})
    return path, root


def test_report_is_self_contained_with_every_section(report):
    path, root = report
    html = path.read_text()
    for section in SECTIONS:
        assert f'<section id="{section}">' in html, section
    assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing loads from the network
    assert not re.search(r'<(script|link)\b', html)
    assert html.count('src="data:image/png;base64,') >= 5 + 4 + 1  # plots, 4 galleries, sanity cascade
    for text in ("ceiling", "prior", "Wilson", "degenerate", "Limitations", "abc123", "Synthetic phantoms",
                 "test_resnet", "too small"):
        assert text in html, text
    # the localisation table shows model, ceiling and prior side by side
    assert re.search(r"<th>pointing_hit_rate</th>.*<th>ceiling_pointing</th><th>prior_pointing</th>", html)


def test_report_in_a_real_browser(report):
    reason = browser_missing_reason()
    if reason:
        pytest.skip(reason)
    path, root = report
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "report_screenshot.png"
    seen = inspect_page(path, shot)
    assert seen["errors"] == [] and seen["requests"] == []
    assert seen["sections"] == list(SECTIONS)
    assert len(seen["images"]) >= 10 and all(complete and width > 0 for _, complete, width in seen["images"])
    assert shot.stat().st_size > 50_000
    shutil.copy(path, ARTIFACTS / "report.html")
