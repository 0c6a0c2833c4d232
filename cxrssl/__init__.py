"""cxrssl: self-supervised chest X-ray pretraining, cardiomegaly fine-tuning, evaluation, explanation."""
__version__ = "0.1.0"
