"""The VAE family: MLP encoder to a diagonal Gaussian q(z|x), MLP decoder to Bernoulli logits."""

import os
from pathlib import Path

import torch
from torch import nn

from vaelab.data import N_CLASSES, N_PIXELS
from vaelab.errors import VaelabError
from vaelab.params import VariantParams
from vaelab.paths import save_torch


ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


def mlp(widths: list[int], activation: str = "relu") -> nn.Sequential:
    """Linear layers of the given widths with the activation between them (none after the last)."""
    layers = []
    for i, (n_in, n_out) in enumerate(zip(widths, widths[1:])):
        if i:
            layers.append(ACTIVATIONS[activation]())
        layers.append(nn.Linear(n_in, n_out))
    return nn.Sequential(*layers)


def layer_widths(latent_dim: int, hidden: list[int], n_classes: int) -> tuple[list[int], list[int]]:
    """The encoder's and the decoder's widths, input to output. One head emits mu and logvar side by
    side: one matrix multiply instead of two."""
    return [N_PIXELS + n_classes, *hidden, 2 * latent_dim], [latent_dim + n_classes, *reversed(hidden), N_PIXELS]


class VAE(nn.Module):
    """A VAE; a conditional one (CVAE) when n_classes > 0.

    A CVAE sees the one-hot label concatenated to the encoder's input and to z.
    """

    def __init__(self, latent_dim: int, hidden: list[int], n_classes: int = 0, activation: str = "relu"):
        super().__init__()
        self.latent_dim = latent_dim
        self.n_classes = n_classes
        encoder, decoder = layer_widths(latent_dim, hidden, n_classes)
        self.encoder = mlp(encoder, activation)
        self.decoder = mlp(decoder, activation)

    @classmethod
    def for_variant(cls, variant: VariantParams) -> "VAE":
        """variant: as Params.variant() resolves it, latent_dim set."""
        return cls(variant.latent_dim, variant.hidden, N_CLASSES if variant.conditional else 0, variant.activation)

    @torch.no_grad()
    def start_output_bias_at(self, mean_pixels: torch.Tensor) -> None:
        """Make p(x|z) start at the data's mean image: the output bias at the logit of each pixel's mean
        (clipped to [0.001, 0.999]), as Burda et al.'s code does, so the first steps learn structure
        rather than the background."""
        self.output_layer.bias.copy_(torch.logit(mean_pixels.clamp(0.001, 0.999)))

    def _with_label(self, inputs: torch.Tensor, onehot: torch.Tensor | None) -> torch.Tensor:
        if not self.n_classes:
            return inputs
        if onehot is None:
            raise ValueError("a conditional VAE needs the one-hot label")
        return torch.cat([inputs, onehot], dim=1)

    def encode(self, x: torch.Tensor, onehot: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(z|x)."""
        mu, logvar = self.encoder(self._with_label(x, onehot)).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor, onehot: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of p(x|z), one per pixel."""
        return self.output_layer(self.decode_hidden(z, onehot))

    def decode_hidden(self, z: torch.Tensor, onehot: torch.Tensor | None = None) -> torch.Tensor:
        """The decoder's last hidden layer, which output_layer turns into the logits."""
        return self.decoder[:-1](self._with_label(z, onehot))

    @property
    def output_layer(self) -> nn.Linear:
        return self.decoder[-1]

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


# float32 weights, their gradients and Adam's two moments
TRAINING_BYTES_PER_PARAMETER = 4 * 4


def check_fits_in_memory(name: str, variant: VariantParams, device: torch.device) -> None:
    """Refuse, before allocating anything, a variant whose training state alone exceeds the device's memory."""
    latent_dim = variant.latent_dim
    encoder, decoder = layer_widths(latent_dim, variant.hidden, N_CLASSES if variant.conditional else 0)
    n_parameters = sum(n_in * n_out + n_out for widths in (encoder, decoder) for n_in, n_out in zip(widths, widths[1:]))
    needed = n_parameters * TRAINING_BYTES_PER_PARAMETER
    if device.type == "cuda":
        available = torch.cuda.get_device_properties(device).total_memory
    else:
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if needed > available:
        raise VaelabError(
            f"latent_dim {latent_dim} with variants.{name}.hidden {variant.hidden} makes {name} {n_parameters:,} parameters: "
            f"{needed / 2**30:,.1f} GiB for its weights, gradients and Adam's moments, more than the "
            f"{available / 2**30:,.1f} GiB of this {device.type.upper()}'s memory; lower latent_dim or the hidden widths"
        )


def save_trained(model: VAE, variant: VariantParams, path: Path) -> None:
    """The train stage's output: weights and the shape to rebuild them into, nothing else, so two
    identical trainings write the same bytes (DVC's cache and run-cache reuse them; the MLflow run
    finds the file by its hash, tracking.model_run)."""
    save_torch({"state_dict": model.state_dict(), "variant": variant.model_dump()}, path)


def load_trained(path: Path, device: torch.device) -> VAE:
    """The model saved by the train stage, in eval mode."""
    try:
        saved = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise VaelabError(f"no trained model at {path}; run the train stage: dvc repro") from None
    model = VAE.for_variant(VariantParams(**saved["variant"])).to(device)
    model.load_state_dict(saved["state_dict"])
    return model.eval()
