"""uniseg's deformable attention and pixel decoder against mmcv's / mmdet's own modules and reference path."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from mmcv.ops import MultiScaleDeformableAttention
from mmcv.ops.multi_scale_deform_attn import multi_scale_deformable_attn_pytorch
from mmengine.config import Config

from uniseg.models.layers import (DeformableAttention, UniMSDeformAttnPixelDecoder, UniMultiScaleDeformableAttention,
                                  deform_attn, ms_deform_attn)

REPO = Path(__file__).resolve().parents[1]


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


@pytest.mark.parametrize("batch_first", [True, False])
def test_drop_in_module_equals_mmcv_module_exactly(batch_first):
    """Same parameters, same call contract (residual, query_pos, padding mask, layout), same numbers on CPU."""
    kwargs = dict(embed_dims=32, num_heads=4, num_levels=3, num_points=4, dropout=0.0, batch_first=batch_first,
                  value_proj_ratio=0.5)
    torch.manual_seed(0)
    theirs = MultiScaleDeformableAttention(**kwargs)
    torch.manual_seed(0)
    ours = UniMultiScaleDeformableAttention(**kwargs)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    for k, v in theirs.state_dict().items():  # mmcv's initialisation, drawn identically
        assert torch.equal(ours.state_dict()[k], v), k
    for p in theirs.parameters():
        torch.nn.init.normal_(p, std=0.2)
    ours.load_state_dict(theirs.state_dict())
    query, value, ref, spatial, start = _inputs()
    pos = torch.randn_like(query)
    mask = torch.rand(value.shape[:2], generator=torch.Generator().manual_seed(1)) < 0.2
    if not batch_first:
        query, value, pos = query.transpose(0, 1), value.transpose(0, 1), pos.transpose(0, 1)
    call = dict(query=query, value=value, query_pos=pos, key_padding_mask=mask, reference_points=ref,
                spatial_shapes=spatial, level_start_index=start)
    assert torch.equal(ours(**call), theirs(**call))
    boxes = torch.cat([ref, torch.rand_like(ref) * 0.3], -1)  # (cx, cy, w, h) reference boxes
    call.update(reference_points=boxes, identity=torch.zeros_like(query))
    assert torch.equal(ours(**call), theirs(**call))
    with pytest.raises(ValueError, match="reference_points"):
        ours(**dict(call, reference_points=ref[..., :1]))


def _pixel_decoder_cfg(type_: str):
    cfg = Config.fromfile(str(REPO / "configs/_base_/models/mask2former_vit-adapter_uni-tiny.py"))
    cfg = copy.deepcopy(cfg.model.decode_head.pixel_decoder)
    cfg.update(type=type_, in_channels=[64] * 4, feat_channels=64, out_channels=64)
    return cfg


def test_pixel_decoder_is_mmdets_with_unis_attention(_registries):
    """Same state-dict keys, shapes and seeded initial values as mmdet's decoder, same outputs on CPU."""
    from mmseg.registry import MODELS

    def build(type_):
        torch.manual_seed(0)
        decoder = MODELS.build(_pixel_decoder_cfg(type_))
        decoder.init_weights()
        return decoder, torch.rand(4)  # the random stream after building must be where mmdet leaves it

    stock, stock_next = build("mmdet.MSDeformAttnPixelDecoder")
    ours, ours_next = build("UniMSDeformAttnPixelDecoder")
    assert type(ours) is UniMSDeformAttnPixelDecoder
    assert all(type(layer.self_attn) is UniMultiScaleDeformableAttention for layer in ours.encoder.layers)
    assert len(ours.encoder.layers) == 2
    theirs_sd, ours_sd = stock.state_dict(), ours.state_dict()
    assert list(ours_sd) == list(theirs_sd)
    for key, value in theirs_sd.items():
        assert ours_sd[key].shape == value.shape and torch.equal(ours_sd[key], value), key
    assert torch.equal(ours_next, stock_next)
    # every parameter is registered once and trainable (the stock attention's tensors were taken over)
    assert len(list(ours.parameters())) == len(list(stock.parameters()))
    assert all(p.requires_grad and p.device.type == "cpu" for p in ours.parameters())
    g = torch.Generator().manual_seed(2)
    feats = [torch.randn(2, 64, s, s, generator=g) for s in (32, 16, 8, 4)]
    with torch.no_grad():
        (mask_s, multi_s), (mask_o, multi_o) = stock(feats), ours(feats)
    assert torch.equal(mask_o, mask_s)
    assert len(multi_o) == len(multi_s) == 3 and all(torch.equal(a, b) for a, b in zip(multi_o, multi_s))


def test_pixel_decoder_builds_from_mmdet_scope_and_on_meta(_registries):
    from mmdet.registry import MODELS as MMDET_MODELS

    decoder = MMDET_MODELS.build(_pixel_decoder_cfg("mmseg.UniMSDeformAttnPixelDecoder"))
    assert type(decoder) is UniMSDeformAttnPixelDecoder
    with torch.device("meta"):  # how test_configs builds the full-size models
        decoder = MMDET_MODELS.build(_pixel_decoder_cfg("mmseg.UniMSDeformAttnPixelDecoder"))
    assert all(p.is_meta for p in decoder.parameters())


