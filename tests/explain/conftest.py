"""One small trained classifier for every explain test (trained once per session, ~10–20 s)."""
from __future__ import annotations

import pytest
import torch

from tests.explain.synthetic import make_films, train_classifier

IMAGE_SIZE = 64
RADIUS = 10


@pytest.fixture(autouse=True)
def one_thread():
    """Small convolutions on a shared 2-core box run far faster on one thread than two contending."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def trained():
    """(model, held-out films): test_resnet with output stride 8, so the default Grad-CAM layer
    gives an 8×8 map at 64 px (the stride-32 map would be 2×2, too coarse to point anywhere)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = train_classifier(make_films(192, IMAGE_SIZE, RADIUS, seed=0), epochs=6, output_stride=8)
    finally:
        torch.set_num_threads(before)
    return model, make_films(48, IMAGE_SIZE, RADIUS, seed=1)


@pytest.fixture(scope="session")
def true_positives(trained):
    """Held-out positives the model calls positive: (images, masks (N, H, W))."""
    model, films = trained
    with torch.no_grad():
        predicted = torch.sigmoid(model(films["image"])) > 0.5
    keep = (films["label"] == 1) & predicted
    assert keep.sum() >= 10, "the synthetic classifier failed to learn; the explain tests need it to"
    return films["image"][keep], films["mask"][keep, 0].numpy()


@pytest.fixture
def untrained():
    torch.manual_seed(0)
    from cxrssl.models import Classifier, create_encoder

    return Classifier(create_encoder("test_resnet")).eval()
