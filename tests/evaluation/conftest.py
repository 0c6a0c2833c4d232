"""Fixtures for the evaluation tests."""
from __future__ import annotations

import pandas as pd
import pytest

from tests.evaluation.helpers import synthetic_predictions


@pytest.fixture
def predictions() -> pd.DataFrame:
    return synthetic_predictions()
