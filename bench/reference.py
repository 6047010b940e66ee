"""The reference: a VAE trained the way the published notebooks train it (kept for benchmarks only).

As pytorch/examples vae/main.py writes it: torchvision MNIST with ToTensor through a shuffling
DataLoader, separate fc21/fc22 heads for mu and logvar, a decoder ending in nn.Sigmoid,
binary_cross_entropy on the probabilities plus the analytic KL, default Adam, loss.item() every
batch. The widths come from a vaelab variant; a CVAE concatenates the one-hot label to the
encoder's input and to z.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torchvision.datasets import MNIST
from torchvision.transforms import ToTensor

from vaelab.models import VAE


class ReferenceVAE(nn.Module):
    def __init__(self, hidden: list[int], latent_dim: int, n_classes: int = 0):
        super().__init__()
        self.n_classes = n_classes
        self.encoder = nn.Sequential()
        for n_in, n_out in zip([784 + n_classes, *hidden], hidden):
            self.encoder.extend([nn.Linear(n_in, n_out), nn.ReLU()])
        self.fc21 = nn.Linear(hidden[-1], latent_dim)
        self.fc22 = nn.Linear(hidden[-1], latent_dim)
        self.decoder = nn.Sequential()
        widths = [latent_dim + n_classes, *reversed(hidden)]
        for n_in, n_out in zip(widths, widths[1:]):
            self.decoder.extend([nn.Linear(n_in, n_out), nn.ReLU()])
        self.decoder.extend([nn.Linear(hidden[0], 784), nn.Sigmoid()])

    def encode(self, x, c):
        h = self.encoder(x if c is None else torch.cat([x, c], 1))
        return self.fc21(h), self.fc22(h)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def decode(self, z, c):
        return self.decoder(z if c is None else torch.cat([z, c], 1))

    def forward(self, x, c=None):
        mu, logvar = self.encode(x.view(-1, 784), c)
        z = self.reparameterize(mu, logvar)
        return self.decode(z, c), mu, logvar

    @classmethod
    def like(cls, model: VAE) -> "ReferenceVAE":
        """The same function as a vaelab model: its weights, with the shared head split in two."""
        encoder = [m for m in model.encoder if isinstance(m, nn.Linear)]
        decoder = [m for m in model.decoder if isinstance(m, nn.Linear)]
        reference = cls([layer.out_features for layer in encoder[:-1]], model.latent_dim, model.n_classes)
        mine_encoder = [m for m in reference.encoder if isinstance(m, nn.Linear)]
        mine_decoder = [m for m in reference.decoder if isinstance(m, nn.Linear)]
        with torch.no_grad():
            for mine, theirs in zip(mine_encoder + mine_decoder, encoder[:-1] + decoder):
                mine.weight.copy_(theirs.weight)
                mine.bias.copy_(theirs.bias)
            head, latent = encoder[-1], model.latent_dim
            reference.fc21.weight.copy_(head.weight[:latent])
            reference.fc21.bias.copy_(head.bias[:latent])
            reference.fc22.weight.copy_(head.weight[latent:])
            reference.fc22.bias.copy_(head.bias[latent:])
        return reference


def loss_function(recon_x, x, mu, logvar):
    BCE = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    KLD = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return BCE + KLD


def train_loader(root: str) -> DataLoader:
    dataset = MNIST(root, train=True, download=False, transform=ToTensor())
    return DataLoader(dataset, batch_size=128, shuffle=True)


def train(model: ReferenceVAE, optimizer: torch.optim.Optimizer, loader: DataLoader) -> float:
    """One epoch; returns the mean loss per image, as the notebooks print it."""
    model.train()
    train_loss = 0
    for data, labels in loader:
        c = F.one_hot(labels, 10).float() if model.n_classes else None
        optimizer.zero_grad()
        recon_batch, mu, logvar = model(data, c)
        loss = loss_function(recon_batch, data, mu, logvar)
        loss.backward()
        train_loss += loss.item()
        optimizer.step()
    return train_loss / len(loader.dataset)
