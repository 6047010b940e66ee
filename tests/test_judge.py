"""The judge: learns the generated digits, and survives a save and load."""

import torch

from vaelab.data import fetch_mnist, load_split
from vaelab.judge import Judge, accuracy, classify, load_judge, save_judge, shifted, train_judge
from vaelab.params import JudgeParams


def test_judge_learns_the_generated_digits_and_round_trips(mirror, tmp_path):
    directory, md5 = mirror
    fetch_mnist(tmp_path, str(directory), md5)
    train, test = load_split(True, torch.device("cpu"), tmp_path), load_split(False, torch.device("cpu"), tmp_path)
    torch.manual_seed(0)
    judge = Judge([8, 16], hidden=32)

    records = train_judge(judge, JudgeParams(epochs=6, batch_size=32, lr=0.01, channels=[8, 16], hidden=32, max_shift=0), train, seed=0)

    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    assert accuracy(judge, test) >= 0.95
    save_judge(judge, tmp_path / "judge.pt")
    loaded = load_judge(tmp_path / "judge.pt", torch.device("cpu"))
    assert torch.equal(classify(loaded, test.images), classify(judge, test.images))


def test_shifted_batches_move_whole_digits_by_at_most_max_shift():
    digit = torch.zeros(1, 28, 28)
    digit[0, 10:18, 12:16] = 1  # a blank border, like MNIST's
    batch = digit.reshape(1, 784).repeat(3, 1)
    generator = torch.Generator().manual_seed(0)

    assert torch.equal(shifted(batch, 0, generator), batch)
    for _ in range(20):
        moved = shifted(batch, 2, generator).reshape(3, 28, 28)
        rows, cols = moved[0].nonzero().unbind(1)
        assert moved.sum() == batch.sum() and torch.equal(moved[0], moved[2])
        assert abs(int(rows.min()) - 10) <= 2 and abs(int(cols.min()) - 12) <= 2


def test_the_judge_trains_to_the_same_bits_on_one_thread_and_on_two(mirror, tmp_path):
    """The stages' thread count follows the machine's load: the judge must not depend on it."""
    directory, md5 = mirror
    fetch_mnist(tmp_path, str(directory), md5)
    train = load_split(True, torch.device("cpu"), tmp_path)
    opts = JudgeParams(epochs=1, batch_size=64, lr=0.01, channels=[8, 16], hidden=32, max_shift=2)
    weights = {}
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            torch.manual_seed(0)
            judge = Judge(opts.channels, opts.hidden)
            train_judge(judge, opts, train, seed=0)
            weights[n] = judge.state_dict()
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(weights[1][name], weights[2][name]) for name in weights[1])
