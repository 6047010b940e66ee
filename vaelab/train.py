"""The training loop: batches sliced from tensors held in memory, one Adam step per batch."""

import hashlib
import time
from pathlib import Path

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR

from vaelab.data import Split
from vaelab.elbo import elbo_terms
from vaelab.errors import VaelabError
from vaelab.metrics import test_elbo
from vaelab.models import VAE
from vaelab.params import Params, VariantParams
from vaelab.paths import atomic_path


def kl_weight(epoch: int, warmup_epochs: int) -> float:
    """Weight of the KL term in epoch `epoch` (0-based): linear from 0 to 1 over `warmup_epochs`."""
    if warmup_epochs == 0:
        return 1.0
    return min(1.0, epoch / warmup_epochs)


class Trainer:
    """One variant's training state. train_epoch() is one pass over the training set."""

    def __init__(self, model: VAE, variant: VariantParams, params: Params, train: Split, test: Split):
        self.model, self.variant, self.params = model, variant, params
        self.train_split, self.test_split = train, test
        self.train_onehot = train.onehot() if variant.conditional else None
        # fused Adam: one kernel for all parameters instead of a Python loop over them
        self.optimizer = torch.optim.Adam(model.parameters(), lr=params.lr, fused=True)
        self.scheduler = (
            CosineAnnealingLR(self.optimizer, T_max=variant.epochs) if variant.lr_schedule == "cosine" else None
        )
        # one stream for shuffling and posterior noise, so a run depends on the seed alone
        self.generator = torch.Generator(train.images.device).manual_seed(params.seed)
        self.epoch = 0  # epochs completed

    def state_dict(self) -> dict:
        """Everything the next epoch depends on: resuming from it continues bit for bit."""
        return {
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.epoch = state["epoch"]
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler:
            self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])

    @property
    def steps_per_epoch(self) -> int:
        return -(-len(self.train_split) // self.params.batch_size)

    def train_epoch(self, on_step=None) -> dict[str, float]:
        """One epoch; returns its record: mean train loss and its parts, test ELBO, schedule, time."""
        started = time.perf_counter()
        beta = kl_weight(self.epoch, self.variant.kl_warmup_epochs)
        lr = self.optimizer.param_groups[0]["lr"]
        images, onehot = self.train_split.images, self.train_onehot
        self.model.train()
        # sums stay on the device: reading them every step would make each step wait on it
        totals = torch.zeros(2, dtype=torch.float64, device=images.device)
        order = torch.randperm(len(images), generator=self.generator, device=images.device)
        for batch in order.split(self.params.batch_size):
            x = images[batch]
            rec, kl = elbo_terms(self.model, x, None if onehot is None else onehot[batch], self.generator)
            rec, kl = rec.sum(), kl.sum()
            loss = rec + beta * kl
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            totals += torch.stack([rec.detach(), kl.detach()])
            if on_step:
                on_step()
        if self.scheduler:
            self.scheduler.step()
        self.epoch += 1
        rec, kl = (totals / len(images)).tolist()
        test = test_elbo(self.model, self.test_split, self.params.evaluate.batch_size, self.params.seed)
        return {
            "epoch": self.epoch,
            "train_loss": rec + beta * kl,
            "train_rec": rec,
            "train_kl": kl,
            "test_elbo": test["elbo"],
            "test_rec": test["rec"],
            "test_kl": test["kl"],
            "kl_weight": beta,
            "lr": lr,
            "epoch_seconds": time.perf_counter() - started,
        }


def code_fingerprint() -> str:
    """sha256 of the library's and the train stage's source: a checkpoint made by other code is
    never resumed, lest one run mix epochs trained by two versions of the code."""
    package = Path(__file__).parent
    digest = hashlib.sha256()
    for source in [*sorted(package.glob("*.py")), package.parent / "stages" / "train.py"]:
        digest.update(source.read_bytes())
    return digest.hexdigest()


def save_checkpoint(
    path: Path, trainer: Trainer, records: list[dict], run_id: str, fingerprint: dict, completed: bool = False
) -> None:
    """Written after every epoch, atomically: a crash mid-write keeps the previous checkpoint.

    completed: the model is saved and logged; a later run of the stage starts afresh instead of resuming.
    """
    with atomic_path(path) as tmp:
        torch.save(
            {"trainer": trainer.state_dict(), "records": records, "run_id": run_id, "fingerprint": fingerprint, "completed": completed},
            tmp,
        )


def load_checkpoint(path: Path) -> dict | None:
    """The checkpoint at path, or None if there is none."""
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise VaelabError(
            f"checkpoint {path} cannot be read ({type(err).__name__}); delete it to train from scratch"
        ) from None
