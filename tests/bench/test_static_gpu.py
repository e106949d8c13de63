"""Static checks of the compiled CUDA kernels (no GPU needed): no register
spills, no stack, block reductions intact, and the elementwise kernels move 128
bits per global load and store."""

import pytest

from bench import static_gpu


@pytest.fixture(scope="module")
def records():
    if static_gpu._setup_helpers().find_cuda_home() is None:
        pytest.skip("no CUDA toolkit found (set CUDA_HOME)")
    records, have_sass = static_gpu.run(("80", "90"))
    return records, have_sass


def test_every_kernel_compiled_for_both_archs(records):
    records, _ = records
    archs = {r["arch"] for r in records}
    assert archs == {"sm_80", "sm_90"}
    kernels = {r["kernel"].split("/")[0] for r in records}
    assert {"elementwise_vec_kernel", "elementwise_scalar_kernel", "domain_bce_partials_kernel",
            "domain_cross_entropy_partials_kernel", "reduce_final_kernel"} <= kernels


def test_no_register_spills(records):
    records, _ = records
    spilling = [r["kernel"] + "@" + r["arch"] for r in records if r["spill_stores"] or r["spill_loads"]]
    assert not spilling, f"kernels spill registers: {spilling}"
    assert all(r["spill_stores"] is not None for r in records), "ptxas -v output was not parsed"


def test_no_stack_and_block_reductions_intact(records):
    # A device helper of the loss kernels once called itself instead of reducing; the
    # compiler dropped the endless recursion and the kernels compiled cleanly with no
    # shared-memory tree at all. Every block-reducing kernel must keep its barriers.
    records, have_sass = records
    assert all(r["stack_frame"] is not None for r in records), "ptxas -v stack frame lines were not parsed"
    stacked = [r["kernel"] + "@" + r["arch"] for r in records if r["stack_frame"]]
    assert not stacked, f"kernels with a stack frame: {stacked}"
    if not have_sass:
        pytest.skip("cuobjdump not found (neither in the toolkit nor in triton's wheel)")
    reducing = [r for r in records if r["block_reducing"]]
    assert len(reducing) == 2 * (2 * 4 + 4)  # 2 archs x (bce, cross-entropy partials + final) x 4 dtypes
    missing = [r["kernel"] + "@" + r["arch"] for r in reducing if not r["barriers"]]
    assert not missing, f"block-reducing kernels without BAR.SYNC: {missing}"


def test_elementwise_kernels_use_128_bit_accesses(records):
    records, have_sass = records
    if not have_sass:
        pytest.skip("cuobjdump not found (neither in the toolkit nor in triton's wheel)")
    vec = [r for r in records if r["must_vectorise"]]
    assert len(vec) == 2 * 2 * 4  # 2 archs x (neg_scale, copy) x 4 dtypes
    lost = [r["kernel"] + "@" + r["arch"] for r in vec if not (r["ldg128"] and r["stg128"])]
    assert not lost, f"128-bit vectorisation lost in: {lost}"
