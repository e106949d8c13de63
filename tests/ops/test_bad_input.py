"""Bad input to every public name, checked where the user passes it (constructor,
not first forward): each case asserts the exception type and a phrase of the
message. Also the near misses that must be accepted (numpy scalars, one hidden
width given as an int, huge lambdas on float64 inputs)."""

import math

import numpy as np
import pytest
import torch
from torch import nn

import grl_cuda
from grl_cuda import schedules
from tests.utils import CUDA

F32_OVERFLOW = 1e39  # finite as a Python float, inf as a float32


def raises(error, match, fn, *args, **kwargs):
    with pytest.raises(error, match=match):
        fn(*args, **kwargs)


# ---- tensors the kernels cannot take ---------------------------------------------------------------

ODD_TENSORS = [
    pytest.param(lambda: torch.randn(3, 3).to_sparse(), TypeError, r"dense \(strided\).*sparse_coo", id="sparse_coo"),
    pytest.param(lambda: torch.randn(3, 3).to_sparse_csr(), TypeError, r"dense \(strided\).*sparse_csr",
                 id="sparse_csr"),
    pytest.param(lambda: torch.nested.nested_tensor([torch.randn(2), torch.randn(3)]), TypeError, "nested tensor",
                 id="nested_strided"),
    pytest.param(lambda: torch.nested.nested_tensor([torch.randn(2, 4), torch.randn(3, 4)], layout=torch.jagged),
                 TypeError, "nested tensor", id="nested_jagged"),
    pytest.param(lambda: torch.quantize_per_tensor(torch.randn(3), 0.1, 0, torch.quint8), TypeError,
                 r"quantized tensor \(torch.quint8\).*dequantize", id="quantized"),
    pytest.param(lambda: torch.randn(3, dtype=torch.complex64), TypeError, r"complex tensor \(torch.complex64\)",
                 id="complex"),
]


@pytest.mark.filterwarnings("ignore::UserWarning")  # "beta", "prototype", "deprecated" on making these
@pytest.mark.parametrize("make, error, match", ODD_TENSORS)
def test_odd_tensors_are_refused_by_every_entry_point(make, error, match):
    x = make()
    raises(error, match, grl_cuda.grad_reverse, x)
    raises(error, match, grl_cuda.GradReverse.apply, x, 1.0, False)
    raises(error, match, grl_cuda.neg_scale, x)
    raises(error, match, grl_cuda.GradientReversal(), x)
    raises(error, match, grl_cuda.GradientReversalLinear(3, 2), x)
    raises(error, match, grl_cuda.domain_bce_with_logits, x, 1)
    raises(error, match, grl_cuda.domain_cross_entropy, x, torch.zeros(3, dtype=torch.long))


def test_sparse_domain_ids_are_refused():
    raises(ValueError, r"domains must be a dense \(strided\)", grl_cuda.domain_cross_entropy,
           torch.zeros(3, 2), torch.zeros(3, dtype=torch.long).to_sparse())


# ---- lambda: finite and within the range of the dtype it is computed in ----------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("lam", [F32_OVERFLOW, -F32_OVERFLOW, torch.tensor(F32_OVERFLOW, dtype=torch.float64)],
                         ids=["float", "negative", "float64_tensor"])
def test_lambda_overflowing_float32_is_refused_for_non_float64_inputs(dtype, lam):
    # these inputs compute in float32: lambda would silently become inf
    x = torch.ones(3, dtype=dtype, requires_grad=True)
    raises(ValueError, "overflows float32", grl_cuda.grad_reverse, x, lam)
    raises(ValueError, "overflows float32", grl_cuda.neg_scale, x.detach(), lam)


def test_lambda_beyond_float32_is_fine_on_float64():
    x = torch.ones(3, dtype=torch.float64, requires_grad=True)
    grl_cuda.grad_reverse(x, F32_OVERFLOW).sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, -F32_OVERFLOW))
    torch.testing.assert_close(grl_cuda.neg_scale(x.detach(), F32_OVERFLOW), torch.full_like(x, -F32_OVERFLOW))


def test_lambda_too_large_for_a_float_is_a_value_error():
    raises(ValueError, "lambda_ must be finite.*too large", grl_cuda.grad_reverse, torch.ones(3), 10**400)
    raises(ValueError, "lambda_ must be finite.*too large", grl_cuda.GradientReversal, 10**400)


