"""The interface between the training loop and a method."""

import torch

from .. import distributed
from ..config import UserError


class Method:
    """A method owns its networks and optimizers and performs one training step.

    The loop (loop.fit) calls ``refresh`` before the first step and every
    ``--refresh-every`` steps, ``set_lr`` and ``train_step`` once per step,
    ``predict``/``embed`` for evaluation and plots, and ``state_dict``/``load_state_dict``
    for checkpoints. A method is handed target images without their labels (TargetBatch
    has no labels field), unless it declares ``uses_target_labels``.
    """

    name = ""
    uses_target_labels = False  # only the target-only upper bound
    # --target-labeled: the method adds the label loss of the few labeled target rows
    # that SemiSupervisedTargetBatch carries (others refuse the flag before training)
    supports_target_labeled = False
    # Subspace Alignment on the trained features at the end (evaluate.final_metrics):
    # None, "also" (reported beside the method's own numbers) or "instead" (SA's target
    # accuracy is the one reported).
    subspace_alignment = None
    # How data-parallel runs average gradients (pipeline/distributed.py): "ddp" for
    # methods whose step is one backward of ``losses`` (base train_step), "explicit"
    # for steps of their own that call ``sync_grads`` after each backward.
    distribute = "explicit"
    find_unused_parameters = False  # "ddp" methods whose loss may skip parameters: True
    ddp = None  # the DistributedDataParallel wrapper, set by distributed.wrap
    # Multiplies the reversal's lambda in methods that have one; --rollback lowers it (guard.py).
    lambda_scale = 1.0

    def __init__(self, cfg, model_factory, num_classes, device):
        self.cfg = cfg
        self.device = device
        self.num_classes = num_classes
        self.model_factory = model_factory

    # -- the loop's calls ---------------------------------------------------------------------
    def train_step(self, source, target, progress):
        """One step on a SourceBatch (x, y) and a TargetBatch (x, and index: the batch's
        rows in the target train set, for per-sample state such as pseudo labels;
        LabeledTargetBatch, with y, only for methods with uses_target_labels).
        ``progress``: steps done / total steps. Returns a dict of scalar tensors.

        This one: one backward of ``losses`` and a step of every optimizer (methods
        with ``distribute = "ddp"``); methods with other steps override it."""
        loss, logs = self.forward_losses(source, target, progress)
        for opt in self.optimizers().values():
            opt.zero_grad(set_to_none=True)
        loss.backward()
        self.sync_grads([p for net in self.networks().values() for p in net.parameters()])
        for opt in self.optimizers().values():
            opt.step()
        return logs

    def losses(self, source, target, progress):
        """One-backward methods: (the loss to minimise, a dict of detached scalar tensors
        for the log). Runs inside DistributedDataParallel's forward in data-parallel runs,
        so every network call of the step must happen here."""
        raise NotImplementedError

    def forward_losses(self, source, target, progress):
        """``losses`` through the DDP wrapper when there is one (its reducer then
        averages the gradients during the backward, and ``sync_grads`` has nothing to do)."""
        if self.ddp is None:
            return self.losses(source, target, progress)
        self._reduced_by_ddp = True
        return self.ddp(source, target, progress)

    def guarded_steps(self):
        """--rollback (guard.py) watches the run up to this many steps, and its last check
        there keeps the last good weights if the current ones are worse: the whole run,
        or the part of it that is adversarial (DIRT-T's refinement is not)."""
        return self.cfg.steps

    def predict(self, x, domain="target"):
        """Class logits for evaluation (eval mode, no grad: the loop sets those).
        ``domain`` ("source" or "target"; with several sources, an int64 tensor of each
        source row's source id: data.source_rows) says where ``x`` comes from, for
        networks that normalise each domain by its own statistics."""
        raise NotImplementedError

    def embed(self, x, domain="target"):
        """The representation diagnostics look at (t-SNE, proxy A-distance)."""
        raise NotImplementedError

    def networks(self):
        """{name: nn.Module} of everything trained."""
        raise NotImplementedError

    def optimizers(self):
        """{name: optimizer}."""
        raise NotImplementedError

    def refresh(self, step, target_x):
        """Called before the first step and then every ``cfg.refresh_every`` steps with
        the whole target train set's images (e.g. for pseudo labels). Returns a dict for
        the log; a ``pseudo_labels`` tensor in it is logged as ``pseudo_label_acc`` by
        the loop, which alone holds the target labels."""
        return {}

    # -- shared helpers -------------------------------------------------------------------------
    @staticmethod
    def labeled_target(target):
        """(x, y) of the labeled target rows in ``target`` (--target-labeled), or None."""
        labeled = getattr(target, "labeled", None)
        return None if labeled is None else (labeled.x, labeled.y)

    def set_lr(self, lr):
        for opt in self.optimizers().values():
            for group in opt.param_groups:
                value = lr * group.get("lr_mult", 1.0)
                if not self.cfg.compile:
                    group["lr"] = value  # a float, even where a compiled run's checkpoint left a tensor
                elif torch.is_tensor(group["lr"]):
                    group["lr"].fill_(value)
                else:  # the compiled optimizer step reads a tensor lr as an input: no recompiling per step
                    group["lr"] = torch.tensor(value, dtype=torch.float64)

    def train(self, mode=True):
        for net in self.networks().values():
            net.train(mode)

    def sync_grads(self, params):
        """Data-parallel training: averages the gradients of ``params`` over ranks
        (distributed.reduce_gradients: bucketed all-reduces), unless the backward came
        from ``forward_losses`` under DDP, whose reducer already did. Call it after each
        backward, before the optimizer step."""
        if getattr(self, "_reduced_by_ddp", False):
            self._reduced_by_ddp = False
            return
        distributed.reduce_gradients(list(params))

    def state_dict(self):
        return {
            "networks": {k: v.state_dict() for k, v in self.networks().items()},
            "optimizers": {k: v.state_dict() for k, v in self.optimizers().items()},
            "extra": self.extra_state(),
        }

    def load_state_dict(self, state):
        for k, v in self.networks().items():
            try:
                v.load_state_dict(state["networks"][k])
            except (KeyError, RuntimeError) as exc:
                # e.g. a multi-source dann-dsbn checkpoint of grl_cuda <= 0.2.0 (one BatchNorm
                # shared by every source, one per source now): say so instead of a key dump
                detail = str(exc).strip().splitlines()[0] if isinstance(exc, RuntimeError) else f"no {exc} network"
                raise UserError(f"the checkpoint's {k!r} network does not fit {self.name!r} as this version of "
                                f"grl_cuda builds it ({detail}); was it written by another version? "
                                "Train it again with this one, or load it with the version that wrote it.") from exc
        for k, v in self.optimizers().items():
            v.load_state_dict(state["optimizers"][k])
        self.load_extra_state(state.get("extra", {}))

    def extra_state(self):
        return {}

    def load_extra_state(self, state):
        pass

    def make_optimizer(self, params):
        """--optimizer over ``params`` (lr set every step by the loop): the paper's SGD with
        momentum 0.9, or Adam (what most public re-implementations of DANN use). A
        pretrained backbone's parameters go in their own group, at lr_mult x lr."""
        from ..backbones import param_groups

        groups = param_groups(params)
        if self.cfg.optimizer == "adam":
            return torch.optim.Adam(groups, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        return torch.optim.SGD(groups, lr=self.cfg.lr, momentum=0.9, weight_decay=self.cfg.weight_decay)
