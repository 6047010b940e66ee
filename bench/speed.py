"""How fast vaelab trains and evaluates, against the notebooks' loop and against the GEMM floor.

Run from the repository root (so that `vaelab` and params.yaml are found):

    python -m bench.speed [--repeats 3] [--variants vae vae_deep cvae] [--threads N]

On a machine shared with other busy processes, two torch threads slow down by several times
(OpenMP threads wait on each other); --threads 1 gives steadier figures there.

Training, for each variant, one epoch (60,000 images) of:
  a  the reference: the published notebooks' loop (bench/reference.py);
  b  vaelab: Trainer.train_epoch() exactly as the train stage runs it, test ELBO included, with
     the stage's per-epoch logging (curves CSV, MLflow into a throwaway SQLite store);
  c  the floor: torch.mm alone on the GEMM shapes of the epoch's training steps.
Candidates are interleaved round-robin and each repeat starts a fresh model from the same weights
for a and b; it prints medians: images/s, speedup b/a, floor fraction c/b, the test pass alone,
and checks that a and b reach the same mean train loss. For vae it also times vaelab's epoch with
a faster bernoulli_nll patched in and with one thread, and profiles an epoch.

IWAE: the importance-weighted bound (k=1000) of the vae just trained, in several formulations of
log p(x|z) timed against their floor (the decoder's matrix multiplies alone) on a subset of the
test images, each checked against the naive one; then the fastest over all 10,000 test images,
interleaved block by block with its floor.

Ends with exactly:
    speedup_vs_reference=<b/a for vae> floor_fraction=<c/b for vae>
    iwae_floor_fraction=<floor seconds / fastest IWAE seconds over the 10,000 test images>
"""

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import mlflow
import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile

import vaelab.elbo
from bench import reference
from vaelab.data import Split, fetch_mnist, load_split, mirror_from_env
from vaelab.metrics import test_elbo
from vaelab.models import VAE
from vaelab.params import Params, load_params
from vaelab.paths import write_csv
from vaelab.train import Trainer

LOSS_TOLERANCE = 0.03  # relative: a and b do the same math, so only sampling noise separates them
IWAE_TOLERANCE = 1e-3  # nats per image between a fast formulation and the naive one


@dataclass
class Bench:
    params: Params
    train: Split
    test: Split
    loader: torch.utils.data.DataLoader
    tmp: Path


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


@contextmanager
def threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------- training: a, b, c


def fresh_model(bench: Bench, name: str, repeat: int) -> VAE:
    """The same initial weights for every candidate of one repeat."""
    torch.manual_seed(bench.params.seed + repeat)
    return VAE.for_variant(bench.params.variant(name), bench.params.latent_dim)


def run_reference(bench: Bench, model: VAE) -> tuple[float, float]:
    """a: one notebook epoch, from the vaelab model's initial weights; (seconds, mean loss)."""
    net = reference.ReferenceVAE.like(model)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    return timed(reference.train, net, optimizer, bench.loader)


def run_vaelab(bench: Bench, name: str, model: VAE, run_name: str) -> tuple[float, float, float]:
    """b: one epoch of the train stage, logging included; (seconds, mean loss, test pass seconds)."""
    trainer = Trainer(model, bench.params.variant(name), bench.params, bench.train, bench.test)
    with mlflow.start_run(run_name=run_name):
        start = time.perf_counter()
        record = trainer.train_epoch()
        write_csv(bench.tmp / "curves.csv", [record])
        mlflow.log_metrics({key: value for key, value in record.items() if key != "epoch"}, step=record["epoch"])
        seconds = time.perf_counter() - start
    test_seconds, _ = timed(test_elbo, model, bench.test, bench.params.evaluate.batch_size, bench.params.seed)
    return seconds, record["train_loss"], test_seconds


def linear_shapes(layers: list[nn.Linear]) -> list[tuple[int, int]]:
    return [(layer.in_features, layer.out_features) for layer in layers]