@pytest.mark.parametrize("bad, error, match", [
    (F32_OVERFLOW, ValueError, "overflows float32"),
    (torch.tensor(-F32_OVERFLOW, dtype=torch.float64), ValueError, "overflows float32"),
    (10**400, ValueError, "too large"),
    (np.bool_(True), TypeError, "lambda_ must be a float"),
])
def test_module_lambdas_fit_their_float32_buffer(bad, error, match):
    raises(error, match, grl_cuda.GradientReversal, bad)
    raises(error, match, grl_cuda.GradientReversal().set_lambda, bad)
    raises(error, match, grl_cuda.GradientReversalLinear, 4, 2, lambda_=bad)
    raises(error, match, grl_cuda.GradientReversalLinear(4, 2).set_lambda, bad)
    raises(error, match, grl_cuda.DomainDiscriminator, 4, (8,), fused_grl=True, lambda_=bad)
    grl = grl_cuda.GradientReversal(0.5)
    with pytest.raises(error, match=match):
        grl.lambda_ = bad
    assert float(grl.lambda_) == 0.5  # unchanged


def test_numpy_floats_are_accepted_as_lambda():
    x = torch.ones(3, requires_grad=True)
    grl_cuda.grad_reverse(x, np.float32(0.5)).sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, -0.5))
    assert float(grl_cuda.GradientReversal(np.float64(0.25)).lambda_) == 0.25


# ---- flags: bool or numpy bool, never a truthy stand-in -------------------------------------------

NOT_BOOLS = ["False", 0, 1, None, torch.tensor(True)]


@pytest.mark.parametrize("bad", NOT_BOOLS, ids=repr)
def test_flags_must_be_bools(bad):
    x = torch.ones(3, requires_grad=True)
    kind = type(bad).__name__
    raises(TypeError, f"copy must be a bool.*{kind}", grl_cuda.grad_reverse, x, 1.0, copy=bad)
    raises(TypeError, "copy must be a bool", grl_cuda.GradReverse.apply, x, 1.0, bad)
    raises(TypeError, "copy must be a bool", grl_cuda.GradientReversal, copy=bad)
    raises(TypeError, "copy must be a bool", grl_cuda.WarmStartGradientReversal, copy=bad)
    raises(TypeError, "auto_step must be a bool", grl_cuda.WarmStartGradientReversal, auto_step=bad)
    raises(TypeError, "bias must be a bool", grl_cuda.GradientReversalLinear, 4, 2, bias=bad)
    raises(TypeError, "batch_norm must be a bool", grl_cuda.DomainDiscriminator, 4, (8,), batch_norm=bad)
    raises(TypeError, "fused_grl must be a bool", grl_cuda.DomainDiscriminator, 4, (8,), fused_grl=bad)
    raises(TypeError, "return_accuracy must be a bool", grl_cuda.domain_bce_with_logits, torch.zeros(4), 2,
           return_accuracy=bad)
    raises(TypeError, "return_accuracy must be a bool", grl_cuda.domain_cross_entropy, torch.zeros(4, 3),
           torch.zeros(4, dtype=torch.long), return_accuracy=bad)


def test_string_false_does_not_switch_a_flag_on():
    # the bug the check guards: bool("False") is True
    raises(TypeError, "copy must be a bool.*'False'", grl_cuda.GradientReversal, copy="False")
    raises(TypeError, "batch_norm must be a bool.*'False'", grl_cuda.DomainDiscriminator, 4, (8,),
           batch_norm="False")


def test_numpy_bools_are_accepted():
    x = torch.ones(3, requires_grad=True)
    assert grl_cuda.grad_reverse(x, 1.0, copy=np.bool_(True)).data_ptr() != x.data_ptr()
    assert grl_cuda.grad_reverse(x, 1.0, copy=np.bool_(False)).data_ptr() == x.data_ptr()
    grl = grl_cuda.GradientReversal(copy=np.bool_(True))
    assert grl.copy is True
    disc = grl_cuda.DomainDiscriminator(4, (8,), batch_norm=np.bool_(True), fused_grl=np.bool_(True))
    assert isinstance(disc[1], nn.BatchNorm1d) and disc.fused_grl is True
    assert grl_cuda.WarmStartGradientReversal(auto_step=np.bool_(True)).auto_step is True
    _, acc = grl_cuda.domain_bce_with_logits(torch.zeros(4), 2, return_accuracy=np.bool_(True))
    assert acc.dim() == 0


