"""The judge: a small convolutional digit classifier that reads what a VAE draws.

Trained on the MNIST training set like the VAEs: batches sliced from tensors held in memory.
"""

import time
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR

from vaelab.data import N_CLASSES, Split
from vaelab.errors import VaelabError
from vaelab.params import JudgeParams
from vaelab.paths import save_torch


class Judge(nn.Module):
    """3x3 convolutions of stride 2 with ReLU, then one hidden layer; 28x28 in, 10 logits out.

    Strided convolutions instead of conv + max-pool: as accurate on MNIST, and ~3x faster to train
    on this CPU, where max-pooling dominated the step.
    """

    def __init__(self, channels: list[int], hidden: int):
        super().__init__()
        self.channels, self.hidden = channels, hidden
        blocks, n_in, side = [], 1, 28
        for n_out in channels:
            blocks += [nn.Conv2d(n_in, n_out, 3, stride=2, padding=1), nn.ReLU()]
            n_in, side = n_out, (side + 1) // 2
        self.net = nn.Sequential(
            *blocks, nn.Flatten(), nn.Linear(n_in * side * side, hidden), nn.ReLU(), nn.Linear(hidden, N_CLASSES)
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Logits of the ten digits for flattened (N, 784) images in [0, 1]."""
        return self.net(pixels.reshape(-1, 1, 28, 28))


@contextmanager
def thread_count_independent():
    """On the CPU, oneDNN's convolutions sum in an order that depends on the thread count, which
    follows the machine's load (vaelab/device.py): the judge, and every digit it reads, would too.
    Without oneDNN, PyTorch's own convolutions go through MKL's matrix products, which give the same
    bits whatever the thread count (vaelab/__init__.py). The backward pass picks its kernels when it
    runs, so the whole training loop runs inside."""
    enabled = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = enabled


@torch.inference_mode()
def classify(judge: Judge, pixels: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """The digit the judge reads in each image."""
    judge.eval()
    with thread_count_independent():
        return torch.cat([judge(chunk).argmax(dim=1) for chunk in pixels.split(batch_size)])


def accuracy(judge: Judge, split: Split) -> float:
    return float((classify(judge, split.images) == split.labels).double().mean())


def train_judge(judge: Judge, opts: JudgeParams, train: Split, seed: int, on_step=None) -> list[dict[str, float]]:
    """Train with Adam, the learning rate annealed to 0 by a cosine; returns one record per epoch."""
    # fused Adam: one kernel for all parameters instead of a Python loop over them
    optimizer = torch.optim.Adam(judge.parameters(), lr=opts.lr, fused=True)
    scheduler = CosineAnnealingLR(optimizer, T_max=opts.epochs)
    generator = torch.Generator(train.images.device).manual_seed(seed)
    records = []
    with thread_count_independent():
        for epoch in range(1, opts.epochs + 1):
            records.append(_train_epoch(judge, opts, train, optimizer, generator, epoch, on_step))
            scheduler.step()
    return records


def _train_epoch(
    judge: Judge, opts: JudgeParams, train: Split, optimizer, generator: torch.Generator, epoch: int, on_step
) -> dict[str, float]:
    started = time.perf_counter()
    judge.train()
    total = torch.zeros((), dtype=torch.float64, device=train.images.device)
    order = torch.randperm(len(train), generator=generator, device=train.images.device)
    for batch in order.split(opts.batch_size):
        images = shifted(train.images[batch], opts.max_shift, generator)
        loss = F.cross_entropy(judge(images), train.labels[batch], reduction="sum")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach()
        if on_step:
            on_step()
    return {"epoch": epoch, "train_loss": float(total) / len(train), "epoch_seconds": time.perf_counter() - started}


def shifted(pixels: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """The batch rolled by up to max_shift pixels along each axis, one random shift for the whole batch.

    MNIST digits sit inside a blank border of 4 pixels, so nothing of a digit wraps around.

    Without it the judge fits the training set and stops near 98.9% on the test set; with it, it
    generalises past 99%.
    """
    if max_shift == 0:
        return pixels
    dy, dx = torch.randint(-max_shift, max_shift + 1, (2,), generator=generator, device=pixels.device).tolist()
    return pixels.reshape(-1, 28, 28).roll((dy, dx), dims=(1, 2)).reshape(-1, 28 * 28)


def save_judge(judge: Judge, path: Path) -> None:
    save_torch({"state_dict": judge.state_dict(), "channels": judge.channels, "hidden": judge.hidden}, path)


def load_judge(path: Path, device: torch.device) -> Judge:
    try:
        saved = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise VaelabError(f"no judge at {path}; run the judge stage: dvc repro judge") from None
    judge = Judge(saved["channels"], saved["hidden"]).to(device)
    judge.load_state_dict(saved["state_dict"])
    return judge.eval()
