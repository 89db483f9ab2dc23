"""uniseg's deformable attention against mmcv's own module and reference path."""
from __future__ import annotations

import torch
from mmcv.ops import MultiScaleDeformableAttention
from mmcv.ops.multi_scale_deform_attn import multi_scale_deformable_attn_pytorch

from uniseg.models.layers import DeformableAttention, ms_deform_attn


def _inputs(bs=2, dim=32, shapes=((8, 8), (4, 4), (2, 2)), num_query=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    spatial = torch.as_tensor(shapes, dtype=torch.long)
    start = torch.cat([spatial.new_zeros(1), spatial.prod(1).cumsum(0)[:-1]])
    value = torch.randn(bs, int(spatial.prod(1).sum()), dim, generator=g)
    query = torch.randn(bs, num_query, dim, generator=g)
    ref = torch.rand(bs, num_query, len(shapes), 2, generator=g)
    return query, value, ref, spatial, start


def test_output_equals_mmcv_module_without_its_residual():
    torch.manual_seed(0)
    ours = DeformableAttention(32, num_heads=4, num_levels=3, num_points=4, value_proj_ratio=0.5)
    theirs = MultiScaleDeformableAttention(embed_dims=32, num_heads=4, num_levels=3, num_points=4, dropout=0.0,
                                           batch_first=True, value_proj_ratio=0.5)
    # break the zero-initialised offsets/weights so the comparison exercises real sampling
    for p in ours.parameters():
        torch.nn.init.normal_(p, std=0.2)
    theirs.load_state_dict(ours.state_dict())
    query, value, ref, spatial, start = _inputs()
    got = ours(query, ref, value, spatial, start)
    expected = theirs(query, value=value, reference_points=ref, spatial_shapes=spatial,
                      level_start_index=start) - query
    assert got.shape == query.shape
    assert torch.allclose(got, expected, atol=1e-5)


def test_cpu_dispatch_is_the_pytorch_reference():
    g = torch.Generator().manual_seed(3)
    spatial = torch.as_tensor([(6, 5), (3, 3)], dtype=torch.long)
    start = torch.as_tensor([0, 30])
    value = torch.randn(1, 39, 2, 8, generator=g)
    loc = torch.rand(1, 7, 2, 2, 3, 2, generator=g)
    weights = torch.rand(1, 7, 2, 2, 3, generator=g)
    assert torch.equal(ms_deform_attn(value, spatial, start, loc, weights),
                       multi_scale_deformable_attn_pytorch(value, spatial, loc, weights))


def test_gradients_flow_to_all_projections():
    attn = DeformableAttention(32, num_heads=4, num_levels=3, num_points=2)
    for p in attn.parameters():  # the default init zeroes the offset/weight projections of the query
        torch.nn.init.normal_(p, std=0.2)
    query, value, ref, spatial, start = _inputs()
    query.requires_grad_(True)
    attn(query, ref, value, spatial, start).square().sum().backward()
    for name in ("value_proj", "output_proj", "sampling_offsets", "attention_weights"):
        weight = getattr(attn, name).weight
        assert weight.grad is not None and torch.isfinite(weight.grad).all(), name
    assert query.grad.abs().sum() > 0


def test_gpu_tensors_without_compiled_ops_fall_back_with_one_warning(monkeypatch):
    import warnings

    from uniseg.models.layers import deform_attn

    deform_attn._warn_cuda_fallback.cache_clear()
    monkeypatch.setattr(deform_attn, "mmcv_has_cuda_ops", lambda: False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert deform_attn.use_compiled_kernel(on_cuda=True) is False
        assert deform_attn.use_compiled_kernel(on_cuda=True) is False
    assert len([w for w in caught if "without CUDA ops" in str(w.message)]) == 1
    monkeypatch.setattr(deform_attn, "mmcv_has_cuda_ops", lambda: True)
    assert deform_attn.use_compiled_kernel(on_cuda=True) is True
    assert deform_attn.use_compiled_kernel(on_cuda=False) is False
    deform_attn._warn_cuda_fallback.cache_clear()


def test_mmcv_module_is_told_to_fall_back_when_ops_lack_cuda(monkeypatch):
    """The patch applied for mmdet's pixel decoder: mmcv's own module takes its PyTorch path."""
    from mmcv.ops import multi_scale_deform_attn as mmcv_msda

    from uniseg.models.layers import deform_attn

    monkeypatch.setattr(mmcv_msda, "IS_CUDA_AVAILABLE", True)
    monkeypatch.setattr(deform_attn.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(deform_attn, "mmcv_has_cuda_ops", lambda: False)
    deform_attn.patch_mmcv_deformable_attention.cache_clear()
    try:
        deform_attn.patch_mmcv_deformable_attention()
        assert mmcv_msda.IS_CUDA_AVAILABLE is False
    finally:
        deform_attn.patch_mmcv_deformable_attention.cache_clear()
