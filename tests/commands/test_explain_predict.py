"""explain and predict on a model fine-tuned on the synthetic phantoms (which carry heart masks)."""
from __future__ import annotations

import shutil

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
    _, summary = run_command("explain", [*mlflow, f"checkpoint={ft['checkpoints']['best']}",
                                         "explain.methods=[gradcam,saliency]", "explain.groups=[tp,fn]",
                                         "explain.per_group=10", "explain.faithfulness=false"], run_dir=root / "ex")
    out = root / "ex" / "explain"
    loc = pd.read_csv(out / "localisation.csv")
    tp = loc[(loc["group"] == "tp") & (loc["method"] == "gradcam")].iloc[0]
    # Chance is the heart's share of the image; a model that looks at the heart does clearly better.
    assert tp["energy_inside"] > 1.2 * tp["mask_area"], tp.to_dict()
    sanity = pd.read_csv(out / "sanity.csv").set_index("method")
    assert set(sanity.index) == {"gradcam", "saliency"} and bool(sanity.loc["saliency", "passes"])
    arrays = np.load(out / "tp_attributions.npz")
    assert arrays["gradcam"].shape[1:] == (128, 128) and len(arrays["image_ids"]) == int(tp["n"])
    assert (out / "tp_gallery.png").stat().st_size > 10_000
    assert summary["explain"]["files"]["galleries"]


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