@torch.inference_mode()
def run_floor(shapes: list[tuple[int, int]], n_images: int, batch_size: int) -> float:
    """c: the GEMMs of one epoch's steps alone. Per Linear layer: x @ W^T forward; backward, the
    gradient wrt the input (not for the first layer, whose input is data) and wrt the weight."""
    sizes = [batch_size] * (n_images // batch_size) + ([n_images % batch_size] if n_images % batch_size else [])
    operands = {
        rows: [(torch.rand(rows, n_in), torch.rand(n_out, n_in), torch.empty(rows, n_out), torch.empty(rows, n_in), torch.empty(n_out, n_in))
               for n_in, n_out in shapes]
        for rows in set(sizes)
    }
    start = time.perf_counter()
    for rows in sizes:
        # `out` doubles as the gradient wrt the layer's output in the backward products
        for i, (x, weight, out, grad_in, grad_weight) in enumerate(operands[rows]):
            torch.mm(x, weight.t(), out=out)
            if i:
                torch.mm(out, weight, out=grad_in)
            torch.mm(out.t(), x, out=grad_weight)
    return time.perf_counter() - start


# ---------------------------------------------------------------- a faster -log p(x|z) for training


def softplus_sum(logits: torch.Tensor) -> torch.Tensor:
    """sum_j softplus(l_j) over the last dim as relu(l) + log(1 + exp(-|l|)), with log, not log1p."""
    return logits.relu().sum(-1) + logits.abs().neg_().exp_().add_(1).log_().sum(-1)


class _BernoulliNLL(torch.autograd.Function):
    """sum_j log(1 + exp(l_j)) - x_j l_j per row: exp, then add and log in place, instead of the
    chain of passes of BCE-with-logits; rows where exp(l) overflows (some l above ~88) are redone with the
    stable softplus_sum. The gradient wrt l is sigmoid(l) - x, in one expression."""

    @staticmethod
    def forward(ctx, logits, x):
        ctx.save_for_backward(logits, x)
        total = logits.exp().add_(1).log_().sum(dim=1) - (x * logits).sum(dim=1)
        overflowed = torch.isinf(total)
        if overflowed.any():
            l, xo = logits[overflowed], x[overflowed]
            total[overflowed] = softplus_sum(l) - (xo * l).sum(dim=1)
        return total

    @staticmethod
    def backward(ctx, grad):
        logits, x = ctx.saved_tensors
        return torch.sigmoid(logits).sub_(x).mul_(grad.unsqueeze(1)), None


def fast_bernoulli_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return _BernoulliNLL.apply(logits, x)


def check_fast_nll(bench: Bench) -> tuple[float, float, float]:
    """Largest differences from vaelab's bernoulli_nll in float64, on real images with float32 logits
    spread over +-20 and one beyond exp's range: (ours, vaelab's own in float32, our gradient)."""
    x = bench.train.images[:512]
    logits = torch.randn(x.shape, generator=torch.Generator().manual_seed(0)) * 6
    logits[0, 0] = 100.0  # exp overflows in float32: that row takes the stable path
    logits.requires_grad_()
    exact = vaelab.elbo.bernoulli_nll(logits.double(), x)
    ours, theirs = fast_bernoulli_nll(logits, x), vaelab.elbo.bernoulli_nll(logits, x)
    grad_ours, grad_exact = (torch.autograd.grad(value.sum(), logits)[0] for value in (ours, exact))
    diffs = (ours.double() - exact, theirs.double() - exact, grad_ours.double() - grad_exact)
    return tuple(float(diff.detach().abs().max()) for diff in diffs)


# ---------------------------------------------------------------- profile


def profile_epoch(bench: Bench, name: str, top: int = 12) -> None:
    """Self CPU time per op over one vaelab epoch, test pass included (profiler overhead included)."""
    model = fresh_model(bench, name, 0)
    trainer = Trainer(model, bench.params.variant(name), bench.params, bench.train, bench.test)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        wall, _ = timed(trainer.train_epoch)
    events = sorted(prof.key_averages(), key=lambda event: event.self_cpu_time_total, reverse=True)
    in_ops = sum(event.self_cpu_time_total for event in events) / 1e6
    print(f"\nprofile of one {name} epoch: {wall:.2f} s under the profiler, {in_ops:.2f} s inside ops (self CPU time):")
    for event in events[:top]:
        seconds = event.self_cpu_time_total / 1e6
        print(f"  {event.key:<40s} {seconds:6.3f} s  {seconds / wall:6.1%}  {event.count:6d} calls")
    print(f"  {'(between ops: Python, autograd engine)':<40s} {wall - in_ops:6.3f} s  {(wall - in_ops) / wall:6.1%}")


# ---------------------------------------------------------------- IWAE

LogLikelihood = Callable[[VAE, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
# log p(x|z) for z of shape (n images, s samples, latent), x (n, 784): shape (n, s)


def decoder_rows(z: torch.Tensor, onehot: torch.Tensor | None) -> torch.Tensor:
    """z (n images, s samples, latent) as the decoder's input rows, label appended for a CVAE."""
    rows = z.reshape(-1, z.shape[-1])
    return rows if onehot is None else torch.cat([rows, onehot.repeat_interleave(z.shape[1], dim=0)], dim=1)


def decode_logits(model: VAE, z: torch.Tensor, onehot: torch.Tensor | None) -> torch.Tensor:
    return model.decoder(decoder_rows(z, onehot)).view(*z.shape[:2], -1)


def ll_naive(model, z, x, onehot):
    """log p(x|z) from F.binary_cross_entropy_with_logits per element."""
    logits = decode_logits(model, z, onehot)
    return -F.binary_cross_entropy_with_logits(logits, x.unsqueeze(1).expand_as(logits), reduction="none").sum(-1)


def ll_log(model, z, x, onehot):
    """x*l - relu(l) - log(1 + exp(-|l|)), with log instead of log1p."""
    logits = decode_logits(model, z, onehot)
    return (x.unsqueeze(1) * logits).sum(-1) - softplus_sum(logits)


def ll_logsigmoid(model, z, x, onehot):
    """x*l + logsigmoid(-l)."""
    logits = decode_logits(model, z, onehot)
    return (x.unsqueeze(1) * logits).sum(-1) + F.logsigmoid(logits.neg()).sum(-1)


def _matmul_ll(model, z, x, onehot, shift: int, elementwise) -> torch.Tensor:
    """log p(x|z) = sum_j (x_j - shift) l_j - sum_j (softplus(l_j) - shift l_j).

    The first sum by matrix products: with l = h W^T + b it is h . (W^T x') + b . x' for x' = x - shift,
    W^T x' computed once per image for all its samples. Only the second is elementwise, by
    `elementwise` (which may overwrite l); rows where it overflows (some |l| above ~88) are redone
    with softplus_sum.
    """
    n, s = z.shape[:2]
    out = model.decoder[-1]
    h = model.decoder[:-1](decoder_rows(z, onehot))
    x = x - shift
    x_dot_logits = torch.bmm(h.view(n, s, -1), (x @ out.weight).unsqueeze(-1)).squeeze(-1) + (x @ out.bias).unsqueeze(-1)
    total = elementwise(F.linear(h, out.weight, out.bias))
    overflowed = torch.isinf(total)
    if overflowed.any():
        logits = F.linear(h[overflowed], out.weight, out.bias)
        total[overflowed] = softplus_sum(logits) - shift * logits.sum(-1)
    return x_dot_logits - total.view(n, s)


def _softplus_direct(logits: torch.Tensor) -> torch.Tensor:
    """sum_j log(1 + exp(l_j)): exp, add and log in place."""
    return logits.exp_().add_(1).log_().sum(-1)


def _softplus_minus_logits(logits: torch.Tensor) -> torch.Tensor:
    """sum_j softplus(l_j) - l_j = sum_j -log(sigmoid(l_j)): sigmoid and log in place."""
    return logits.sigmoid_().log_().sum(-1).neg_()


def ll_matmul_log(model, z, x, onehot):
    """x.l by matmul; softplus as relu(l) + log(1 + exp(-|l|))."""
    return _matmul_ll(model, z, x, onehot, 0, softplus_sum)


def ll_matmul_direct(model, z, x, onehot):
    """x.l by matmul; softplus as log(1 + exp(l)): exp, add, log."""
    return _matmul_ll(model, z, x, onehot, 0, _softplus_direct)


def ll_matmul_sigmoid(model, z, x, onehot):
    """(x-1).l by matmul; softplus(l) - l as -log(sigmoid(l)): sigmoid, log."""
    return _matmul_ll(model, z, x, onehot, 1, _softplus_minus_logits)


@torch.inference_mode()
def iwae_bound(
    model: VAE,
    x: torch.Tensor,
    onehot: torch.Tensor | None,
    k: int,
    chunk: int,
    log_likelihood: LogLikelihood = ll_matmul_direct,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """IWAE_k per image: logsumexp_i(log p(x|z_i) + log p(z_i) - log q(z_i|x)) - log k, z_i ~ q(z|x).

    At most `chunk` latent samples are decoded at once (several images' k samples, or a slice of
    one image's), so memory stays bounded: about chunk x 784 floats.
    """
    model.eval()
    n_images, n_samples = max(1, chunk // k), min(k, chunk)
    bounds = []
    for start in range(0, len(x), n_images):
        xb = x[start : start + n_images]
        ob = None if onehot is None else onehot[start : start + n_images]
        mu, logvar = model.encode(xb, ob)
        eps = torch.randn((len(xb), k, mu.shape[1]), generator=generator, dtype=mu.dtype)
        z = mu.unsqueeze(1) + eps * (0.5 * logvar).exp().unsqueeze(1)
        # log p(z) - log q(z|x); the log(2 pi) terms cancel
        log_w = 0.5 * (eps.square() - z.square()).sum(-1) + 0.5 * logvar.sum(-1, keepdim=True)
        for first in range(0, k, n_samples):
            log_w[:, first : first + n_samples] += log_likelihood(model, z[:, first : first + n_samples], xb, ob)
        bounds.append(torch.logsumexp(log_w, dim=1) - math.log(k))
    return torch.cat(bounds)


@torch.inference_mode()
def iwae_floor(model: VAE, n_rows: int, chunk: int) -> float:
    """The decoder's matrix multiplies alone for n_rows latent samples, `chunk` rows at a time."""
    layers = [(layer.weight, torch.empty(chunk, layer.out_features)) for layer in model.decoder if isinstance(layer, nn.Linear)]
    rows = torch.rand(chunk, layers[0][0].shape[1])
    start = time.perf_counter()
    for _ in range(n_rows // chunk):
        inputs = rows
        for weight, out in layers:
            inputs = torch.mm(inputs, weight.t(), out=out)
    return time.perf_counter() - start


def compare_iwae(model: VAE, x: torch.Tensor, k: int, chunk: int, repeats: int) -> LogLikelihood:
    """Time each formulation and the floor round-robin on x; return the fastest that agrees."""
    formulations = {
        "naive": ll_naive,
        "log": ll_log,
        "logsigmoid": ll_logsigmoid,
        "matmul+log": ll_matmul_log,
        "matmul+direct": ll_matmul_direct,
        "matmul+sigmoid": ll_matmul_sigmoid,
    }
    seconds, bounds = defaultdict(list), {}
    for _ in range(repeats):
        for label, fn in formulations.items():
            elapsed, bound = timed(iwae_bound, model, x, None, k, chunk, fn, torch.Generator().manual_seed(0))
            seconds[label].append(elapsed)
            bounds[label] = bound.double()
        seconds["floor"].append(iwae_floor(model, len(x) * k, chunk))
    floor = statistics.median(seconds["floor"])
    print(f"\nIWAE k={k} on the first {len(x)} test images, {chunk} samples decoded at a time (median of {repeats}):")
    print(f"  {'formulation':<15s} {'seconds':>8s} {'floor/t':>8s} {'mean bound':>11s} {'max |diff| vs naive':>20s}")
    agreeing = {}
    for label, fn in formulations.items():
        t, diff = statistics.median(seconds[label]), float((bounds[label] - bounds["naive"]).abs().max())
        ok = diff <= IWAE_TOLERANCE
        if ok:
            agreeing[label] = t
        print(f"  {label:<15s} {t:8.2f} {floor / t:8.2f} {float(bounds[label].mean()):11.4f} {diff:20.1e}{'' if ok else '  DISAGREES'}  {fn.__doc__}")
    print(f"  {'floor (GEMMs)':<15s} {floor:8.2f}")
    best = min(agreeing, key=agreeing.get)
    print(f"  fastest that agrees within {IWAE_TOLERANCE} nats on every image: {best}")
    return formulations[best]


def full_iwae(model: VAE, x: torch.Tensor, k: int, chunk: int, fn: LogLikelihood, block: int = 500) -> float:
    """The bound over all of x with fn, timed block by block interleaved with the floor; returns floor/t."""
    generator = torch.Generator().manual_seed(0)
    total = best_seconds = floor_seconds = 0.0
    for start in range(0, len(x), block):
        xb = x[start : start + block]
        elapsed, bounds = timed(iwae_bound, model, xb, None, k, chunk, fn, generator)
        best_seconds += elapsed
        total += float(bounds.double().sum())
        floor_seconds += iwae_floor(model, len(xb) * k, chunk)
    print(f"\nIWAE k={k} over all {len(x)} test images: {total / len(x):.3f} nats per image")
    print(f"  fastest formulation {best_seconds:.1f} s ({len(x) * k / best_seconds / 1e6:.2f} M samples/s), floor {floor_seconds:.1f} s")
    return floor_seconds / best_seconds


# ---------------------------------------------------------------- main


def setup(tmp: Path) -> Bench:
    fetch_mnist(tmp, mirror_from_env(), {})
    cpu = torch.device("cpu")
    mlflow.set_tracking_uri(f"sqlite:///{tmp / 'mlflow.db'}")
    with mlflow.start_run(run_name="warm-up"):  # creates the store: its schema migration is not an epoch's cost
        mlflow.log_metrics({"warm_up": 0.0}, step=0)
    return Bench(load_params(), load_split(True, cpu, tmp), load_split(False, cpu, tmp), reference.train_loader(str(tmp)), tmp)


def train_round(bench: Bench, names: list[str], repeat: int, results: dict) -> None:
    """One repeat: every candidate of every variant once, starting from the same weights per repeat."""
    batch = bench.params.batch_size
    for name in names:
        shapes = linear_shapes([m for m in fresh_model(bench, name, repeat).modules() if isinstance(m, nn.Linear)])
        candidates = [
            ("a", lambda: run_reference(bench, fresh_model(bench, name, repeat))),
            ("b", lambda: run_vaelab(bench, name, fresh_model(bench, name, repeat), f"{name} {repeat}")),
            ("c", lambda: (run_floor(shapes, len(bench.train), batch),)),
        ]
        if name == "vae":
            candidates += [
                ("b fast nll", lambda: _patched_nll(bench, name, repeat)),
                ("b 1 thread", lambda: _one_thread(bench, name, repeat)),
            ]
        shift = repeat % len(candidates)  # rotate the order so no candidate always runs first
        for label, run in candidates[shift:] + candidates[:shift]:
            results[name][label].append(run())


def _patched_nll(bench: Bench, name: str, repeat: int):
    with mock.patch.object(vaelab.elbo, "bernoulli_nll", fast_bernoulli_nll):
        return run_vaelab(bench, name, fresh_model(bench, name, repeat), f"{name} {repeat} fast nll")


def _one_thread(bench: Bench, name: str, repeat: int):
    with threads(1):
        return run_vaelab(bench, name, fresh_model(bench, name, repeat), f"{name} {repeat} 1 thread")


def report_training(names: list[str], results: dict, n_images: int) -> tuple[dict, list[str]]:
    """Print the table and the loss check; return the medians in seconds and any failures."""
    median = {name: {label: statistics.median(r[0] for r in runs) for label, runs in results[name].items()} for name in names}
    print(f"\ntraining, one epoch of {n_images} images (median seconds and images/s):")
    print(f"  {'variant':<9s} {'a ref':>13s} {'b vaelab':>13s} {'c floor':>13s} {'speedup b/a':>12s} {'floor c/b':>10s} {'test pass':>10s}")
    for name in names:
        m = median[name]
        cells = " ".join(f"{m[x]:5.2f}s {n_images / m[x]:6.0f}" for x in "abc")
        test_pass = statistics.median(r[2] for r in results[name]["b"])
        print(f"  {name:<9s} {cells} {m['a'] / m['b']:12.2f} {m['c'] / m['b']:10.2f} {test_pass:9.3f}s")
    failures = []
    print(f"\nmean train loss after one epoch from the same weights (median of repeats; tolerance {LOSS_TOLERANCE:.0%}):")
    for name in names:
        losses = {label: statistics.median(r[1] for r in runs) for label, runs in results[name].items() if label != "c"}
        for label, loss in losses.items():
            gap = loss / losses["a"] - 1
            ok = abs(gap) <= LOSS_TOLERANCE
            if not ok:
                failures.append(f"{name} {label}: loss {loss:.3f} vs reference {losses['a']:.3f}")
            print(f"  {name:<9s} {label:<11s} {loss:9.3f}  {gap:+6.2%}{'' if ok else '  MISMATCH'}")
    if "vae" in names:
        m = median["vae"]
        print("\nvae, candidate changes to vaelab's epoch (median seconds; saving vs b):")
        for label in ["b fast nll", "b 1 thread"]:
            print(f"  {label:<11s} {m[label]:5.2f}s  saves {m['b'] - m[label]:+.2f}s")
    return median, failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=["vae", "vae_deep", "cvae"])
    parser.add_argument("--iwae-k", type=int, default=1000)
    parser.add_argument("--iwae-chunk", type=int, default=1000, help="latent samples decoded at once")
    parser.add_argument("--iwae-subset", type=int, default=300, help="test images for comparing formulations")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads (default: torch's)")
    args = parser.parse_args()
    if "vae" not in args.variants:
        parser.error("the final figures are for vae: include it in --variants")

    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load:.2f}")
    if load > 1:
        print("warning: other processes are busy on this machine; two-thread timings suffer most")
    with tempfile.TemporaryDirectory() as tmp:
        bench = setup(Path(tmp))
        ours, theirs, grad = check_fast_nll(bench)
        print(f"fast bernoulli_nll, max error per image vs float64: {ours:.1e} nats (vaelab's: {theirs:.1e}); gradient {grad:.1e}")

        results = defaultdict(lambda: defaultdict(list))
        for repeat in range(args.repeats):
            train_round(bench, args.variants, repeat, results)
        median, failures = report_training(args.variants, results, len(bench.train))
        profile_epoch(bench, "vae")

        torch.manual_seed(bench.params.seed)
        model = VAE.for_variant(bench.params.variant("vae"), bench.params.latent_dim)
        trainer = Trainer(model, bench.params.variant("vae"), bench.params, bench.train, bench.test)
        elbo = trainer.train_epoch()["test_elbo"]
        print(f"\nIWAE model: vae after one epoch, test ELBO {elbo:.3f} nats per image")
        x = bench.test.images
        fastest = compare_iwae(model, x[: args.iwae_subset], args.iwae_k, args.iwae_chunk, args.repeats)
        iwae_fraction = full_iwae(model, x, args.iwae_k, args.iwae_chunk, fastest)

    print(f"\nload average at the end {os.getloadavg()[0]:.2f} (other processes on these 2 cores slow every figure)")
    vae = median["vae"]
    print(f"speedup_vs_reference={vae['a'] / vae['b']:.2f} floor_fraction={vae['c'] / vae['b']:.2f}")
    print(f"iwae_floor_fraction={iwae_fraction:.2f}")
    if failures:
        sys.exit("LOSS CHECK FAILED: " + "; ".join(failures))


if __name__ == "__main__":
    main()
