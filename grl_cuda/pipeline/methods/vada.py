"""VADA and DIRT-T (Shu, Bui, Narui, Ermon, ICLR 2018, "A DIRT-T Approach to
Unsupervised Domain Adaptation").

VADA (Virtual Adversarial Domain Adaptation) is DANN plus the cluster assumption
on the target: decision boundaries should not cross dense target regions. Its loss:

  CE(source) + lambda_d * domain loss
             + lambda_s * VAT(source) + lambda_t * (H(target) + VAT(target))

H: the mean conditional entropy of the target predictions. VAT (Miyato et al.):
the KL from the prediction at x to the prediction at x + r, r the perturbation of
L2 norm eps that changes the prediction most, found by one power iteration from a
random direction of norm xi. The paper's digit weights: lambda_d = 1e-2,
lambda_s = 1, lambda_t = 1e-2; its code: eps = 3.5, xi = 1e-6. Our default xi is 1e-2: in
float32, the direction found from xi = 1e-6 has cosine 0.03 with the exact power
iteration's (float64) on the MNIST net, from 1e-2 0.998 (tests/pipeline/test_new_methods.py).

Here the domain loss goes through the library's reversal: the discriminator
learns at full strength and the extractor gets the reversed gradient times
lambda_d (a constant, not DANN's schedule). The authors train the generator with
the flipped-label GAN loss and Adam; this method keeps DANN's optimizer.

DIRT-T (``dirt-t``, one resumable run): VADA for the first ``--dirtt-start`` of the
steps, then refinement on the target alone: H(target) + VAT(target) +
beta * KL(teacher(x) || model(x)), the teacher a frozen copy of the model
refreshed every ``--dirtt-refresh`` steps (the paper's approximate natural
gradient: each phase stays close to the previous model's predictions). The
paper's refinement loss is lambda_t * (H + VAT) + beta * KL; we divide it by
lambda_t + beta (Adam, the paper's optimizer, does not see an overall factor;
SGD would otherwise take steps ~50 times smaller at the digit weights). The
ratio beta / lambda_t (1 at the paper's digit weights) is what keeps the
refinement from collapsing: a first version weighted the KL by beta against
unweighted target terms (1/100 of the paper's ratio), and within 50 steps every
target prediction fell on one class (docs/methods.md).
"""

import copy

import torch
import torch.nn.functional as F

from grl_cuda import domain_bce_with_logits

from ..health import prediction_entropy
from ..models import batch_norms, frozen_running_stats
from .dann import DANN


def conditional_entropy(logits):
    """Mean entropy of softmax(logits), computed from log-probabilities (no log(0))."""
    logp = F.log_softmax(logits, dim=1)
    return -(logp.exp() * logp).sum(1).mean()


def soft_cross_entropy(target_probs, logits):
    """Mean over rows of -sum p log softmax(logits): the KL from ``target_probs`` up to
    their (constant) entropy."""
    return -(target_probs * F.log_softmax(logits, dim=1)).sum(1).mean()


def _unit(d):
    """Each row (image) of ``d`` scaled to L2 norm 1."""
    norms = d.flatten(1).norm(dim=1).clamp_min(1e-12)
    return d / norms.view(-1, *([1] * (d.dim() - 1)))


def vat_loss(model, x, logits, eps, xi):
    """Virtual adversarial loss of ``model`` at ``x`` (whose logits are ``logits``):
    one power iteration for the most sensitive direction, then KL(p(x) || p(x + r)),
    r = eps * that direction, the prediction at x held fixed.

    In float32 whatever the autocast around it: the power iteration's step (xi per image,
    ~1e-4 per pixel) is below bfloat16's resolution, which would leave the direction noise.
    The perturbed passes leave BatchNorm's running statistics as they were (Miyato et
    al.'s VAT does the same): they are not data, and evaluation uses those statistics."""
    with torch.autocast(x.device.type, enabled=False), frozen_running_stats(model):
        p = F.softmax(logits.detach().float(), dim=1)
        d = (xi * _unit(torch.randn_like(x))).requires_grad_()
        grad, = torch.autograd.grad(soft_cross_entropy(p, model(x + d)), d)
        r = eps * _unit(grad.detach())
        return soft_cross_entropy(p, model(x + r)) - prediction_entropy(p).mean()


def clean_logits(model, x):
    """VAT's reference prediction at ``x``, from a pass over ``x``'s rows alone (no grad):
    with BatchNorm, the perturbed passes normalise by one domain's batch, and the
    prediction they are compared with must too (a joint source+target pass mixes them).
    In float32 as vat_loss's passes."""
    with torch.no_grad(), torch.autocast(x.device.type, enabled=False), frozen_running_stats(model):
        return model(x)


