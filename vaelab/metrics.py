"""What a trained model is worth on held-out data, in nats per image."""

import math

import torch
import torch.nn.functional as F

from vaelab.data import N_CLASSES, N_PIXELS, Split
from vaelab.elbo import bernoulli_nll, elbo_terms, gaussian_kl, iwae_bound
from vaelab.judge import Judge, classify
from vaelab.models import VAE
from vaelab.render import digits_on_demand, prior_samples

ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al. (2015): Var over x of E_q[z_d|x] above this


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


@torch.inference_mode()
def test_iwae(model: VAE, split: Split, k: int, batch_size: int, seed: int, targets: Split | None = None) -> float:
    """The mean importance-weighted bound on log p(x) over the split, k samples per image, from a fixed seed.

    targets: other pixels of the same images to bound the likelihood of (the split binarised), with
    the proposal q(z|x) of the split's own images.
    """
    model.eval()
    generator = torch.Generator(split.images.device).manual_seed(seed)
    targets = targets or split
    total = 0.0
    for (x, _, onehot), (target, _, _) in zip(_batches(split, model.n_classes > 0, batch_size), _batches(targets, False, batch_size)):
        total += iwae_bound(model, x, onehot, k, generator, target=target).sum()
    return float(total) / len(split)


def bits_per_dim(log_likelihood: float) -> float:
    """A log-likelihood in nats per image as the literature's bits per pixel (a positive figure, lower is better)."""
    return -log_likelihood / (N_PIXELS * math.log(2))


def binary_entropy_floor(split: Split) -> float:
    """The mean over the split of sum_j H(Bernoulli(x_j)), in nats per image: the grey-level
    reconstruction term's floor. BCE(x, p) = H(x) + KL(Bern(x) || Bern(p)), so no decoder's BCE on
    grey pixels goes below the entropy of the pixels' own grey levels."""
    x = split.images.double()
    entropy = -(torch.special.xlogy(x, x) + torch.special.xlogy(1 - x, 1 - x))
    return float(entropy.sum() / len(split))


@torch.inference_mode()
def mutual_information(model: VAE, split: Split, batch_size: int, generator: torch.Generator) -> float:
    """I_q(x; z) = E_x KL(q(z|x) || p(z)) - KL(q(z) || p(z)) = E[log q(z|x) - log q(z)], in nats, as
    He et al. (2019) estimate it: one z ~ q(z|x) per image, the aggregate posterior q(z) the mixture
    of the split's N posteriors (here the whole split, not one batch). Both log-densities are taken
    at the same z (He et al.'s code takes the first in closed form, as minus the entropy), so the
    sampling noise cancels: exactly 0 when every posterior is the same, at most log N."""
    model.eval()
    mu, logvar = (torch.cat(parts).double() for parts in zip(*(
        model.encode(x, onehot) for x, _, onehot in _batches(split, model.n_classes > 0, batch_size)
    )))
    n, latent_dim = mu.shape
    noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=torch.float32).double()
    z = mu + noise * (0.5 * logvar).exp()
    log_2pi = math.log(2 * math.pi)
    log_posterior = -0.5 * (noise.square() + logvar + log_2pi).sum(dim=1)
    # log N(z_i; mu_j, var_j) for every pair, by expanding the square into two matrix products
    precision = (-logvar).exp()
    per_posterior = (mu.square() * precision).sum(dim=1) + logvar.sum(dim=1) + latent_dim * log_2pi
    log_aggregate = torch.cat([
        torch.logsumexp(-0.5 * (rows.square() @ precision.T - 2 * rows @ (mu * precision).T + per_posterior), dim=1)
        for rows in z.split(batch_size)
    ]) - math.log(n)
    return float((log_posterior - log_aggregate).mean())


@torch.inference_mode()
def posterior_means(model: VAE, split: Split, batch_size: int) -> torch.Tensor:
    """E_q[z|x] of every image of the split, (N, latent_dim)."""
    model.eval()
    return torch.cat([model.encode(x, onehot)[0] for x, _, onehot in _batches(split, model.n_classes > 0, batch_size)])


def latent_activity(means: torch.Tensor) -> torch.Tensor:
    """Per latent dimension, the variance over the images of E_q[z_d|x]: near 0 for a dimension the encoder ignores."""
    return means.var(dim=0)


def active_units(means: torch.Tensor) -> int:
    return int((latent_activity(means) > ACTIVE_UNIT_THRESHOLD).sum())


@torch.inference_mode()
def kl_per_dimension(model: VAE, split: Split, batch_size: int) -> torch.Tensor:
    """Mean KL(q(z_d|x) || N(0, 1)) over the split for each latent dimension d, in nats; they sum to the KL term."""
    model.eval()
    total = torch.zeros(model.latent_dim, dtype=torch.float64, device=split.images.device)
    for x, _, onehot in _batches(split, model.n_classes > 0, batch_size):
        mu, logvar = model.encode(x, onehot)
        # each dimension of a diagonal Gaussian is a one-dimensional Gaussian of its own
        total += gaussian_kl(mu.reshape(-1, 1), logvar.reshape(-1, 1)).view_as(mu).sum(dim=0, dtype=torch.float64)
    return total / len(split)


def class_shares(digits: torch.Tensor) -> torch.Tensor:
    """The share of each of the ten digits among the given labels."""
    return torch.bincount(digits, minlength=N_CLASSES).double() / len(digits)


def entropy_bits(shares: torch.Tensor) -> float:
    """Entropy of a distribution over the digits, in bits: log2(10) = 3.32 when all ten are equally common."""
    present = shares[shares > 0]
    return float(-(present * present.log2()).sum())


def judged_prior_samples(model: VAE, judge: Judge, n: int, generator: torch.Generator) -> dict:
    """What the judge reads in n mean images of p(x|z), z from the prior: the share of each digit and its entropy.

    A CVAE draws the ten labels in turn, so its histogram also reflects how well it obeys them.
    """
    shares = class_shares(classify(judge, prior_samples(model, n, generator).to(_device(judge))))
    return {"shares": {str(d): float(shares[d]) for d in range(N_CLASSES)}, "entropy_bits": entropy_bits(shares)}


def conditional_accuracy(model: VAE, judge: Judge, per_digit: int, generator: torch.Generator) -> dict:
    """A CVAE asked for each digit per_digit times: the share the judge reads as the digit asked for."""
    asked = torch.arange(N_CLASSES, device=_device(judge)).repeat_interleave(per_digit)
    correct = (classify(judge, digits_on_demand(model, per_digit, generator).to(asked.device)) == asked).double()
    per_class = correct.view(N_CLASSES, per_digit).mean(dim=1)
    return {"overall": float(correct.mean()), "per_digit": {str(d): float(per_class[d]) for d in range(N_CLASSES)}}


def _device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device
