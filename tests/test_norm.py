"""Norm layers chosen from the config, and batch statistics synchronised across processes on gloo."""
from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from uniseg.models.layers import SyncBatchNorm2d, build_adapter_norm


def test_syncbn_config_is_plain_batch_norm_in_one_process():
    _, layer = build_adapter_norm(dict(type="SyncBN", requires_grad=True), 8)
    assert isinstance(layer, SyncBatchNorm2d)
    ref = nn.BatchNorm2d(8)
    x = torch.randn(4, 8, 5, 5)
    assert torch.allclose(layer(x), ref(x), atol=1e-6)
    assert torch.allclose(layer.running_var, ref.running_var)


def test_other_norms_come_from_mmcv():
    assert isinstance(build_adapter_norm(dict(type="GN", num_groups=4), 8)[1], nn.GroupNorm)
    assert isinstance(build_adapter_norm(dict(type="BN"), 8)[1], nn.BatchNorm2d)
    frozen = build_adapter_norm(dict(type="SyncBN", requires_grad=False), 8)[1]
    assert not any(p.requires_grad for p in frozen.parameters())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, x_full, w, b, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        layer = SyncBatchNorm2d(x_full.shape[1])
        with torch.no_grad():
            layer.weight.copy_(w)
            layer.bias.copy_(b)
        x = x_full.chunk(world)[rank].clone().requires_grad_(True)
        y = layer(x)
        # a loss whose value depends on every element, averaged like DDP averages gradients
        (y * torch.arange(y.numel()).view_as(y).float().sin()).sum().backward()
        torch.save(dict(y=y.detach(), gx=x.grad, gw=layer.weight.grad, rm=layer.running_mean,
                        rv=layer.running_var), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_processes_match_one_process_on_the_whole_batch(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(4, 3, 6, 6) * 3 + 1
    w, b = torch.rand(3) + 0.5, torch.randn(3)
    mp.spawn(_worker, args=(2, _free_port(), x, w, b, str(tmp_path)), nprocs=2, join=True)
    parts = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    ref = nn.BatchNorm2d(3)
    with torch.no_grad():
        ref.weight.copy_(w)
        ref.bias.copy_(b)
    xr = x.clone().requires_grad_(True)
    yr = ref(xr)
    weights = torch.cat([torch.arange(yr.numel() // 2).view(2, 3, 6, 6).float().sin()] * 2)
    (yr * weights).sum().backward()

    assert torch.allclose(torch.cat([p["y"] for p in parts]), yr.detach(), atol=1e-5)
    assert torch.allclose(torch.cat([p["gx"] for p in parts]), xr.grad, atol=1e-4)
    # each rank's weight gradient is its local share; their sum is the full-batch gradient
    assert torch.allclose(parts[0]["gw"] + parts[1]["gw"], ref.weight.grad, atol=1e-4)
    for p in parts:
        assert torch.allclose(p["rm"], ref.running_mean, atol=1e-6)
        assert torch.allclose(p["rv"], ref.running_var, atol=1e-5)
