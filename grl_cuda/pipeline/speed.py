"""--channels-last and --compile: how the loop prepares the networks for speed.

Measured on the MNIST net's DANN step (README, Benchmarks: bench/e2e.py's pipeline
table), one CPU thread: channels-last weights make oneDNN's convolutions and ATen's
pooling faster; torch.compile alone makes the step slower, because Inductor's own
CPU max-pooling kernels (forward, and backward fused with the ReLU's) cost more than
the rest of the step. So under --compile the networks' max-pools are opaque custom
ops that run ATen's kernels (``max_pool2d`` below): the graph stays whole (no graph
break) and Inductor fuses everything around them. The optimizer step is compiled too
(one fused update over all parameters); the losses are our fused ops and
F.cross_entropy, one kernel each, called between compiled parts.
"""

import torch
import torch._dynamo
from torch import nn

__all__ = ["max_pool2d", "prepare_networks", "reset_compiled"]


def prepare_networks(method, cfg):
    """--channels-last and --compile on every network of ``method``, before DDP wraps them.

    Methods call the networks' parts (``model.features``, ``model.classifier``) and not
    only their ``forward``, so --compile compiles every direct child's forward as well as
    the network's (a compiled forward inlines its compiled children); compiling only the
    network would leave the extractor, where the step's time goes, in eager."""
    for net in method.networks().values():
        if cfg.channels_last:  # 4-d weights only; the convolutions then return channels-last activations
            net.to(memory_format=torch.channels_last)
        if cfg.compile:
            _opaque_max_pools(net)
            for module in (net, *net.children()):
                _compile_training(module)
    if cfg.compile:
        for opt in method.optimizers().values():
            # Method.set_lr keeps lr in a tensor under --compile, so the annealed learning rate is
            # an input of the compiled step and not a recompilation each step. Not fullgraph: the
            # optimizers' step breaks the graph on purpose (torch.optim's _use_grad).
            opt.step = torch.compile(opt.step)


_compiled_parts = 0  # in this process: a grid (grl_cuda.results) trains many runs in one


def _compile_training(module):
    """``module``'s forward compiled for training (train mode, grad on: the step), eager
    otherwise: evaluation, logging and refreshes call the networks with other batch sizes,
    each of which would cost a compilation of its own. Static shapes: with dynamic ones the
    opaque pool's strides fail Inductor's stride analysis (a TypeError at compile).

    Every part compiled this way is a version of one code object (torch.compile's wrapper of a
    bound method), and dynamo runs a code object eager, silently, once it has 8 versions
    (recompile_limit): the third run of a grid with --compile trained partly eager. So the
    limit grows with the parts, 8 versions each, as if each had a code object of its own."""
    global _compiled_parts
    _compiled_parts += 1
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, 8 * _compiled_parts)
    # dynamo's second cap counts every version of a code object in the process (256): a long
    # grid is reset between runs (reset_compiled), and the cap keeps room for this run's parts
    config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 8 * _compiled_parts + 256)
    eager = module.forward
    compiled = torch.compile(eager, dynamic=False)

    def forward(*args, **kwargs):
        if module.training and torch.is_grad_enabled():
            return compiled(*args, **kwargs)
        return eager(*args, **kwargs)

    module.forward = forward


def reset_compiled():
    """Drops every compiled version (torch._dynamo.reset) and the count of compiled parts: for a
    process that trains run after run with --compile (grl_cuda.results), whose finished runs'
    networks will not be called again."""
    global _compiled_parts
    torch._dynamo.reset()
    _compiled_parts = 0


# ---- max pooling as an opaque op ---------------------------------------------------------------

@torch.library.custom_op("grl_cuda_pipeline::max_pool2d", mutates_args=())
def _max_pool2d(x: torch.Tensor, kernel_size: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.ops.aten.max_pool2d_with_indices.default(x, [kernel_size] * 2, [stride] * 2)


@_max_pool2d.register_fake
def _(x, kernel_size, stride):
    out = torch.ops.aten.max_pool2d_with_indices.default(x, [kernel_size] * 2, [stride] * 2)
    return out[0], out[1]  # ATen's meta kernel: its shapes and strides (channels-last in, out)


@torch.library.custom_op("grl_cuda_pipeline::max_pool2d_backward", mutates_args=())
def _max_pool2d_backward(grad: torch.Tensor, x: torch.Tensor, indices: torch.Tensor, kernel_size: int,
                         stride: int) -> torch.Tensor:
    return torch.ops.aten.max_pool2d_with_indices_backward.default(
        grad, x, [kernel_size] * 2, [stride] * 2, [0, 0], [1, 1], False, indices)


@_max_pool2d_backward.register_fake
def _(grad, x, indices, kernel_size, stride):
    return torch.ops.aten.max_pool2d_with_indices_backward.default(
        grad, x, [kernel_size] * 2, [stride] * 2, [0, 0], [1, 1], False, indices)


def _setup(ctx, inputs, output):
    x, kernel_size, stride = inputs
    ctx.save_for_backward(x, output[1])
    ctx.kernel_size, ctx.stride = kernel_size, stride


def _backward(ctx, grad, _grad_indices):
    x, indices = ctx.saved_tensors
    return _max_pool2d_backward(grad, x, indices, ctx.kernel_size, ctx.stride), None, None


_max_pool2d.register_autograd(_backward, setup_context=_setup)


def max_pool2d(x, kernel_size, stride):
    """``F.max_pool2d(x, kernel_size, stride)`` (square window, no padding, dilation or
    ceil mode) that torch.compile keeps as one call of ATen's kernel."""
    return _max_pool2d(x, kernel_size, stride)[0]


class OpaqueMaxPool2d(nn.MaxPool2d):
    """nn.MaxPool2d through :func:`max_pool2d` (same parameters, same results)."""

    def forward(self, x):
        return max_pool2d(x, self.kernel_size, self.stride)


def _plain(pool):
    """A max-pool :func:`max_pool2d` computes: square int window and stride, no padding,
    dilation, ceil mode or returned indices."""
    return (type(pool) is nn.MaxPool2d and isinstance(pool.kernel_size, int) and isinstance(pool.stride, int)
            and pool.padding == 0 and pool.dilation == 1 and not pool.ceil_mode and not pool.return_indices)


def _opaque_max_pools(net):
    for module in net.modules():
        for name, child in module.named_children():
            if _plain(child):
                module._modules[name] = OpaqueMaxPool2d(child.kernel_size, child.stride)
