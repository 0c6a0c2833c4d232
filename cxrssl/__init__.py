"""cxrssl: self-supervised chest X-ray pretraining, cardiomegaly fine-tuning, evaluation, explanation."""
__version__ = "0.1.0"

import os as _os

# albumentations checks PyPI for a newer version at import; cxrssl must never touch the network.
_os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# Set before timm/huggingface_hub/mlflow are imported (they read these at import time): no hub
# lookups for model names or weights (cxrssl reads weights only from local files), and no MLflow
# usage telemetry (MLFLOW_DISABLE_TELEMETRY, mlflow/environment_variables.py in mlflow 3.x).
_os.environ.setdefault("HF_HUB_OFFLINE", "1")
_os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
_os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