# ---- WarmStartGradientReversal ---------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, match", [
    ({"max_iters": math.inf}, ValueError, r"max_iters must be a finite number in \(0.0, inf\), got inf"),
    ({"max_iters": math.nan}, ValueError, r"max_iters must be a finite number in \(0.0, inf\), got nan"),
    ({"max_iters": -1.5}, ValueError, r"max_iters must be a finite number in \(0.0, inf\)"),
    ({"max_iters": 0}, ValueError, "max_iters must be an int >= 1"),
    ({"max_iters": np.int64(-3)}, ValueError, "max_iters must be an int >= 1"),
    ({"max_iters": "1000"}, TypeError, "max_iters must be a real number"),
    ({"max_iters": True}, TypeError, "max_iters must be a real number"),
    ({"alpha": F32_OVERFLOW}, ValueError, "alpha = 1e\\+39 overflows float32"),
    ({"alpha": torch.tensor(10.0)}, TypeError, "alpha must be a real number"),
    ({"lo": math.nan}, ValueError, "lo must be finite"),
    ({"hi": -math.inf}, ValueError, "hi must be finite"),
    ({"hi": "1"}, TypeError, "hi must be a real number"),
])
def test_warm_start_bad_input(kwargs, error, match):
    raises(error, match, grl_cuda.WarmStartGradientReversal, **kwargs)


def test_warm_start_accepts_numpy_scalars():
    grl = grl_cuda.WarmStartGradientReversal(alpha=np.float32(10.0), hi=np.float64(1.0), max_iters=np.int64(10))
    assert type(grl.max_iters) is int and grl.max_iters == 10 and type(grl.alpha) is float
    assert grl_cuda.WarmStartGradientReversal(max_iters=2.5e3).max_iters == 2500.0


# ---- layer sizes -----------------------------------------------------------------------------------

def test_hidden_may_be_one_int_or_a_sequence():
    disc = grl_cuda.DomainDiscriminator(128, hidden=256)
    assert [m.out_features for m in disc if isinstance(m, nn.Linear)] == [256, 1]
    disc = grl_cuda.DomainDiscriminator(np.int64(128), hidden=[np.int32(16), 8])
    assert [(m.in_features, m.out_features) for m in disc if isinstance(m, nn.Linear)] == [(128, 16), (16, 8), (8, 1)]
    assert all(type(m.in_features) is int for m in disc if isinstance(m, nn.Linear))
    assert len(grl_cuda.DomainDiscriminator(8, hidden=())) == 1  # a linear classifier


@pytest.mark.parametrize("args, kwargs, error, match", [
    ((0,), {}, ValueError, "in_features must be an int >= 1, got 0"),
    ((8.0,), {}, TypeError, "in_features must be an int, got float"),
    ((True,), {}, TypeError, "in_features must be an int, got bool"),
    ((8,), {"hidden": "256"}, TypeError, "hidden must be an int or a sequence of ints"),
    ((8,), {"hidden": 256.0}, TypeError, "hidden must be an int or a sequence of ints"),
    ((8,), {"hidden": (16, 0)}, ValueError, r"hidden must hold positive widths, got hidden\[1\] = 0"),
    ((8,), {"hidden": -4}, ValueError, r"positive widths, got hidden\[0\] = -4"),
    ((8,), {"hidden": (16.0,)}, TypeError, r"hidden\[0\] must be an int, got float"),
    ((8,), {"dropout": 1.0}, ValueError, r"dropout must be a finite number in \[0.0, 1.0\), got 1.0"),
    ((8,), {"dropout": -0.1}, ValueError, r"dropout must be a finite number in \[0.0, 1.0\)"),
    ((8,), {"dropout": math.nan}, ValueError, r"dropout must be a finite number in \[0.0, 1.0\), got nan"),
    ((8,), {"dropout": "0.5"}, TypeError, "dropout must be a real number"),
    ((8,), {"lambda_": math.nan}, ValueError, "lambda_ must be finite"),  # checked even without fused_grl
])
def test_domain_discriminator_bad_input(args, kwargs, error, match):
    raises(error, match, grl_cuda.DomainDiscriminator, *args, **kwargs)


