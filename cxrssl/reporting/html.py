"""`report.html`: a self-contained page per model (inline PNGs, inline CSS, no script, no network).

Sections (each an `<section id=...>` so tests and readers can find them): provenance, cohort,
metrics, plots, subgroups, galleries, localisation, faithfulness, sanity, limitations. A section
whose data were not produced says which command produces them instead of disappearing.
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

SECTIONS = ("provenance", "cohort", "metrics", "plots", "subgroups", "galleries", "localisation", "faithfulness",
            "sanity", "limitations")
SMALL_SUBGROUP = 20  # rows with fewer images are flagged: their metrics are too noisy to compare
PLOTS = (("roc", "ROC curve"), ("pr", "Precision–recall curve"), ("calibration", "Calibration"),
         ("decision_curve", "Decision curve"), ("confusion", "Confusion matrix"))
_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1280px;margin:24px auto;padding:0 16px;
color:#1a1a1a;line-height:1.45}
h1{font-size:1.7em}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:2em}
table{border-collapse:collapse;margin:8px 0;font-size:.92em}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}.small{color:#a33;font-weight:600}
.note{color:#555;font-size:.92em}.grid{display:flex;flex-wrap:wrap;gap:12px}.grid figure{margin:0}
figure img{max-width:100%;border:1px solid #ddd}figcaption{font-size:.9em;color:#444}
.scroll{overflow-x:auto;max-width:100%}.warn{background:#fff4e5;border-left:4px solid #f0a020;padding:8px 12px}dl{display:grid;grid-template-columns:max-content 1fr;
gap:2px 16px}dt{font-weight:600}
"""


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _img(path: Path, alt: str, width: int | None = None) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    size = f' style="max-width:{width}px"' if width else ""
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{data}"{size}>'


def _table(df: pd.DataFrame, flag_rows: pd.Series | None = None) -> str:
    head = "".join(f"<th>{_esc(c)}</th>" for c in df.columns)
    body = []
    for i, row in enumerate(df.itertuples(index=False)):
        cls = ' class="small"' if flag_rows is not None and bool(flag_rows.iloc[i]) else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{_esc(_fmt(v))}</td>" for v in row) + "</tr>")
    return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
            "</div>")


def _section(key: str, title: str, content: str) -> str:
    return f'<section id="{key}"><h2>{_esc(title)}</h2>\n{content}\n</section>'


def _missing(what: str, command: str) -> str:
    return f'<p class="note">No {what} in this report: run <code>{_esc(command)}</code> on this checkpoint.</p>'


def _csv(folder: Path | None, name: str) -> pd.DataFrame | None:
    if folder is None or not (folder / name).is_file() or (folder / name).stat().st_size < 2:
        return None
    return pd.read_csv(folder / name)


def _provenance(info: dict, evaluation: dict, explain: dict | None, eval_run: dict) -> str:
    meta = info.get("meta", {}) or {}
    config = info.get("config") or {}
    if isinstance(config, str):
        config = {}
    data = (config.get("data") or {}) if isinstance(config, dict) else {}
    uri, run_id = eval_run.get("tracking_uri"), eval_run.get("mlflow_run_id")
    link = _esc(run_id or "not logged")
    if run_id and uri and str(uri).startswith("http"):
        link = f'<a href="{_esc(uri)}/#/runs/{_esc(run_id)}">{_esc(run_id)}</a>'
    elif run_id and uri:
        link += f' <span class="note">(store {_esc(uri)}; browse with <code>mlflow ui --backend-store-uri {_esc(uri)}</code>)</span>'
    items = [("checkpoint", info.get("path")), ("pretext", meta.get("pretext")), ("backbone", meta.get("backbone")),
             ("label fraction", meta.get("label_fraction")), ("image size (px)", meta.get("image_size")),
             ("data source", evaluation.get("dataset") or data.get("source")), ("evaluated split", evaluation.get("split")),
             ("threshold", f"{_fmt(evaluation.get('threshold', meta.get('threshold')), 4)} "
                           f"({evaluation.get('threshold_rule') or meta.get('threshold_rule', 'saved')})"),
             ("fine-tuning MLflow run", meta.get("mlflow_run_id")), ("evaluation MLflow run", None),
             ("explain layer", explain.get("layer") if explain else None),
             ("generated", _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))]
    rows = []
    for key, value in items:
        shown = link if key == "evaluation MLflow run" else _esc(_fmt(value))
        rows.append(f"<dt>{_esc(key)}</dt><dd>{shown}</dd>")
    return "<dl>" + "".join(rows) + "</dl>"