class VADA(DANN):
    name = "vada"
    supports_target_labeled = False  # its losses read no labeled target rows
    k_way_domains = False  # a binary domain loss: several sources are pooled into one domain

    def reversal_lambda(self, progress):
        return self.cfg.vada_lambda_d * self.lambda_scale

    def vat_reference(self, x, logits):
        """VAT's reference logits at ``x``: the step's own ``logits`` where they come from the
        computation the perturbed passes make, else a pass of their own (clean_logits):
        under autocast (the step's are bfloat16) and on BatchNorm nets (a joint pass
        normalised the rows by both domains' statistics)."""
        if batch_norms(self.model) or torch.is_autocast_enabled(x.device.type):
            return clean_logits(self.model, x)
        return logits

    def losses(self, source, target, progress):
        cfg, xs, ys, xt = self.cfg, source.x, source.y, target.x
        lam = self.reversal_lambda(progress)
        self.head.grl.set_lambda(lam)
        ns = xs.shape[0]
        f = self.features_of_both(xs, xt)
        logits = self.model.classifier(self.model.label_hidden(f))
        label_loss = F.cross_entropy(logits[:ns], ys)
        domain_loss, domain_acc = domain_bce_with_logits(self.head(f), ns, return_accuracy=True)
        entropy = conditional_entropy(logits[ns:])
        vat_s = (vat_loss(self.model, xs, self.vat_reference(xs, logits[:ns]), cfg.vat_eps, cfg.vat_xi)
                 if cfg.vada_lambda_s else 0.0 * entropy)
        vat_t = vat_loss(self.model, xt, self.vat_reference(xt, logits[ns:]), cfg.vat_eps, cfg.vat_xi)
        # the reversal already scales the extractor's domain gradient by lambda_d
        loss = label_loss + domain_loss + cfg.vada_lambda_s * vat_s + cfg.vada_lambda_t * (entropy + vat_t)
        return loss, {"label_loss": label_loss.detach(), "domain_loss": domain_loss.detach(),
                      "domain_acc": domain_acc, "lambda": torch.tensor(lam), "target_cond_entropy": entropy.detach(),
                      "vat_source": vat_s.detach(), "vat_target": vat_t.detach()}


class DIRTT(VADA):
    name = "dirt-t"
    # The refinement is a step of its own (target batches, a teacher): averaged by hand
    # after each backward (VADA's first part too, through the base step's sync_grads).
    distribute = "explicit"

    def __init__(self, cfg, model_factory, num_classes, device):
        super().__init__(cfg, model_factory, num_classes, device)
        self.teacher = copy.deepcopy(self.model).requires_grad_(False).train(False)

    def networks(self):
        return {**super().networks(), "teacher": self.teacher}

    def train(self, mode=True):
        super().train(mode)
        self.teacher.train(False)  # the teacher only ever predicts

    def refinement_start(self):
        """The first step of the refinement."""
        return int(self.cfg.dirtt_start * self.cfg.steps)

    def guarded_steps(self):
        # The refinement trains on the target alone, so the source accuracy the guard reads
        # may fall there by design; the guard stops at its start, which begins from the
        # VADA phase's last good weights.
        return self.refinement_start()

    def train_step(self, source, target, progress):
        step = round(progress * self.cfg.steps)
        start = self.refinement_start()
        if step < start:
            return super().train_step(source, target, progress)
        if (step - start) % self.cfg.dirtt_refresh == 0:
            self.teacher.load_state_dict(self.model.state_dict())
        xt = target.x
        logits = self.model(xt)
        entropy = conditional_entropy(logits)
        vat_t = vat_loss(self.model, xt, self.vat_reference(xt, logits), self.cfg.vat_eps, self.cfg.vat_xi)
        with torch.no_grad():
            teacher_p = F.softmax(self.teacher(xt), dim=1)
        kl = soft_cross_entropy(teacher_p, logits) - prediction_entropy(teacher_p).mean()
        loss = refinement_loss(entropy, vat_t, kl, self.cfg.vada_lambda_t, self.cfg.dirtt_beta)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.sync_grads(list(self.model.parameters()))
        self.opt.step()
        return {"target_cond_entropy": entropy.detach(), "vat_target": vat_t.detach(), "teacher_kl": kl.detach(),
                "refinement_loss": loss.detach()}


def refinement_loss(entropy, vat_target, teacher_kl, lambda_t, beta):
    """DIRT-T's lambda_t * (H + VAT) + beta * KL, divided by lambda_t + beta (module docstring)."""
    return (lambda_t * (entropy + vat_target) + beta * teacher_kl) / (lambda_t + beta)
