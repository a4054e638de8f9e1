#!/usr/bin/env python3
"""PyTorch twin of `detlab bench pretrain`: one MAE / S3D pre-training step on CPU.

The network is dynamic-network-architectures' ResidualEncoderUNet, the class nnssl builds:
"tiny" = features [8, 16, 32, 64], blocks [1, 1, 2, 2], strides 1, 2, 2, 2; "l" = ResEnc-L
(features [32, 64, 128, 256, 320, 320], blocks [1, 3, 4, 6, 6, 6]); 3³ kernels, conv bias,
InstanceNorm3d(affine, eps 1e-5), LeakyReLU 0.01, one decoder conv per level, 1 output
channel, no deep supervision.

Step (as detlab's): batch 2 × 1 × P³ of uniform noise in [-1, 1], a 75 % block mask with
blocks of P/8 voxels (exactly ⌊0.75 · 512⌋ cells per sample); MAE zeroes the masked input;
S3D multiplies every encoder conv and pooling output by the mask at its resolution (forward
hooks), uses masked instance norms in the encoder (module swap), and densifies every skip
(non-affine masked norm, mask token, 3³ projection except at level 0) before the decoder.
Loss: MSE on masked voxels. SGD lr 0.01, Nesterov momentum 0.99, weight decay 3e-5, gradient
norm clipped at 12 (nnssl).

Usage: python3 benches/pretrain_twin.py [--threads N] [--steps N] [--widths tiny|l|both]
       [--patch 32|64|both] [--methods mae,spark]
Prints the median step time after one warm-up step, steps/s and the peak RSS.
"""

import argparse
import resource
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet


def network(widths):
    if widths == "l":
        features, blocks = [32, 64, 128, 256, 320, 320], [1, 3, 4, 6, 6, 6]
    else:
        features, blocks = [8, 16, 32, 64], [1, 1, 2, 2]
    n = len(features)
    return ResidualEncoderUNet(
        input_channels=1,
        n_stages=n,
        features_per_stage=features,
        conv_op=nn.Conv3d,
        kernel_sizes=[[3, 3, 3]] * n,
        strides=[[1, 1, 1]] + [[2, 2, 2]] * (n - 1),
        n_blocks_per_stage=blocks,
        num_classes=1,
        n_conv_per_stage_decoder=[1] * (n - 1),
        conv_bias=True,
        norm_op=nn.InstanceNorm3d,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
        deep_supervision=False,
    )


def draw_mask(batch, patch, generator):
    grid = 8
    cells = grid ** 3
    masked = int(0.75 * cells)
    mask = torch.ones(batch, cells)
    for b in range(batch):
        mask[b, torch.randperm(cells, generator=generator)[:masked]] = 0
    return mask.view(batch, 1, grid, grid, grid)


def at(mask, shape):
    """The mask at a feature resolution; coarser than the grid: dense (None)."""
    if any(s < g for s, g in zip(shape, mask.shape[2:])):
        return None
    factor = [s // g for s, g in zip(shape, mask.shape[2:])]
    m = mask
    for axis, f in enumerate(factor):
        m = m.repeat_interleave(f, dim=2 + axis)
    return m


def masked_norm(x, m, weight=None, bias=None, eps=1e-5):
    if m is None:
        return F.instance_norm(x, weight=weight, bias=bias, eps=eps)
    count = m.sum(dim=(2, 3, 4), keepdim=True).clamp_min(1)
    mean = (x * m).sum(dim=(2, 3, 4), keepdim=True) / count
    centered = (x - mean) * m
    var = (centered ** 2).sum(dim=(2, 3, 4), keepdim=True) / count
    y = centered / torch.sqrt(var + eps)
    if weight is not None:
        y = y * weight.view(1, -1, 1, 1, 1) + bias.view(1, -1, 1, 1, 1)
    return y * m


class MaskedInstanceNorm(nn.Module):
    def __init__(self, norm, state):
        super().__init__()
        self.norm, self.state = norm, state

    def forward(self, x):
        return masked_norm(x, at(self.state["mask"], x.shape[2:]), self.norm.weight, self.norm.bias, self.norm.eps)


class Spark(nn.Module):
    """nnssl's S3D around a ResidualEncoderUNet (sparse emulation by masking)."""

    def __init__(self, net):
        super().__init__()
        self.net, self.state = net, {"mask": None}
        encoder = net.encoder
        for module in list(encoder.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, nn.InstanceNorm3d):
                    setattr(module, name, MaskedInstanceNorm(child, self.state))
                elif isinstance(child, (nn.Conv3d, nn.AvgPool3d)):
                    child.register_forward_hook(self._mask_output)
        widths = encoder.output_channels
        self.tokens = nn.ParameterList([nn.Parameter(torch.zeros(1, c, 1, 1, 1)) for c in widths])
        self.projections = nn.ModuleList(
            [nn.Identity()] + [nn.Conv3d(c, c, 3, padding=1) for c in widths[1:]]
        )

    def _mask_output(self, _module, _inputs, output):
        m = at(self.state["mask"], output.shape[2:])
        return output if m is None else output * m

    def forward(self, x, mask):
        self.state["mask"] = mask
        skips = self.net.encoder(x)
        dense = []
        for level, f in enumerate(skips):
            m = at(mask, f.shape[2:])
            f = masked_norm(f, m)
            if m is not None:
                f = f * m + self.tokens[level] * (1 - m)
            dense.append(self.projections[level](f))
        return self.net.decoder(dense)


def step_times(method, widths, patch, steps):
    torch.manual_seed(0)
    net = network(widths)
    model = Spark(net) if method == "spark" else net
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.99, nesterov=True, weight_decay=3e-5)
    generator = torch.Generator().manual_seed(0)
    times = []
    for step in range(steps + 1):
        start = time.perf_counter()
        x = torch.rand(2, 1, patch, patch, patch, generator=generator) * 2 - 1
        cells = draw_mask(2, patch, generator)
        voxel = at(cells, (patch, patch, patch))
        if method == "spark":
            y = model(x, cells)
        else:
            y = model(x * voxel)
        hidden = 1 - voxel
        loss = (((y - x) ** 2) * hidden).sum() / hidden.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 12)
        optimizer.step()
        if step > 0:
            times.append(time.perf_counter() - start)
    return times


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--widths", default="tiny")
    parser.add_argument("--patch", default="both")
    parser.add_argument("--methods", default="mae,spark")
    a = parser.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    widths = ["tiny", "l"] if a.widths == "both" else [a.widths]
    patches = [32, 64] if a.patch == "both" else [int(a.patch)]
    print(f"pre-training step (PyTorch {torch.__version__}), batch 2, median of {a.steps} after 1 warm-up; threads: {torch.get_num_threads()}")
    for w in widths:
        for p in patches:
            for m in a.methods.split(","):
                s = statistics.median(step_times(m, w, p, a.steps))
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                print(f"{m:<6} widths {w:<4} patch {p:>3}^3   step {s * 1e3:>9.1f} ms   {1 / s:>7.3f} steps/s   peak RSS {peak:>6.0f} MiB")


if __name__ == "__main__":
    main()