def _metrics(evaluation: dict) -> str:
    metrics = evaluation.get("metrics") or {}
    if not metrics:
        return _missing("metrics", "cxrssl evaluate checkpoint=...")
    level = round(100 * (1 - (evaluation.get("bootstrap") or {}).get("alpha", 0.05)))
    frame = pd.DataFrame([{"metric": m, "value": v.get("value"), f"{level} % CI low": v.get("ci_low"),
                           f"{level} % CI high": v.get("ci_high")} for m, v in metrics.items()])
    boot = evaluation.get("bootstrap") or {}
    return (f'<p>n = {evaluation.get("n")} images from {evaluation.get("n_patients")} patients, '
            f'{evaluation.get("n_positive")} positive (prevalence {_fmt(evaluation.get("prevalence"))}); '
            f'threshold {_fmt(evaluation.get("threshold"), 4)} ({_esc(evaluation.get("threshold_rule"))}). '
            f'CIs: {_esc(boot.get("method", "bootstrap"))} bootstrap over '
            f'{_esc(boot.get("cluster") or "images")}, {_esc(boot.get("n_valid"))} resamples.</p>' + _table(frame))


def _subgroups(folder: Path | None) -> str:
    df = _csv(folder, "subgroups.csv")
    if df is None:
        return _missing("subgroup table", "cxrssl evaluate checkpoint=...")
    small = df["n"] < SMALL_SUBGROUP
    df = df.assign(caution=["too small (n < %d)" % SMALL_SUBGROUP if s else "" for s in small])
    return (f'<p class="note">Rows in red have fewer than {SMALL_SUBGROUP} images: their metrics are too noisy '
            'to compare.</p>' + _table(df, small))


def _plots(folder: Path | None) -> str:
    figures = [f'<figure>{_img(folder / f"{name}.png", title, 560)}<figcaption>{_esc(title)}</figcaption></figure>'
               for name, title in PLOTS if folder is not None and (folder / f"{name}.png").is_file()]
    return '<div class="grid">' + "".join(figures) + "</div>" if figures else _missing("plots", "cxrssl evaluate ...")


def _galleries(explain_dir: Path | None, summary: dict | None) -> str:
    galleries = (summary or {}).get("files", {}).get("galleries", {})
    if not galleries:
        return _missing("galleries", "cxrssl explain checkpoint=...")
    parts = ['<p class="note">Green outline: heart mask (ground truth). Colour bars: red = evidence for '
             'cardiomegaly, blue = against (signed methods); unsigned methods from 0 to the panel\'s maximum.</p>']
    for group, path in galleries.items():
        parts.append(f'<figure>{_img(Path(path), f"{group} gallery")}<figcaption>{_esc(group.upper())}: '
                     f'{len(summary["groups"].get(group, []))} images</figcaption></figure>')
    return "".join(parts)


def _localisation(explain_dir: Path | None, summary: dict | None) -> str:
    df = _csv(explain_dir, "localisation.csv")
    if df is None:
        return _missing("localisation table", "cxrssl explain checkpoint=...")
    grids = ", ".join(f"{m}: {'×'.join(map(str, g))}" for m, g in (summary or {}).get("grids", {}).items() if g)
    keep = ["method", "group", "region", "n_with_mask", "grid", "pointing_hit_rate", "pointing_ci_low",
            "pointing_ci_high", "ceiling_pointing", "prior_pointing", "energy_inside", "ceiling_energy", "prior_energy",
            "mask_area", "note"]
    return (f'<p>Each model score sits beside its <b>ceiling</b> (the true mask drawn at the method\'s own grid and '
            f'upsampling: the best any model could score there) and a <b>prior</b> (the mean training heart mask: '
            f'a fixed map that ignores the image). Pointing tolerance {_esc((summary or {}).get("pointing_tolerance_px"))} px '
            f'(15 px at 224 px, scaled); hit-rate CIs are Wilson 95 %. Grids: {_esc(grids)}. Region "ctr" = heart '
            f'plus both ends of the inner thoracic diameter.</p>' + _table(df[[c for c in keep if c in df]]))


def _faithfulness(explain_dir: Path | None) -> str:
    df = _csv(explain_dir, "faithfulness.csv")
    if df is None:
        return _missing("deletion/insertion table", "cxrssl explain explain.faithfulness=true ...")
    return ('<p>Deletion AUC should fall below, insertion AUC rise above, the random-order AUC of the same baseline; '
            '"baseline_probability" is the model\'s probability for the fully deleted film (zero = black film, '
            'blur = Gaussian-blurred film).</p>' + _table(df))