@pytest.mark.parametrize("name", ["mask2former_vit-adapter_uni.py", "mask2former_vit-adapter_uni2-h.py",
                                  "mask2former_vit-adapter_uni-tiny.py"])
def test_model_configs_select_the_registered_pixel_decoder(name):
    cfg = Config.fromfile(str(REPO / "configs/_base_/models" / name))
    assert cfg.model.decode_head.pixel_decoder.type == "UniMSDeformAttnPixelDecoder"


class _FakeKernel:
    """Stands in for mmcv's compiled CUDA op on CPU: records the dtypes it is handed."""

    def __init__(self):
        self.dtypes = []

    def __call__(self, value, spatial_shapes, level_start_index, locations, weights, im2col_step):
        self.dtypes.append((value.dtype, locations.dtype, weights.dtype))
        return multi_scale_deformable_attn_pytorch(value, spatial_shapes, locations, weights)


def _op_inputs(seed=3, width=8):
    g = torch.Generator().manual_seed(seed)
    spatial = torch.as_tensor([(4, width), (3, 3)], dtype=torch.long)
    start = torch.as_tensor([0, 4 * width])
    value = torch.randn(1, 4 * width + 9, 2, 8, generator=g)
    loc = torch.rand(1, 7, 2, 2, 3, 2, generator=g)
    weights = torch.rand(1, 7, 2, 2, 3, generator=g)
    return value, spatial, start, loc, weights


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("loc_dtype", ["same", "float32"])  # float32: what autocast hands over
def test_compiled_kernel_computes_reduced_precision_in_float32(monkeypatch, dtype, loc_dtype):
    fake = _FakeKernel()
    monkeypatch.setattr(deform_attn, "use_compiled_kernel", lambda on_cuda: True)
    monkeypatch.setattr(deform_attn, "_compiled_kernel", fake)
    value, spatial, start, loc, weights = _op_inputs()
    value, weights = value.to(dtype), weights.to(dtype)
    loc = loc.to(dtype if loc_dtype == "same" else torch.float32)
    out = ms_deform_attn(value, spatial, start, loc, weights)
    assert fake.dtypes == [(torch.float32, torch.float32, torch.float32)]
    assert out.dtype == dtype
    expected = multi_scale_deformable_attn_pytorch(value.float(), spatial, loc.float(), weights.float()).to(dtype)
    assert torch.equal(out, expected)


def test_compiled_kernel_takes_full_precision_unchanged(monkeypatch):
    fake = _FakeKernel()
    monkeypatch.setattr(deform_attn, "use_compiled_kernel", lambda on_cuda: True)
    monkeypatch.setattr(deform_attn, "_compiled_kernel", fake)
    for dtype in (torch.float32, torch.float64):
        value, spatial, start, loc, weights = (t.to(dtype) if t.is_floating_point() else t for t in _op_inputs())
        assert ms_deform_attn(value, spatial, start, loc, weights).dtype == dtype
    assert fake.dtypes == [(torch.float32,) * 3, (torch.float64,) * 3]


def test_cpu_tensors_never_reach_the_compiled_kernel(monkeypatch):
    fake = _FakeKernel()
    monkeypatch.setattr(deform_attn, "_compiled_kernel", fake)
    monkeypatch.setattr(deform_attn, "mmcv_has_cuda_ops", lambda: True)
    value, spatial, start, loc, weights = _op_inputs()
    ms_deform_attn(value.half(), spatial, start, loc, weights)
    assert fake.dtypes == []


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_pytorch_path_keeps_sampling_precise_on_large_levels(dtype):
    """Half-precision sampling locations snap to the wrong cells of a 2048-wide level; uniseg samples in float32.

    (torch 2.9's CPU grid_sample in float16/bfloat16 also returns NaN now and then: it reads memory it did
    not write, which is why the cost of half precision is shown with rounded locations in float64, and why
    the allocator is first filled with NaNs here.)
    """
    width = 2048
    value, spatial, start, loc, weights = _op_inputs(width=width)
    # A level whose neighbouring cells alternate 0 / 1: half a cell of location error is an error of 0.5.
    level = torch.arange(width).remainder(2).float().expand(4, width).reshape(-1)
    value[0, :4 * width] = level[:, None, None]
    loc[..., 0, :, 0] = 0.9 + torch.rand(loc[..., 0, :, 0].shape, generator=torch.Generator().manual_seed(5)) * 0.09
    reference = multi_scale_deformable_attn_pytorch(value.double(), spatial, loc.double(), weights.double())
    for n in (1_000, 16_384, 65_536, 200_000):  # freed NaN blocks for the allocator to hand out again
        del_me = torch.full((n,), float("nan"), dtype=dtype)
        del del_me
    ours = ms_deform_attn(value.to(dtype), spatial, start, loc, weights.to(dtype))  # autocast: float32 locations
    assert ours.dtype == dtype
    tolerance = 4e-3 if dtype == torch.float16 else 3e-2  # rounding of the result to dtype, values in [0, 2]
    assert (ours.double() - reference).abs().max() < tolerance
    rounded = multi_scale_deformable_attn_pytorch(value.double(), spatial, loc.to(dtype).double(), weights.double())
    assert (rounded - reference).abs().max() > 0.1  # what locations in dtype would have cost
