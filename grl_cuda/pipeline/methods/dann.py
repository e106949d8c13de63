"""DANN (Ganin & Lempitsky, 2015): label loss on source, plus the domain
classifier's loss on source and target behind a gradient reversal layer."""

import torch
import torch.nn.functional as F

from grl_cuda import domain_bce_with_logits, domain_cross_entropy
from grl_cuda.schedules import dann_lambda

from ..models import domain_head, route_domains
from .base import Method


class DANN(Method):
    """With --target-labeled, the labeled target rows join the pass as target rows
    (for the domain loss) and add their own label loss. With S > 1 source domains the
    domain classifier is K-way (S sources + the target, domain_cross_entropy)."""

    name = "dann"
    supports_target_labeled = True

    def __init__(self, cfg, model_factory, num_classes, device):
        super().__init__(cfg, model_factory, num_classes, device)
        self.model = self.build_model(model_factory).to(device)
        # The reversal is fused into the domain head's first layer (GradientReversalLinear).
        self.num_domains = cfg.source_domains + 1
        self.head = domain_head(cfg.arch, self.model.feature_dim, num_domains=self.num_domains).to(device)
        self.opt = self.sgd(list(self.model.parameters()) + list(self.head.parameters()))

    def build_model(self, model_factory):
        return model_factory()

    def networks(self):
        return {"model": self.model, "domain_head": self.head}

    def optimizers(self):
        return {"opt": self.opt}

    def train_step(self, source, target, progress):
        xs, ys, xt = source.x, source.y, target.x
        lam = dann_lambda(progress, gamma=self.cfg.gamma) * self.cfg.lambda_max
        self.head.grl.set_lambda(lam)
        ns, labeled = xs.shape[0], self.labeled_target(target)
        # one pass over both domains (the paper's minibatch: half source, half target)
        f = self.model.features(torch.cat([xs, xt] if labeled is None else [xs, xt, labeled[0]]))
        label_loss = F.cross_entropy(self.model.classifier(self.model.label_hidden(f[:ns])), ys)
        if labeled is not None:
            rows = f[ns + xt.shape[0]:]
            label_loss = label_loss + F.cross_entropy(self.model.classifier(self.model.label_hidden(rows)), labeled[1])
        if self.num_domains == 2:
            domain_loss, domain_acc = domain_bce_with_logits(self.head(f), ns, return_accuracy=True)
        else:  # sources are domains 0..S-1, every target row (labeled or not) is domain S
            ids = torch.cat([source.domain, source.domain.new_full((f.shape[0] - ns,), self.num_domains - 1)])
            domain_loss, domain_acc = domain_cross_entropy(self.head(f), ids, return_accuracy=True)
        loss = label_loss + domain_loss
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.sync_grads(list(self.model.parameters()) + list(self.head.parameters()))
        self.opt.step()
        return {"label_loss": label_loss.detach(), "domain_loss": domain_loss.detach(),
                "domain_acc": domain_acc, "lambda": torch.tensor(lam)}

    def predict(self, x, domain="target"):
        return self.model(x)

    def embed(self, x, domain="target"):
        return self.model.embed(x)


class DANNDomainBN(DANN):
    """DANN on a feature extractor with domain-specific BatchNorm after each
    convolution (DSBN, Chang et al., CVPR 2019; not in the DANN paper): the same
    loss, schedules and reversal, but each domain's rows of the shared minibatch are
    normalised by that domain's own batch statistics, and evaluation uses the
    running statistics of the domain the images come from."""

    name = "dann-dsbn"

    def build_model(self, model_factory):
        return model_factory(domain_bn=True)

    def train_step(self, source, target, progress):
        with route_domains(self.model, n_source=source.x.shape[0]):
            return super().train_step(source, target, progress)

    def predict(self, x, domain="target"):
        with route_domains(self.model, domain=domain):
            return self.model(x)

    def embed(self, x, domain="target"):
        with route_domains(self.model, domain=domain):
            return self.model.embed(x)
