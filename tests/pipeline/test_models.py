"""The digit networks and domain-specific BatchNorm (used by ``dann-dsbn``)."""

import pytest
import torch

from grl_cuda.pipeline import models
from grl_cuda.pipeline.models import DomainBatchNorm2d, route_domains


def test_paper_nets_keep_their_layer_names():
    # checkpoints of the plain nets must stay loadable: no BatchNorm, same keys as before
    keys = set(models.mnist_net().state_dict())
    assert {"extractor.0.weight", "extractor.3.weight", "label_hidden.0.weight", "classifier.weight"} <= keys
    assert not any("source" in k or "target" in k for k in keys)


@pytest.mark.parametrize("factory", [models.mnist_net, models.svhn_net])
def test_domain_bn_nets_have_one_layer_per_conv(factory):
    net = factory(domain_bn=True)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    layers = [m for m in net.modules() if isinstance(m, DomainBatchNorm2d)]
    assert len(layers) == len(convs)
    assert net(torch.randn(4, 3, 32, 32)).shape == (4, 10)


def test_rows_are_normalised_by_their_own_domain():
    torch.manual_seed(0)
    bn = DomainBatchNorm2d(3)
    source = torch.randn(6, 3, 4, 4) * 5 + 10   # very different statistics per domain
    target = torch.randn(4, 3, 4, 4) * 0.1 - 3
    with route_domains(bn, n_source=6):
        out = bn(torch.cat([source, target]))
    ref_s = torch.nn.functional.batch_norm(source, None, None, training=True)
    ref_t = torch.nn.functional.batch_norm(target, None, None, training=True)
    torch.testing.assert_close(out, torch.cat([ref_s, ref_t]))
    # each layer's running statistics saw only its own domain
    assert bn.source.running_mean.mean() > 0.5 and bn.target.running_mean.mean() < -0.1
    assert bn.source.num_batches_tracked == 1 and bn.target.num_batches_tracked == 1


def test_eval_uses_the_named_domain_and_routing_is_restored():
    bn = DomainBatchNorm2d(2)
    with torch.no_grad():
        bn.source.running_mean.fill_(1.0)
        bn.target.running_mean.fill_(-1.0)
    bn.eval()
    x = torch.zeros(1, 2, 1, 1)
    with route_domains(bn, domain="source"):
        assert torch.all(bn(x) < 0)  # 0 - source mean 1
    assert torch.all(bn(x) > 0)  # back to the default: target (0 - (-1))
    with pytest.raises(ValueError, match="domain"):
        with route_domains(bn, domain="test"):
            pass


def test_gradients_reach_both_domains_layers():
    bn = DomainBatchNorm2d(2)
    x = torch.randn(5, 2, 3, 3, requires_grad=True)
    with route_domains(bn, n_source=3):
        (bn(x) * torch.randn(5, 2, 3, 3)).sum().backward()
    assert bn.source.weight.grad.abs().sum() > 0 and bn.target.weight.grad.abs().sum() > 0
    assert x.grad.shape == x.shape


def test_mnist_bn_net_has_batchnorm_after_every_conv_and_hidden_layer():
    net = models.ARCHITECTURES["mnist-bn"](10)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) == 2
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in net.modules()) == 2
    assert net(torch.randn(4, 3, 32, 32)).shape == (4, 10)
    dsbn = models.ARCHITECTURES["mnist-bn"](10, domain_bn=True)  # dann-dsbn on it: DSBN in the extractor
    assert sum(isinstance(m, DomainBatchNorm2d) for m in dsbn.modules()) == 2
    with pytest.raises(ValueError, match="exclude"):
        models.mnist_net(batch_norm=True, domain_bn=True)


@pytest.mark.parametrize("arch", ["mnist", "mnist-bn", "svhn"])
def test_instance_normalised_inputs_ignore_each_images_brightness_and_contrast(arch):
    torch.manual_seed(0)
    net = models.model_factory(arch, 10, input_norm="instance")().eval()
    plain = models.model_factory(arch, 10)().eval()
    x = torch.rand(3, 3, 32, 32)
    # a different positive gain and offset per image and channel
    scaled = x * torch.rand(3, 3, 1, 1).add(0.5) + torch.randn(3, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(net(scaled), net(x), atol=1e-4, rtol=1e-4)
        assert not torch.allclose(plain(scaled), plain(x), atol=1e-2)
    with pytest.raises(ValueError, match="input_norm"):
        models.mnist_net(input_norm="layer")


def test_domain_head_widths_can_be_chosen():
    head = models.domain_head("mnist", 48 * 25, hidden=(64, 32))
    assert [p.shape[0] for p in head.parameters() if p.dim() == 2] == [64, 32, 1]
