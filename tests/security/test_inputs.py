"""Inputs that cost too much or point elsewhere: stale cache keys, symlinks out of data.root and
out of a run's artifacts, huge CSV cells, huge CSVs of duplicates."""
from __future__ import annotations

import os
import time

import cv2
import numpy as np
import pandas as pd
import pytest

from cxrssl.data.schema import MetadataError
from cxrssl.data.sources.csv import load_csv_source


def _png(path, value):
    cv2.imwrite(str(path), np.full((32, 32), value, np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 0])
    return path


def test_same_size_replacement_with_restored_mtime_is_not_served_stale(tmp_path):
    from cxrssl.data.cache import open_cache

    path = _png(tmp_path / "a.png", 10)
    table = pd.DataFrame({"image_id": ["a"], "path": [str(path)]})
    cfg = {"image_size": 16, "resize_mode": "stretch", "cache": {"dir": str(tmp_path / "c"), "workers": 1,
                                                                   "progress": False}}
    assert open_cache(table, cfg, source="t").get("a").max() == 10
    stat = os.stat(path)
    replacement = _png(tmp_path / "b.png", 200)
    assert os.path.getsize(replacement) == stat.st_size
    os.replace(replacement, path)  # a new file (new inode), same size ...
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # ... and its mtime put back
    assert os.stat(path).st_mtime_ns == stat.st_mtime_ns and os.stat(path).st_size == stat.st_size
    assert open_cache(table, cfg, source="t").get("a").max() == 200


def _dataset(root, rows):
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return {"source": "csv", "root": str(root), "csv": "metadata.csv", "on_error": "raise"}


def test_symlinks_out_of_data_root_are_refused(tmp_path):
    outside = _png(tmp_path / "outside.png", 5)
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    _png(root / "images" / "ok.png", 5)
    (root / "images" / "leak.png").symlink_to(outside)
    (root / "images" / "inside_link.png").symlink_to(root / "images" / "ok.png")
    cfg = _dataset(root, {"path": ["images/ok.png", "images/leak.png", "images/inside_link.png"],
                          "patient_id": ["p1", "p2", "p3"]})
    with pytest.raises(MetadataError, match=r"leak.png'? is a symlink to .*outside data.root") as info:
        load_csv_source(cfg)
    assert "inside_link" not in str(info.value) and "1 bad row" in str(info.value)


def test_runs_uri_cannot_leave_the_run_artifacts(tmp_path):
    from mlflow import MlflowClient

    from cxrssl.errors import ConfigError
    from cxrssl.sweeps import resolve_run_artifact
    from cxrssl.tracking_security import open_store

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client: MlflowClient = open_store(uri)
    experiment = client.create_experiment("x", artifact_location=(tmp_path / "art").as_uri())
    run = client.create_run(experiment)
    artifacts = tmp_path / "art" / run.info.run_id / "artifacts"
    artifacts.mkdir(parents=True)
    (tmp_path / "secret.pt").write_text("x")
    (artifacts / "link.pt").symlink_to(tmp_path / "secret.pt")
    (artifacts / "ok.pt").write_text("x")
    run_id = run.info.run_id
    assert resolve_run_artifact(f"runs:/{run_id}/ok.pt", uri) == artifacts / "ok.pt"
    with pytest.raises(ConfigError, match=r"'\.\.'"):
        resolve_run_artifact(f"runs:/{run_id}/../../../secret.pt", uri)
    with pytest.raises(ConfigError, match="outside the run's artifacts"):
        resolve_run_artifact(f"runs:/{run_id}/link.pt", uri)


def test_a_huge_csv_cell_gives_a_short_message(tmp_path):
    cfg = _dataset(tmp_path / "d", {"path": ["x" * 50_000_000], "patient_id": ["p"], "age": ["y" * 1_000_000]})
    start = time.perf_counter()
    with pytest.raises(MetadataError) as info:
        load_csv_source(cfg)
    assert len(str(info.value)) < 3000 and "50,000,000 characters" in str(info.value)
    assert time.perf_counter() - start < 30


def _duplicates(tmp_path, n):
    root = tmp_path / "dup"
    (root / "images").mkdir(parents=True)
    _png(root / "images" / "a.png", 1)
    return _dataset(root, {"path": ["images/a.png"] * n, "patient_id": [f"P{i}" for i in range(n)],
                           "image_id": ["X"] * n})


def test_many_duplicate_ids_report_fast(tmp_path):
    cfg = _duplicates(tmp_path, 50_000)
    start = time.perf_counter()
    with pytest.raises(MetadataError, match="49999 bad row"):
        load_csv_source(cfg)
    assert time.perf_counter() - start < 8  # row-by-row .at lookups took ~25 s here


@pytest.mark.slow
def test_300k_duplicate_ids_report_fast(tmp_path):
    cfg = _duplicates(tmp_path, 300_000)
    start = time.perf_counter()
    with pytest.raises(MetadataError, match="299999 bad row"):
        load_csv_source(cfg)
    assert time.perf_counter() - start < 20  # was 45 s (issue 13), 153 s on the shared test machine
