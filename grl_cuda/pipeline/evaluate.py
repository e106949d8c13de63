"""What is measured, and on which weights: test accuracies, the end-of-run
numbers (Subspace Alignment, proxy A-distance), and the moving average of the
weights that ``--ema`` evaluates instead of the last ones. Target labels are read
here, for scoring only."""

import contextlib

import torch

from . import diagnostics
from .data import source_rows


@torch.no_grad()
def predicted_classes(method, x, domain, batch=512):
    """``method``'s predicted class of every image of ``x`` (images of ``domain``: "source",
    "target", or each row's source id, data.source_rows), in batches."""
    if len(x) == 0:
        return torch.zeros(0, dtype=torch.long, device=x.device)
    return torch.cat([method.predict(x[i:i + batch], rows_of(domain, i, batch)).argmax(1)
                      for i in range(0, len(x), batch)])


def rows_of(domain, start, batch):
    """The part of ``domain`` (a name, or one source id per row) for rows start..start+batch."""
    return domain[start:start + batch] if torch.is_tensor(domain) else domain


def accuracy(method, x, y, domain):
    method.train(False)
    correct = (predicted_classes(method, x, domain) == y).sum().item()
    method.train(True)
    return correct / max(1, len(x))


def source_test_accuracy(method, tensors):
    """Accuracy on the held-out source split, each row routed by its source (data.source_rows)."""
    return accuracy(method, *tensors["source_test"], source_rows(tensors, "source_test"))


def test_accuracies(method, tensors, step):
    """The metrics record of one evaluation on both test splits."""
    return {"kind": "eval", "step": step, "source_test_acc": source_test_accuracy(method, tensors),
            "target_test_acc": accuracy(method, *tensors["target_test"], "target")}


def final_metrics(method, tensors, final_eval, seed):
    """The end-of-run numbers beyond accuracy: the test features (for the t-SNE), their
    proxy A-distance, and Subspace Alignment where the method asks for it."""
    features = (diagnostics.embed_all(method, tensors["source_test"][0], source_rows(tensors, "source_test")),
                diagnostics.embed_all(method, tensors["target_test"][0], "target"))
    extra = {"proxy_a_distance": diagnostics.proxy_a_distance(*features, seed=seed)}
    if method.subspace_alignment:
        extra["sa"] = diagnostics.subspace_alignment(method, tensors)
    if method.subspace_alignment == "instead":
        extra.update(target_test_acc=extra["sa"]["target_test_acc"],
                     source_only_target_test_acc=final_eval["target_test_acc"])
    return extra, features


class WeightAverage:
    """An exponential moving average of every network's parameters and floating
    buffers (Polyak averaging), which evaluation uses when ``--ema`` > 0: adversarial
    training oscillates, and an average of recent weights is steadier than the last
    ones. ``decay`` 0.999 averages over roughly the last thousand steps. It starts from
    the initial weights without a warm-up (as torch.optim.swa_utils' EMA): after S steps
    decay**S of it is still the initialisation (5% at 3,000 steps with 0.999)."""

    def __init__(self, networks, decay):
        self.networks, self.decay = networks, decay
        self.shadow = {name: {k: v.detach().clone() for k, v in net.state_dict().items()}
                       for name, net in networks.items()}

    @torch.no_grad()
    def update(self):
        for name, net in self.networks.items():
            for k, v in net.state_dict().items():
                if v.is_floating_point():
                    self.shadow[name][k].lerp_(v, 1.0 - self.decay)
                else:
                    self.shadow[name][k].copy_(v)  # counters such as BatchNorm's num_batches_tracked

    @contextlib.contextmanager
    def swapped_in(self):
        """Within the block the networks hold the averaged weights; then their own again."""
        own = {name: {k: v.clone() for k, v in net.state_dict().items()} for name, net in self.networks.items()}
        for name, net in self.networks.items():
            net.load_state_dict(self.shadow[name])
        try:
            yield
        finally:
            for name, net in self.networks.items():
                net.load_state_dict(own[name])

    def state_dict(self):
        return self.shadow

    def load_state_dict(self, state):
        for name in self.shadow:
            for k, v in state[name].items():
                self.shadow[name][k].copy_(v)


def evaluation_weights(average):
    """The context in which evaluation runs: the averaged weights with --ema, else the last ones."""
    return average.swapped_in() if average else contextlib.nullcontext()
