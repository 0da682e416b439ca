import pytest
import torch

from kneurons.model import EnzymeClassifier, build_tiny_esm2


@pytest.fixture
def tiny_classifier():
    """A small float64 classifier with non-trivial weights (random init plus noise)."""
    torch.manual_seed(0)
    model = EnzymeClassifier(build_tiny_esm2(3, 32, 4, seed=0), 6).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


SEQUENCES = ["MKTAYIAKQRQISFVKSHFSRQ", "MKTAYGG", "MSTNPKPQRKTKRNTNRRPQDVKFPGG", "MAGHWWCLLK"]
LABELS = [0, 3, 5, 1]


@pytest.fixture
def sequences():
    return list(SEQUENCES)


@pytest.fixture
def labels():
    return list(LABELS)
