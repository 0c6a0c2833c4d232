"""cxrssl: self-supervised chest X-ray pretraining, cardiomegaly fine-tuning, evaluation, explanation."""
__version__ = "0.1.0"

import os as _os

# albumentations checks PyPI for a newer version at import; cxrssl must never touch the network.
_os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