def _sanity(explain_dir: Path | None) -> str:
    df = _csv(explain_dir, "sanity.csv")
    if df is None:
        return _missing("sanity check", "cxrssl explain explain.sanity=cascade ...")
    keep = ["method", "mode", "n_images", "similarity_randomised", "similarity_intensity", "similarity_edges",
            "reference", "flat_trained", "flat_randomised", "verdict"]
    plot = explain_dir / "sanity_cascade.png"
    figure = f'<figure>{_img(plot, "cascading randomisation")}</figure>' if plot.is_file() else ""
    return ('<p>Similarity = max(|median Spearman ρ|, median ρ of absolute maps) between the trained model\'s maps '
            'and the fully randomised model\'s; the references are the same statistic between the trained maps and '
            'two model-independent maps of the film (its intensity, its edge map). <b>pass</b>: the randomised '
            'model\'s map resembles the trained one less than the closest reference does; <b>degenerate</b>: most '
            'maps are flat (no ranking), never a pass.</p>' + _table(df[[c for c in keep if c in df]]) + figure)


def _limitations(evaluation: dict) -> str:
    synthetic = str(evaluation.get("dataset") or "").startswith("synthetic")
    items = ["Synthetic phantoms: these numbers check the software, they are not a clinical result." if synthetic
             else "Real data: labels mined from reports are noisy; metrics inherit that noise.",
             f"Prevalence here is {_fmt(evaluation.get('prevalence'))}; PPV and NPV change with prevalence "
             "(NIH ChestX-ray14: about 0.025), so re-check them at the deployment site's prevalence.",
             "CIs are from a patient-level bootstrap of one test split; they do not cover site or scanner shift.",
             "Attribution maps show what moves this model's score, not where the disease is; read them with the "
             "ceiling, prior and sanity columns.", "Not a medical device; not for clinical decisions."]
    return '<div class="warn"><ul>' + "".join(f"<li>{_esc(i)}</li>" for i in items) + "</ul></div>"


def write_report(path: str | Path, *, info: dict, evaluation_dir: str | Path | None = None,
                 explain_dir: str | Path | None = None, explain_summary: dict | None = None,
                 evaluation: dict | None = None, run: dict | None = None) -> Path:
    """Build the page from an evaluate run folder and/or an explain output folder.

    `evaluation` (the `evaluate_predictions` summary) and `run` ({mlflow_run_id, tracking_uri})
    are read from `evaluation_dir/summary.json` unless given (evaluate passes them before that
    file exists)."""
    eval_dir = Path(evaluation_dir) if evaluation_dir else None
    ex_dir = Path(explain_dir) if explain_dir else None
    eval_run = json.loads((eval_dir / "summary.json").read_text()) if eval_dir and (eval_dir / "summary.json").is_file() else {}
    eval_run = {**eval_run, **(run or {})}
    evaluation = evaluation or eval_run.get("evaluation") or {}
    cohort = _csv(eval_dir, "cohort.csv")
    title = f"Model report: {(info.get('meta') or {}).get('backbone', 'model')} · {evaluation.get('split', '')}"
    body = [
        _section("provenance", "Model and data provenance", _provenance(info, evaluation, explain_summary, eval_run)),
        _section("cohort", "Cohort", _table(cohort) if cohort is not None else _missing("cohort table", "cxrssl evaluate ...")),
        _section("metrics", "Metrics at the chosen threshold", _metrics(evaluation)),
        _section("plots", "ROC, precision–recall, calibration and decision curve", _plots(eval_dir)),
        _section("subgroups", "Subgroups", _subgroups(eval_dir)),
        _section("galleries", "Explanations: TP / TN / FP / FN galleries", _galleries(ex_dir, explain_summary)),
        _section("localisation", "Localisation against the heart mask (with ceilings and prior)",
                 _localisation(ex_dir, explain_summary)),
        _section("faithfulness", "Deletion / insertion (zero and blur baselines, random order)", _faithfulness(ex_dir)),
        _section("sanity", "Sanity checks (model randomisation against image-only references)", _sanity(ex_dir)),
        _section("limitations", "Limitations", _limitations(evaluation)),
    ]
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>'
            f'<body><h1>{_esc(title)}</h1>\n' + "\n".join(body) + "\n</body></html>\n")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
