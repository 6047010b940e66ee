"""What a trained model is worth on held-out data, in nats per image."""

import torch
import torch.nn.functional as F

from vaelab.data import N_CLASSES, Split
from vaelab.elbo import bernoulli_nll, elbo_terms
from vaelab.models import VAE


def _batches(split: Split, conditional: bool, batch_size: int):
    onehot = split.onehot() if conditional else None
    for start in range(0, len(split), batch_size):
        window = slice(start, start + batch_size)
        yield split.images[window], split.labels[window], (onehot[window] if conditional else None)


@torch.inference_mode()
def test_elbo(model: VAE, split: Split, batch_size: int, seed: int) -> dict[str, float]:
    """The ELBO over the whole split, one posterior sample per image from a fixed seed.

    The fixed seed makes the figure repeatable and comparable between epochs.
    """
    model.eval()
    generator = torch.Generator(split.images.device).manual_seed(seed)
    rec_sum = kl_sum = 0.0
    for x, _, onehot in _batches(split, model.n_classes > 0, batch_size):
        rec, kl = elbo_terms(model, x, onehot, generator)
        rec_sum += rec.sum(dtype=torch.float64)
        kl_sum += kl.sum(dtype=torch.float64)
    rec_mean, kl_mean = float(rec_sum) / len(split), float(kl_sum) / len(split)
    return {"elbo": -(rec_mean + kl_mean), "rec": rec_mean, "kl": kl_mean}


@torch.inference_mode()
def per_class_reconstruction(model: VAE, split: Split, batch_size: int) -> dict[str, dict[str, float]]:
    """Reconstruction error of each digit, decoding the posterior mean.

    bce: -log p(x|z=mu) in nats per image; mse: mean squared error per pixel.
    """
    model.eval()
    bce = torch.zeros(N_CLASSES, dtype=torch.float64, device=split.images.device)
    mse = torch.zeros_like(bce)
    for x, labels, onehot in _batches(split, model.n_classes > 0, batch_size):
        mu, _ = model.encode(x, onehot)
        logits = model.decode(mu, onehot)
        bce.index_add_(0, labels, bernoulli_nll(logits, x).double())
        mse.index_add_(0, labels, F.mse_loss(torch.sigmoid(logits), x, reduction="none").mean(dim=1).double())
    counts = torch.bincount(split.labels, minlength=N_CLASSES).clamp(min=1)
    return {
        str(digit): {"bce": float(bce[digit] / counts[digit]), "mse": float(mse[digit] / counts[digit])}
        for digit in range(N_CLASSES)
    }