@pytest.mark.parametrize("args, error, match", [
    ((0, 2), ValueError, "in_features must be an int >= 1"),
    ((4, -1), ValueError, "out_features must be an int >= 1"),
    ((4, 2.5), TypeError, "out_features must be an int, got float"),
    (("4", 2), TypeError, "in_features must be an int, got str"),
])
def test_reversal_linear_bad_sizes(args, error, match):
    raises(error, match, grl_cuda.GradientReversalLinear, *args)


def test_reversal_linear_accepts_numpy_sizes():
    lin = grl_cuda.GradientReversalLinear(np.int64(4), np.int32(2))
    assert lin.weight.shape == (2, 4) and type(lin.in_features) is int


# ---- DomainAdversarialLoss -------------------------------------------------------------------------

def test_domain_adversarial_loss_bad_construction():
    raises(TypeError, "discriminator must be a torch.nn.Module, got function", grl_cuda.DomainAdversarialLoss,
           lambda f: f[:, :1])
    raises(TypeError, "grl must be a torch.nn.Module or None, got str", grl_cuda.DomainAdversarialLoss,
           grl_cuda.DomainDiscriminator(4, (8,)), grl="reverse")
    # a fused discriminator plus a separate grl would reverse twice: no reversal at all
    raises(ValueError, "reverse them twice", grl_cuda.DomainAdversarialLoss,
           grl_cuda.DomainDiscriminator(4, (8,), fused_grl=True), grl=grl_cuda.GradientReversal())


def test_domain_adversarial_loss_needs_batched_features():
    dal = grl_cuda.DomainAdversarialLoss(grl_cuda.DomainDiscriminator(4, (8,)))
    raises(ValueError, r"must have a batch dimension.*got shapes \(\) and \(3, 4\)", dal, torch.tensor(1.0),
           torch.randn(3, 4))


# ---- num_source ------------------------------------------------------------------------------------

@pytest.mark.parametrize("num_source", [2, np.int64(2), np.int32(2), np.uint8(2), torch.tensor(2),
                                        torch.tensor([2], dtype=torch.int32)], ids=repr)
def test_num_source_accepts_host_integers(num_source):
    z = torch.randn(5, requires_grad=True)
    loss = grl_cuda.domain_bce_with_logits(z, num_source)
    torch.testing.assert_close(loss, grl_cuda.domain_bce_with_logits(z, 2))


