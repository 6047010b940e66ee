"""The training loop: batches sliced from tensors held in memory, one Adam step per batch."""

import hashlib
import time
from pathlib import Path

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR

from vaelab.data import Split, binarize
from vaelab.elbo import elbo_terms_given_noise, posterior_noise
from vaelab.errors import VaelabError
from vaelab.metrics import test_elbo
from vaelab.models import VAE
from vaelab.params import Params, VariantParams
from vaelab.paths import save_torch


def kl_weight(epoch: int, warmup_epochs: int) -> float:
    """Weight of the KL term in epoch `epoch` (0-based): linear from 0 to 1 over `warmup_epochs`."""
    if warmup_epochs == 0:
        return 1.0
    return min(1.0, epoch / warmup_epochs)


# Burda et al. (2015), section 5 and their public code (github.com/yburda/iwae): stage i = 0..7 runs
# 3^i epochs at lr * 10^(-i/7), 3,280 epochs in all.
STAGES = 8


def staged_lr_factor(epoch: int) -> float:
    """The learning rate of epoch `epoch` (0-based) relative to lr, in the staged schedule; the last
    stage's rate after its 3,280 epochs."""
    stage, stage_end = 0, 1
    while epoch >= stage_end and stage < STAGES - 1:
        stage += 1
        stage_end += 3**stage
    return 10 ** (-stage / 7)


