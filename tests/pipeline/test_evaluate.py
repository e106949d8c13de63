"""evaluate.py: the weights that are evaluated (--ema's moving average)."""

import torch

from grl_cuda.pipeline import evaluate


def test_weight_average_is_an_ema_and_swaps_back():
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    average = evaluate.WeightAverage({"net": net}, decay=0.5)
    start = net[0].weight.detach().clone()
    with torch.no_grad():
        net[0].weight.add_(2.0)
    net(torch.randn(4, 3))  # moves the BatchNorm buffers and its counter
    average.update()
    torch.testing.assert_close(average.shadow["net"]["0.weight"], start + 1.0)  # halfway: decay 0.5
    assert average.shadow["net"]["1.num_batches_tracked"] == 1  # counters are copied, not averaged
    with average.swapped_in():
        torch.testing.assert_close(net[0].weight, start + 1.0)
    torch.testing.assert_close(net[0].weight, start + 2.0)
