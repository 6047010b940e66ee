"""The objective: the ELBO of a Bernoulli-likelihood VAE with a standard normal prior, in nats.

-ELBO(x) = E_q[-log p(x|z)] + KL(q(z|x) || N(0, I)), estimated with one reparameterised sample.
Everything here is per image (summed over pixels and latent dimensions); callers sum or average.
"""

import torch
import torch.nn.functional as F

from vaelab.models import VAE


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per row, in closed form."""
    return -0.5 * (1 + logvar - mu.square() - logvar.exp()).sum(dim=1)


def bernoulli_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log p(x|z) per row: binary cross-entropy summed over pixels, from logits for stability."""
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(dim=1)


def sample_posterior(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + noise * (0.5 * logvar).exp()


def elbo_terms(
    model: VAE, x: torch.Tensor, onehot: torch.Tensor | None = None, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reconstruction term -log p(x|z) and KL term per image; -ELBO is their sum."""
    mu, logvar = model.encode(x, onehot)
    z = sample_posterior(mu, logvar, generator)
    return bernoulli_nll(model.decode(z, onehot), x), gaussian_kl(mu, logvar)