@pytest.mark.parametrize("num_source, error, match", [
    (torch.tensor(True), TypeError, "num_source tensor must have an integer dtype, got torch.bool"),
    (torch.tensor(2.0), TypeError, "num_source tensor must have an integer dtype"),
    (torch.tensor([1, 2]), ValueError, r"num_source tensor must have exactly one element, got shape \(2,\)"),
    (np.bool_(True), TypeError, "num_source must be an int, got bool"),
    (2.0, TypeError, "num_source must be an int, got float"),
    (np.float64(2.0), TypeError, "num_source must be an int, got float64"),
    # a tensor off the CPU (meta stands in for a GPU here): reading it would sync the device
    (torch.tensor(2, device="meta"), TypeError, "pass a Python int.*synchronise"),
])
def test_num_source_bad_input(num_source, error, match):
    raises(error, match, grl_cuda.domain_bce_with_logits, torch.zeros(4), num_source)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_num_source_on_the_gpu_is_refused_without_a_sync():
    z = torch.zeros(4, device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        raises(TypeError, "pass a Python int", grl_cuda.domain_bce_with_logits, z, torch.tensor(2, device="cuda"))
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("kwargs", [{"weight_source": F32_OVERFLOW}, {"weight_target": -F32_OVERFLOW}])
def test_domain_weights_must_fit_the_compute_dtype(kwargs):
    raises(ValueError, "overflows float32", grl_cuda.domain_bce_with_logits, torch.zeros(4), 2, **kwargs)
    loss = grl_cuda.domain_bce_with_logits(torch.zeros(4, dtype=torch.float64), 2, **kwargs)  # fine in float64
    assert torch.isfinite(loss)


# ---- domain ids ------------------------------------------------------------------------------------

@pytest.mark.parametrize("ids, got", [([0, 5, 1], r"\[0, 5\]"), ([-1, 0, 1], r"\[-1, 1\]"), ([3, 3, 3], r"\[3, 3\]"),
                                      ([-2, 0, 7], r"\[-2, 7\]")])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_domain_ids_out_of_range_are_refused_on_the_cpu(ids, got, reduction):
    # before: NaN for the row (or a read past it); now a ValueError naming the ids' range
    z, d = torch.randn(3, 3, requires_grad=True), torch.tensor(ids)
    match = r"domains must be ids in \[0, K\) = \[0, 3\).*got ids in " + got
    raises(ValueError, match, grl_cuda.domain_cross_entropy, z, d, reduction=reduction)
    raises(ValueError, match, torch.ops.grl_cuda.domain_cross_entropy, z, d, reduction)  # the op layer too


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_checks_of_cuda_inputs_do_not_synchronise():
    # ids on a GPU are not range-checked on the host (the kernel asserts): no sync
    z, d = torch.randn(64, 3, device="cuda"), torch.randint(0, 3, (64,), device="cuda")
    zb = torch.randn(64, device="cuda")
    lam = torch.tensor(0.5, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        grl_cuda.domain_cross_entropy(z, d, return_accuracy=True)
        grl_cuda.domain_bce_with_logits(zb, np.int64(32), return_accuracy=np.bool_(True))
        grl_cuda.grad_reverse(zb, lam, copy=np.bool_(False))
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_domain_ids_at_the_edges_are_accepted():
    z = torch.randn(4, 3)
    loss = grl_cuda.domain_cross_entropy(z, torch.tensor([0, 2, 2, 0]), reduction="none")
    assert torch.isfinite(loss).all()


# ---- schedules -------------------------------------------------------------------------------------

@pytest.mark.parametrize("fn, args, kwargs, error, match", [
    (schedules.dann_lambda, (0.5,), {"gamma": math.nan}, ValueError, "gamma must be finite"),
    (schedules.dann_lambda, (0.5,), {"gamma": F32_OVERFLOW}, ValueError, "gamma = 1e\\+39 overflows float32"),
    (schedules.dann_lambda, (0.5,), {"lo": math.inf}, ValueError, "lo must be finite"),
    (schedules.dann_lambda, (0.5,), {"hi": "1"}, TypeError, "hi must be a real number"),
    (schedules.dann_lambda, (0.5,), {"gamma": True}, TypeError, "gamma must be a real number, got bool"),
    (schedules.dann_lambda, (np.bool_(True),), {}, TypeError, "progress p must be a float"),
    (schedules.annealed_lr, (0.5,), {"mu0": math.nan}, ValueError, "mu0 must be finite"),
    (schedules.annealed_lr, (0.5,), {"beta": math.inf}, ValueError, "beta must be finite"),
    (schedules.annealed_lr, (0.5,), {"alpha": -2.0}, ValueError, r"alpha must be a finite number in \(-1.0, inf\)"),
    (schedules.annealed_lr, (torch.tensor(0.5),), {"alpha": math.nan}, ValueError, "alpha must be a finite number"),
    (schedules.annealed_lr_factor, (1.5, 10), {}, TypeError, "step must be an int, got float"),
    (schedules.annealed_lr_factor, (-1, 10), {}, ValueError, "step must be an int >= 0, got -1"),
    (schedules.annealed_lr_factor, (5, 0), {}, ValueError, "total_steps must be an int >= 1, got 0"),
    (schedules.annealed_lr_factor, (5, 10.0), {}, TypeError, "total_steps must be an int, got float"),
    (schedules.annealed_lr_factor, (5, math.inf), {}, TypeError, "total_steps must be an int, got float"),
    (schedules.annealed_lr_factor, (5, 10), {"beta": math.nan}, ValueError, "beta must be finite"),
])
def test_schedules_bad_input(fn, args, kwargs, error, match):
    raises(error, match, fn, *args, **kwargs)


def test_negative_alpha_no_longer_gives_a_complex_rate():
    raises(ValueError, "alpha must be", schedules.annealed_lr, 1.0, alpha=-2.0)
    assert isinstance(schedules.annealed_lr(1.0, alpha=-0.5), float)


def test_schedules_accept_numpy_scalars():
    assert schedules.dann_lambda(np.float32(0.5), gamma=np.float64(10.0)) == pytest.approx(schedules.dann_lambda(0.5))
    assert schedules.annealed_lr(np.float32(0.5)) == pytest.approx(schedules.annealed_lr(0.5))
    assert schedules.annealed_lr_factor(np.int64(5), np.int32(10)) == pytest.approx(schedules.annealed_lr_factor(5, 10))
    assert schedules.annealed_lr_factor(20, 10) == pytest.approx(schedules.annealed_lr_factor(10, 10))  # clamps
