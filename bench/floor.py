"""The hardware's floor for a training epoch: its matrix multiplies alone, on the CPU or a GPU."""

import time

import torch
from torch import nn


def linear_shapes(model: nn.Module) -> list[tuple[int, int]]:
    """(in, out) of every Linear layer, in the order the forward pass meets them."""
    return [(layer.in_features, layer.out_features) for layer in model.modules() if isinstance(layer, nn.Linear)]


def batch_sizes(n_images: int, batch_size: int) -> list[int]:
    """The rows of each step of one epoch: full batches, then the remainder."""
    return [batch_size] * (n_images // batch_size) + ([n_images % batch_size] if n_images % batch_size else [])


@torch.inference_mode()
def gemm_floor(shapes: list[tuple[int, int]], n_images: int, batch_size: int, device: torch.device) -> float:
    """Seconds for the GEMMs of one epoch's training steps alone. Per Linear layer: x @ W^T forward;
    backward, the gradient wrt the input (not for the first layer, whose input is data) and wrt the weight.

    On a GPU the epoch's multiplies are captured in one CUDA graph and its replay is timed with CUDA
    events: what the multiplies cost with no launch or Python overhead at all.
    """
    sizes = batch_sizes(n_images, batch_size)
    operands = {
        rows: [
            tuple(torch.rand(shape, device=device) for shape in [(rows, n_in), (n_out, n_in), (rows, n_out), (rows, n_in), (n_out, n_in)])
            for n_in, n_out in shapes
        ]
        for rows in set(sizes)
    }

    def epoch() -> None:
        for rows in sizes:
            # `out` doubles as the gradient wrt the layer's output in the backward products
            for i, (x, weight, out, grad_in, grad_weight) in enumerate(operands[rows]):
                torch.mm(x, weight.t(), out=out)
                if i:
                    torch.mm(out, weight, out=grad_in)
                torch.mm(out.t(), x, out=grad_weight)

    if device.type != "cuda":
        start = time.perf_counter()
        epoch()
        return time.perf_counter() - start
    epoch()  # cuBLAS picks its kernels and allocates its workspace outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        epoch()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    replays = 5
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1000 / replays
