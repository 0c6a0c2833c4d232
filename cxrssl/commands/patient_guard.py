"""Pretrain/finetune patient guard: never evaluate on patients the encoder was trained on.

Splits are recomputed from the whole table each run, so a different cohort, CSV, ``val_fraction``
or ``data.on_error=skip`` between ``pretrain`` and ``finetune`` can move a patient from the
pretraining set into validation or test. Checking the backbone name (all ``load_encoder`` did)
cannot see that. So:

* ``pretrain`` records the patients it trained on in its checkpoints (``meta.pretrain_patients``):
  a sorted int64 tensor of 64-bit BLAKE2b hashes of the patient ids (8 bytes a patient: 0.8 MB for
  100k patients, no identifiers in clear) plus the data source's identity;
* ``finetune`` carries that record into its own checkpoints and adds its training patients
  (``meta.finetune_patients``);
* ``finetune`` (its val and test splits), ``evaluate`` and ``explain`` (the evaluated split) refuse
  with :class:`~cxrssl.errors.PatientOverlapError` when those patients intersect a record.
  ``<command>.allow_pretrain_overlap=true`` overrides; the overlap is then written to
  ``summary.json`` (``pretrain_overlap``) and tagged on the MLflow run.

Hashes are of the raw patient id, not salted by source, so the same people reached through
``data=nih`` and ``data=csv`` still match. Different datasets can share id strings (synthetic sets
drawn with other settings reuse ``P00001`` ...); the message shows both data identities so a user
can judge, and override, such a coincidence.
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cxrssl.errors import PatientOverlapError

log = logging.getLogger(__name__)

RECORDS = {"pretrain_patients": "pretraining of the encoder", "finetune_patients": "fine-tuning"}


def hash_patients(patient_ids: Iterable[Any]) -> torch.Tensor:
    """Sorted unique int64 hashes (BLAKE2b, 8 bytes) of the patient ids as strings."""
    values = {int.from_bytes(hashlib.blake2b(str(p).encode(), digest_size=8).digest(), "little", signed=True)
              for p in patient_ids}
    return torch.tensor(sorted(values), dtype=torch.int64)


def data_identity(data_cfg: Any) -> dict[str, str | None]:
    """Where the patients came from: source, root and CSV (for messages; not part of the hash)."""
    get = data_cfg.get if hasattr(data_cfg, "get") else lambda k, d=None: getattr(data_cfg, k, d)
    root = get("root", None)
    return {"source": str(get("source", None)), "root": str(Path(str(root)).expanduser().resolve()) if root else None,
            "csv": str(get("csv", None)) if get("csv", None) else None}


def patient_record(rows: pd.DataFrame, data_cfg: Any) -> dict[str, Any]:
    """The record stored in checkpoint meta: hashes, count, data identity."""
    hashes = hash_patients(rows["patient_id"].astype(str).unique())
    return {"hashes": hashes, "n_patients": int(hashes.numel()), "data": data_identity(data_cfg)}


def overlap(record: dict[str, Any] | None, patient_ids: Iterable[Any]) -> int:
    """How many of ``patient_ids`` (distinct) are in ``record``."""
    if not record or record.get("hashes") is None:
        return 0
    stored = np.asarray(record["hashes"].cpu().numpy() if torch.is_tensor(record["hashes"]) else record["hashes"],
                        dtype=np.int64)
    return int(np.isin(hash_patients(patient_ids).numpy(), stored).sum())


def check_patients(records: dict[str, dict | None], splits: dict[str, pd.DataFrame], *, allow: bool,
                   key: str, data_cfg: Any) -> dict[str, Any] | None:
    """Refuse (or, with ``allow``, report) evaluation patients found in ``records``.

    ``records``: {"pretrain_patients": record | None, "finetune_patients": ...}; ``splits``: the
    evaluated rows per split name. Returns None when there is no overlap, else the overlap report
    that goes to summary.json / MLflow (only when ``allow``)."""
    found = []
    for name, record in records.items():
        if not record:
            continue
        for split, rows in splits.items():
            n = overlap(record, rows["patient_id"].astype(str).unique())
            if n:
                found.append({"record": name, "split": split, "patients": n,
                              "of": int(rows["patient_id"].nunique()), "trained_on": record.get("data")})
    if not found:
        return None
    what = "; ".join(f"{f['patients']} of the {f['of']} {f['split']} patients were used in the "
                     f"{RECORDS.get(f['record'], f['record'])} (data {_describe(f['trained_on'])})" for f in found)
    message = (f"{what}. Evaluating on them overstates performance. Use the same data source and split settings "
               f"(data.val_fraction, data.test_fraction, data.split_seed) as the pretraining run, or pretrain "
               f"without these patients. Here: data {_describe(data_identity(data_cfg))}. To accept the overlap "
               f"(e.g. a coincidence of ids between different datasets), set {key}=true")
    if not allow:
        raise PatientOverlapError(message)
    log.warning("patient overlap ALLOWED by %s=true: %s", key, what)
    print(f"WARNING: patient overlap allowed by {key}=true: {what}", flush=True)
    return {"allowed_by": f"{key}=true", "overlaps": found, "message": what}


def overlap_tags(report: dict[str, Any] | None) -> dict[str, str]:
    """MLflow tags for an allowed overlap (empty without one)."""
    if not report:
        return {}
    return {"pretrain_overlap": f"ALLOWED by {report['allowed_by']}: {report['message']}"}


def _describe(identity: dict | None) -> str:
    if not identity:
        return "unknown"
    return ", ".join(f"{k}={v}" for k, v in identity.items() if v) or "unknown"


def check_evaluated_split(info: dict, table: pd.DataFrame, split: str, *, allow: bool, key: str,
                          data_cfg: Any) -> dict[str, Any] | None:
    """evaluate/explain: the evaluated split against the checkpoint's pretraining and fine-tuning patients."""
    meta = info.get("meta", {})
    return check_patients({name: meta.get(name) for name in RECORDS}, {split: table[table["split"] == split]},
                          allow=allow, key=key, data_cfg=data_cfg)