def batch_loss(
    model: VAE,
    images: torch.Tensor,
    onehots: torch.Tensor | None,
    batch: torch.Tensor,
    noise: torch.Tensor,
    beta,
    uniforms: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The step's objective on the images indexed by batch, -ELBO summed with the KL term weighted by
    beta, and the sums of its two terms (reconstruction, KL) without their gradient. With uniforms,
    on the batch binarised by them (vaelab.data.binarize): the encoder sees and the decoder models b."""
    x = images.index_select(0, batch)
    if uniforms is not None:
        x = binarize(x, uniforms)
    onehot = None if onehots is None else onehots.index_select(0, batch)
    rec, kl = elbo_terms_given_noise(model, x, onehot, noise)
    rec, kl = rec.sum(), kl.sum()
    return rec + beta * kl, torch.stack([rec.detach(), kl.detach()])


# A batch size's first steps run eagerly before its step is captured in a CUDA graph: they create
# Adam's state and cuBLAS's workspace, which the graph must find in place rather than record, and
# compile the step's code for the batch size and for Adam with and without its state, as nothing
# may compile while a graph records.
EAGER_STEPS_BEFORE_CAPTURE = 2


class Trainer:
    """One variant's training state. train_epoch() is one pass over the training set.

    On CUDA the training step is compiled and captured in a CUDA graph, which is replayed: at batch
    128 these models are so small that an eager step, a few hundred kernel launches, leaves the GPU
    waiting on Python. torch.compile fuses the step's elementwise work and Adam's update over all
    parameters into a few kernels; the graph replays them without Python. The random numbers are
    those of eager steps; the KL weight and the learning rate are read from the device, so one
    graph per batch size serves the whole run. On the CPU the step runs eagerly, unchanged.
    """

    def __init__(
        self,
        model: VAE,
        variant: VariantParams,
        params: Params,
        train: Split,
        test: Split,
        cuda_graphs: bool | None = None,
        compiled: bool | None = None,
    ):
        self.model, self.variant, self.params = model, variant, params
        self.train_split, self.test_split = train, test
        self.train_onehot = train.onehot() if variant.conditional else None
        device = train.images.device
        self.cuda_graphs = device.type == "cuda" if cuda_graphs is None else cuda_graphs
        if self.cuda_graphs and device.type != "cuda":
            raise ValueError("CUDA graphs need the data on a CUDA device")
        self.compiled = self.cuda_graphs if compiled is None else compiled
        # The learning rate lives on the device, where the schedule writes it, when a graph replays the
        # step or compiled code reads it (as a number, it would be baked in).
        lr = torch.tensor(params.lr, device=device) if self.cuda_graphs or self.compiled else params.lr
        if self.compiled:
            # Inductor fuses the foreach update across all parameters; it cannot fuse the fused kernel
            self.optimizer = torch.optim.Adam(model.parameters(), lr=lr, eps=variant.adam_eps, foreach=True, capturable=True)
        else:
            # fused Adam: one kernel for all parameters instead of a Python loop over them
            self.optimizer = torch.optim.Adam(
                model.parameters(), lr=lr, eps=variant.adam_eps, fused=True, capturable=self.cuda_graphs
            )
        self._optimizer_step = torch.compile(self.optimizer_step) if self.compiled else self.optimizer_step
        self._batch_loss = torch.compile(batch_loss, dynamic=False) if self.compiled else batch_loss
        self.scheduler = {
            "constant": lambda: None,
            "cosine": lambda: CosineAnnealingLR(self.optimizer, T_max=variant.epochs),
            "staged": lambda: LambdaLR(self.optimizer, staged_lr_factor),
        }[variant.lr_schedule]()
        # one stream for shuffling, binarisation and posterior noise, so a run depends on the seed alone
        self.generator = torch.Generator(device).manual_seed(params.seed)
        self.epoch = 0  # epochs completed
        # the epoch's sums of the reconstruction and KL terms, kept on the device (and in place, for the graphs)
        self.totals = torch.zeros(2, dtype=torch.float64, device=device)
        self.kl_weight = torch.zeros((), device=device)  # read by the graphs
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}  # batch size -> graph, its index buffer
        self.eager_steps: dict[int, int] = {}  # batch size -> eager steps run before capture

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
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.load_state_dict(state["optimizer"])
        saved_lr = float(self.optimizer.param_groups[0]["lr"])
        # graphs read the learning rate from its tensor on the device: keep that tensor, with the saved value
        self.optimizer.param_groups[0]["lr"] = lr.fill_(saved_lr) if isinstance(lr, torch.Tensor) else saved_lr
        if self.scheduler:
            self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])

    @property
    def steps_per_epoch(self) -> int:
        return -(-len(self.train_split) // self.variant.batch_size)

    def train_epoch(self, on_step=None) -> dict[str, float]:
        """One epoch; returns its record: mean train loss and its parts, test ELBO, schedule, time."""
        started = time.perf_counter()
        beta = kl_weight(self.epoch, self.variant.kl_warmup_epochs)
        lr = float(self.optimizer.param_groups[0]["lr"])
        self.train_steps(beta, on_step)
        if self.scheduler:
            self.scheduler.step()
        self.epoch += 1
        rec, kl = (self.totals / len(self.train_split)).tolist()
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

    def train_steps(self, beta: float, on_step=None) -> None:
        """One shuffled pass of Adam steps with KL weight beta, summing the terms into self.totals.

        Reads nothing back from the device: on a GPU, the steps queue up without waiting.
        """
        self.model.train()
        self.totals.zero_()
        self.kl_weight.fill_(beta)
        order = torch.randperm(len(self.train_split), generator=self.generator, device=self.totals.device)
        for batch in order.split(self.variant.batch_size):
            if self.cuda_graphs:
                self._graphed_step(batch)
            else:
                self._step(batch, beta)
            if on_step:
                on_step()

    def optimizer_step(self) -> None:
        self.optimizer.step()  # looked up at each call: the learning rate schedule wraps it

    def _step(self, batch: torch.Tensor, beta: float | torch.Tensor) -> None:
        """One Adam step on the training images indexed by batch."""
        uniforms = None
        if self.variant.binarize:
            uniforms = torch.rand(
                (len(batch), self.train_split.images.shape[1]), generator=self.generator, device=batch.device
            )
        noise = posterior_noise(self.model, batch, self.generator)
        loss, terms = self._batch_loss(
            self.model, self.train_split.images, self.train_onehot, batch, noise, beta, uniforms
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._optimizer_step()
        self.totals += terms

    def _graphed_step(self, batch: torch.Tensor) -> None:
        """_step, replayed from the CUDA graph of its batch size (captured on its first use after warm-up)."""
        size = len(batch)
        if size not in self.graphs:
            if self.eager_steps.get(size, 0) < EAGER_STEPS_BEFORE_CAPTURE:
                self.eager_steps[size] = self.eager_steps.get(size, 0) + 1
                # warm-up on a side stream, as capture runs on one (PyTorch's CUDA graph recipe)
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    self._step(batch, self.kl_weight)
                torch.cuda.current_stream().wait_stream(side)
                return
            index = torch.empty_like(batch)
            graph = torch.cuda.CUDAGraph()
            graph.register_generator_state(self.generator)  # replays draw fresh noise, as eager steps would
            with torch.cuda.graph(graph):  # records the step without running it
                self._step(index, self.kl_weight)
            self.graphs[size] = graph, index
        graph, index = self.graphs[size]
        index.copy_(batch)
        graph.replay()


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
    save_torch(
        {"trainer": trainer.state_dict(), "records": records, "run_id": run_id, "fingerprint": fingerprint, "completed": completed},
        path,
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
