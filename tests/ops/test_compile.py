"""torch.compile(fullgraph=True): no graph breaks, no recompilation when lambda
changes every step, gradients equal to eager."""

import pytest
import torch
from torch import nn

import grl_cuda
from grl_cuda import reference


def make_model(reversal):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), reversal, nn.Linear(16, 1))


@pytest.fixture
def dynamo_strict():
    import torch._dynamo as dynamo

    dynamo.reset()
    with dynamo.config.patch(error_on_recompile=True):
        yield
    dynamo.reset()


@pytest.mark.parametrize("kind", ["module", "linear", "warm_start"])
def test_lambda_changes_every_step_without_recompiling(dynamo_strict, kind):
    torch.manual_seed(0)
    if kind == "linear":
        model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), grl_cuda.GradientReversalLinear(16, 1, lambda_=0.0))
    elif kind == "warm_start":
        model = make_model(grl_cuda.WarmStartGradientReversal(max_iters=5))
    else:
        model = make_model(grl_cuda.GradientReversal(0.0))
    layer = model[2]
    compiled = torch.compile(model, fullgraph=True)  # error_on_recompile: a recompile fails the test
    x = torch.randn(8, 12)
    for step in range(4):
        if kind == "warm_start":
            layer.step()  # outside the compiled function, as documented
            lam = float(layer.lambda_)
        else:
            lam = 0.25 * (step + 1)
            layer.set_lambda(lam)
        xc = x.clone().requires_grad_()
        compiled(xc).sum().backward()
        # eager twin: the unfused pure-PyTorch reversal at the same lambda, same weights
        first, last = model[0], model[-1]
        xe = x.clone().requires_grad_()
        h = torch.relu(first(xe))
        nn.functional.linear(reference.grad_reverse(h, lam), last.weight, last.bias).sum().backward()
        torch.testing.assert_close(xc.grad, xe.grad)


def test_functional_with_tensor_lambda_compiles_once(dynamo_strict):
    lam = torch.tensor(0.5)

    @torch.compile(fullgraph=True)
    def f(x, lam):
        return (grl_cuda.grad_reverse(x, lam) * 3).sum()

    for value in (0.5, -1.0, 2.0):
        lam.fill_(value)
        x = torch.randn(10, requires_grad=True)
        f(x, lam).backward()
        torch.testing.assert_close(x.grad, torch.full_like(x, -3 * value))


def test_copy_mode_compiles():
    @torch.compile(fullgraph=True)
    def f(x):
        y = grl_cuda.grad_reverse(x, 0.5, copy=True)
        return (y * y).sum()

    x = torch.randn(5, requires_grad=True)
    f(x).backward()
    torch.testing.assert_close(x.grad, -x.detach())


def test_registered_ops_compile():
    @torch.compile(fullgraph=True)
    def f(x, lam):
        return torch.ops.grl_cuda.neg_scale(x, lam) + torch.ops.grl_cuda.copy(x)

    x = torch.randn(6)
    torch.testing.assert_close(f(x, torch.tensor(2.0)), -x)


def test_auto_step_inside_compile_is_refused_clearly():
    layer = grl_cuda.WarmStartGradientReversal(max_iters=5, auto_step=True)
    compiled = torch.compile(layer, fullgraph=True)
    with pytest.raises(Exception, match="auto_step=False"):
        compiled(torch.randn(3, requires_grad=True))


def _layouts_for_strides():
    cl = torch.randn(2, 3, 4, 10).contiguous(memory_format=torch.channels_last)
    return {
        "channels_last": cl,
        "channels_last_sliced": cl[..., ::2],  # not dense, but its strides look channels-last
        "channels_last_narrowed": cl[:, 1:],
        "transposed": torch.randn(5, 4, 3, 2).transpose(0, 3),
        "expanded": torch.randn(2, 3, 4, 1).expand(2, 3, 4, 5),
        "expanded_channels_last": torch.randn(2, 1, 4, 5).contiguous(memory_format=torch.channels_last)
        .expand(2, 3, 4, 5),
        "strided_2d": torch.randn(6, 8)[:, ::2],
    }


@pytest.mark.parametrize("op", ["neg_scale", "copy"])
@pytest.mark.parametrize("layout", list(_layouts_for_strides()))
def test_compiled_output_strides_equal_eager(op, layout):
    # Inductor trusts the fake implementation's strides (it asserts them on the real
    # output); they must be the kernel's for every input layout.
    import torch._dynamo as dynamo

    dynamo.reset()
    x = _layouts_for_strides()[layout]
    args = (x, torch.tensor(0.5)) if op == "neg_scale" else (x,)
    fn = getattr(torch.ops.grl_cuda, op)
    eager = fn(*args)
    compiled = torch.compile(lambda *a: fn(*a), fullgraph=True)(*args)
    assert compiled.stride() == eager.stride()
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)
    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        fake = fn(*(mode.from_tensor(a) for a in args))
    assert fake.stride() == eager.stride()


@pytest.mark.filterwarnings("ignore")
def test_compiled_autograd_traces_our_backwards_and_reads_current_lambda():
    # Compiled autograd traces the backward of every node, ours included: the
    # reversal's and the fused losses' backwards must trace without a graph break
    # (fullgraph) and must not bake lambda in as a constant.
    import torch._dynamo as dynamo
    from torch._dynamo import compiled_autograd

    dynamo.reset()
    torch.manual_seed(0)
    lin = nn.Linear(8, 1)
    grl = grl_cuda.GradientReversal(0.5)
    x = torch.randn(6, 8, requires_grad=True)
    domains = torch.tensor([0, 1, 0, 1, 1, 0])

    def step(reversal):
        x.grad = None
        z = lin(reversal(x))
        loss = grl_cuda.domain_bce_with_logits(z, 3) + grl_cuda.domain_cross_entropy(torch.cat([z, -z], 1), domains)
        loss.backward()
        return x.grad.clone()

    eager = {lam: step(lambda t, lam=lam: reference.grad_reverse(t, lam)) for lam in (0.5, 0.25, 2.0)}
    with compiled_autograd._enable(torch.compile(backend="inductor", fullgraph=True)):
        for lam in (0.5, 0.25, 2.0):
            grl.set_lambda(lam)
            torch.testing.assert_close(step(grl), eager[lam], rtol=1e-5, atol=1e-6)
    dynamo.reset()


@pytest.mark.parametrize("loss", ["bce", "cross_entropy"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_compiled_fused_loss_backward_equals_eager(loss, reduction):
    # The eager Function and the registered op share one backward
    # (grl_cuda._ops.fused_loss_input_grad); compare what each path produces.
    import torch._dynamo as dynamo

    dynamo.reset()
    torch.manual_seed(0)
    width = 1 if loss == "bce" else 4
    logits = torch.randn(9, width, dtype=torch.float64) * 3
    domains = torch.randint(0, width, (9,))
    upstream = torch.rand(9 if reduction == "none" else (), dtype=torch.float64) + 0.5
    if loss == "bce" and reduction == "none":
        upstream = upstream[:, None]

    def run(z):
        if loss == "bce":
            out = grl_cuda.domain_bce_with_logits(z, 4, weight_source=0.6, weight_target=1.7, reduction=reduction)
        else:
            out = grl_cuda.domain_cross_entropy(z, domains, reduction=reduction)
        return (out * upstream).sum()

    grads = []
    for fn in (run, torch.compile(run, fullgraph=True)):
        z = logits.clone().requires_grad_()
        fn(z).backward()
        grads.append(z.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-12, atol=1e-14)
    dynamo.reset()
