"""explain and predict on a model fine-tuned on the synthetic phantoms (which carry heart masks)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrssl.commands.inprocess import run_command

DATA = ["backbone=tiny", "data.image_size=128", "data.synthetic.n_patients=200", "data.synthetic.native_size=128",
        "data.synthetic.preset=easy", "data.num_workers=0", "trainer.progress=false"]


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain")
    mlflow = [f"mlflow.tracking_uri=sqlite:///{root}/mlflow.db"]
    _, summary = run_command("finetune", [*DATA, *mlflow, "trainer.max_epochs=8", "optimizer.lr=3e-3"],
                             run_dir=root / "ft")
    assert summary["best_value"] > 0.8, summary["final"]
    return root, mlflow, summary


def test_gradcam_on_true_positives_points_at_the_heart(finetuned):
    root, mlflow, ft = finetuned
    _, evaluation = run_command("evaluate", [*mlflow, f"checkpoint={ft['checkpoints']['best']}", "evaluate.n_boot=50"],
                                run_dir=root / "ev")
    html = (root / "ev" / "report.html").read_text()
    assert 'id="metrics"' in html and 'id="sanity"' in html and evaluation["evaluation"]["n"] > 0
    _, summary = run_command("explain", [*mlflow, f"checkpoint={ft['checkpoints']['best']}", "explain.sanity=cascade",
                                         "explain.methods=[gradcam,saliency]", "explain.groups=[tp,fn]",
                                         "explain.per_group=10", "explain.faithfulness=false"], run_dir=root / "ex")
    out = root / "ex" / "explain"
    loc = pd.read_csv(out / "localisation.csv")
    tp = loc[(loc["group"] == "tp") & (loc["method"] == "gradcam") & (loc["region"] == "heart")].iloc[0]
    # Chance is the heart's share of the image; a model that looks at the heart does clearly better,
    # and no map beats the oracle drawn at Grad-CAM's own grid.
    assert tp["energy_inside"] > 1.2 * tp["mask_area"], tp.to_dict()
    assert tp["ceiling_energy"] >= tp["energy_inside"] and tp["grid"] == "8x8"  # layer3 of a stride-32 net at 128 px
    assert summary["explain"]["layer"].endswith("layer3") and summary["explain"]["pointing_tolerance_px"] == 9
    assert set(loc["region"]) == {"heart", "ctr"} and loc["prior_energy"].notna().all()  # v2/easy phantoms: lung masks
    sanity = pd.read_csv(out / "sanity.csv").set_index("method")
    assert set(sanity.index) == {"gradcam", "saliency"} and set(sanity["verdict"]) <= {"pass", "fail", "degenerate"}
    arrays = np.load(out / "tp_attributions.npz")
    assert arrays["gradcam"].shape[1:] == (128, 128) and len(arrays["image_ids"]) == int(tp["n"])
    assert (out / "tp_gallery.png").stat().st_size > 10_000
    assert summary["explain"]["files"]["galleries"]
    # evaluate ran first on this checkpoint: its report.html gained the explanation sections
    report = (root / "ev" / "report.html").read_text()
    assert 'id="localisation"' in report and "ceiling_pointing" in report and "data:image/png;base64" in report


def test_model_card_beside_the_checkpoint(finetuned):
    _, _, ft = finetuned
    folder = Path(ft["checkpoints"]["best"]).parent
    card = (folder / "model_card.md").read_text()
    for heading in ("## Model details", "## Intended use", "## Factors", "## Metrics", "## Evaluation data",
                    "## Training data", "## Quantitative analyses", "## Ethical considerations",
                    "## Caveats and recommendations"):
        assert heading in card
    data = json.loads((folder / "model_card.json").read_text())
    assert data["metrics"]["threshold"] == pytest.approx(ft["threshold"])
    auroc = data["metrics"]["values"]["auroc"]
    assert auroc["ci_low"] <= auroc["value"] <= auroc["ci_high"]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_parity_and_predict_with_the_exported_model(finetuned, tmp_path, fmt):
    root, mlflow, ft = finetuned
    _, summary = run_command("export", [*mlflow, f"checkpoint={ft['checkpoints']['best']}", f"format={fmt}"],
                             run_dir=tmp_path / "export")
    assert summary["max_abs_probability_difference"] < 1e-4
    meta = summary["metadata"]
    assert meta["threshold"] == pytest.approx(ft["threshold"]) and meta["image_size"] == 128
    assert meta["normalisation"]["inside_graph"] and meta["data"]["image_size"] == 128
    # the same films through predict: the exported model and the checkpoint agree
    table = pd.read_csv(root / "ft" / "val_predictions.csv").head(6)
    folder = tmp_path / "films"
    folder.mkdir()
    for i, path in enumerate(table["path"]):
        shutil.copy(path, folder / f"img{i}.png")
    _, exported = run_command("predict", [*mlflow, f"checkpoint={summary['export']}", f"inputs={folder}"],
                              run_dir=tmp_path / "pred_exported")
    _, native = run_command("predict", [*mlflow, f"checkpoint={ft['checkpoints']['best']}", f"inputs={folder}"],
                            run_dir=tmp_path / "pred_native")
    a = pd.read_csv(tmp_path / "pred_exported" / "predictions.csv")
    b = pd.read_csv(tmp_path / "pred_native" / "predictions.csv")
    assert exported["n_scored"] == native["n_scored"] == 6
    np.testing.assert_allclose(a["probability"], b["probability"], atol=1e-4)
    assert (a["predicted"] == b["predicted"]).all()


def test_predict_scores_readable_files_and_lists_the_rest(finetuned, tmp_path):
    root, mlflow, ft = finetuned
    table = pd.read_csv(root / "ft" / "val_predictions.csv")
    folder = tmp_path / "inputs"
    (folder / "sub").mkdir(parents=True)
    for i, path in enumerate(table["path"].head(5)):
        shutil.copy(path, folder / ("sub" if i % 2 else "") / f"img{i}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    _, summary = run_command("predict", [*mlflow, f"checkpoint={ft['checkpoints']['best']}", f"inputs={folder}",
                                         "predict.gradcam=true"], run_dir=tmp_path / "pred")
    assert summary["n_scored"] == 5 and summary["n_unreadable"] == 1
    preds = pd.read_csv(tmp_path / "pred" / "predictions.csv")
    assert len(preds) == 5 and preds["probability"].between(0, 1).all()
    assert (preds["predicted"] == (preds["probability"] >= summary["threshold"])).all()
    bad = pd.read_csv(tmp_path / "pred" / "unreadable.csv")
    assert bad["path"].str.endswith("broken.png").all() and len(bad) == 1
    assert len(list((tmp_path / "pred" / "gradcam").glob("*.png"))) == 5
