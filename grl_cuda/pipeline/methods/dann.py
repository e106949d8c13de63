"""DANN (Ganin & Lempitsky, 2015): label loss on source, plus the domain
classifier's loss on source and target behind a gradient reversal layer."""

import dataclasses

import torch
import torch.nn.functional as F

from grl_cuda import domain_bce_with_logits, domain_cross_entropy
from grl_cuda.schedules import dann_lambda

from ..config import disc_hidden
from ..models import domain_head, route_domains, sorted_by_source
from .base import Method


class DANN(Method):
    """With --target-labeled, the labeled target rows join the pass as target rows
    (for the domain loss) and add their own label loss. With S > 1 source domains the
    domain classifier is K-way (S sources + the target, domain_cross_entropy)."""

    name = "dann"
    distribute = "ddp"  # one backward per step; every parameter gets a gradient
    supports_target_labeled = True
    # Several source domains: a K-way domain classifier (S sources + the target). Subclasses
    # whose losses are binary set it False: their sources are pooled into one domain.
    k_way_domains = True

    def __init__(self, cfg, model_factory, num_classes, device):
        super().__init__(cfg, model_factory, num_classes, device)
        self.model = self.build_model(model_factory).to(device)
        # The reversal is fused into the domain head's first layer (GradientReversalLinear).
        self.num_domains = cfg.source_domains + 1 if self.k_way_domains else 2
        self.head = self.build_head().to(device)
        self.opt = self.make_optimizer(list(self.model.parameters()) + list(self.head.parameters()))

    def build_model(self, model_factory):
        return model_factory()

    def build_head(self):
        """The domain classifier (subclasses that feed it something else than the
        extractor's features, e.g. CDAN, change its input width here)."""
        return domain_head(self.cfg.arch, self.model.feature_dim, hidden=disc_hidden(self.cfg),
                           num_domains=self.num_domains)

    def features_of_both(self, xs, xt):
        """The extractor's features of the source rows, then the target rows. --passes
        joint: one pass over both (the paper's minibatch: half source, half target), so a
        BatchNorm normalises them by the statistics of the mixture; separate: one pass per
        domain, each normalised by its own batch (what most public re-implementations do;
        domain-specific BatchNorm is routed by the pass's domain)."""
        if self.cfg.passes == "separate":
            with route_domains(self.model, domain="source"):
                fs = self.model.features(xs)
            with route_domains(self.model, domain="target"):
                ft = self.model.features(xt)
            return torch.cat([fs, ft])
        return self.model.features(torch.cat([xs, xt]))

    def reversal_lambda(self, progress):
        return dann_lambda(progress, gamma=self.cfg.gamma) * self.cfg.lambda_max * self.lambda_scale

    def networks(self):
        return {"model": self.model, "domain_head": self.head}

    def optimizers(self):
        return {"opt": self.opt}

    def losses(self, source, target, progress):
        """(the step's loss, its record for the log): subclasses add their terms to it."""
        xs, ys, xt = source.x, source.y, target.x
        lam = self.reversal_lambda(progress)
        self.head.grl.set_lambda(lam)
        ns, labeled = xs.shape[0], self.labeled_target(target)
        # labeled target rows (--target-labeled) are target rows for the domain loss
        f = self.features_of_both(xs, xt if labeled is None else torch.cat([xt, labeled[0]]))
        label_loss = F.cross_entropy(self.model.classifier(self.model.label_hidden(f[:ns])), ys)
        if labeled is not None:
            rows = f[ns + xt.shape[0]:]
            label_loss = label_loss + F.cross_entropy(self.model.classifier(self.model.label_hidden(rows)), labeled[1])
        if self.num_domains == 2:
            # the mean over all source and target rows, as tllib: at equal batch sizes half the
            # paper's domain loss (a mean per domain, summed), so the discriminator's gradient and,
            # through the reversal, the extractor's are half the paper's
            domain_loss, domain_acc = domain_bce_with_logits(self.head(f), ns, return_accuracy=True)
        else:  # sources are domains 0..S-1, every target row (labeled or not) is domain S
            ids = torch.cat([source.domain, source.domain.new_full((f.shape[0] - ns,), self.num_domains - 1)])
            domain_loss, domain_acc = domain_cross_entropy(self.head(f), ids, return_accuracy=True)
        record = {"label_loss": label_loss.detach(), "domain_loss": domain_loss.detach(),
                  "domain_acc": domain_acc, "lambda": torch.tensor(lam)}
        loss = label_loss + domain_loss
        target_loss = self.target_loss(f[ns:ns + xt.shape[0]], record)
        return (loss if target_loss is None else loss + target_loss), record

    def target_loss(self, target_features, record):
        """A loss on the unlabeled target rows' features added to DANN's (None: none),
        its parts logged in ``record``; subclasses that regularise the target (DANN+MCC) add it."""
        return None

    def predict(self, x, domain="target"):
        return self.model(x)

    def embed(self, x, domain="target"):
        return self.model.embed(x)


class DANNDomainBN(DANN):
    """DANN on a feature extractor with domain-specific BatchNorm after each
    convolution (DSBN, Chang et al., CVPR 2019; not in the DANN paper): the same
    loss, schedules and reversal, but each domain's rows of the shared minibatch are
    normalised by that domain's own batch statistics, and evaluation uses the
    running statistics of the domain the images come from. With S > 1 sources, one
    BatchNorm per source and one for the target: the step groups the source rows by
    source (the losses are means over rows, so the order does not matter) and each
    group goes through its source's BatchNorm; the K-way domain head is DANN's."""

    name = "dann-dsbn"

    def __init__(self, cfg, model_factory, num_classes, device):
        super().__init__(cfg, model_factory, num_classes, device)
        # a source missing from a batch leaves its BatchNorm without a gradient that step
        self.find_unused_parameters = cfg.source_domains > 1
        self.source_sizes = None

    def build_model(self, model_factory):
        return model_factory(domain_bn=self.cfg.source_domains)

    def losses(self, source, target, progress):
        if self.cfg.source_domains == 1:
            self.source_sizes = [source.x.shape[0]]
        else:
            order, self.source_sizes = sorted_by_source(source.domain, self.cfg.source_domains)
            source = dataclasses.replace(source, x=source.x[order], y=source.y[order], domain=source.domain[order])
        with route_domains(self.model, source_sizes=self.source_sizes):
            return super().losses(source, target, progress)

    def features_of_both(self, xs, xt):
        if self.cfg.passes != "separate" or self.cfg.source_domains == 1:
            return super().features_of_both(xs, xt)
        with route_domains(self.model, source_sizes=self.source_sizes):  # the source pass: each source by its own
            fs = self.model.features(xs)
        with route_domains(self.model, domain="target"):
            ft = self.model.features(xt)
        return torch.cat([fs, ft])

    def _routed(self, fn, x, domain):
        """``fn(x)`` with x's rows routed: ``domain`` "source"/"target", or (several
        sources) an int64 tensor of each row's source id."""
        if not torch.is_tensor(domain):
            with route_domains(self.model, domain=domain):
                return fn(x)
        order, sizes = sorted_by_source(domain, self.cfg.source_domains)
        with route_domains(self.model, source_sizes=sizes):
            out = fn(x[order])
        return torch.empty_like(out).index_copy_(0, order, out)  # back in x's row order

    def predict(self, x, domain="target"):
        return self._routed(self.model, x, domain)

    def embed(self, x, domain="target"):
        return self._routed(self.model.embed, x, domain)
