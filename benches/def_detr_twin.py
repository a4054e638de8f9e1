#!/usr/bin/env python3
"""PyTorch twin of `detlab bench train-step --detector def_detr`: the same 3D Deformable DETR
and training step, with the deformable attention in plain PyTorch (`grid_sample` on 5D values,
trilinear, zero padding, align_corners=False), as `ms_deform_attn_core_pytorch` does in 2D.

Presets as detlab's (`--preset quickstart|bench|nndetection`, `--encoder retunet|resenc`,
`--patch`, `--batch`, `--threads`, `--steps`, `--profile`, `--device cpu|cuda`):
  quickstart (default)  widths [8, 16, 32, 64], batch 4 x 1 x 32^3, levels = last 3 stages,
                        d_model 32, 4 heads, 2 points, 1 + 2 layers, FFN 64, 16 queries
  bench                 widths [16, 32, 64, 128], batch 2 x 1 x 64^3, last 2 stages, d_model 64,
                        4 heads, 4 points, 2 + 3 layers, FFN 256, 50 queries
  nndetection           6 stages (32...320), batch 4 x 1 x 128^3, last 4 stages, d_model 256,
                        8 heads, 4 points, 3 + 6 layers, FFN 1024, 300 queries
Layer for layer as detlab's `nn::def_detr`: the encoder of benches/torch_twin.py; per level a 1^3
projection (linear on tokens) + GroupNorm(min(32, d) divisor); 3D sine positional encoding
(2*(d//6) features per axis, the rest zero) + a learned level embedding; post-norm encoder
layers (deformable self-attention, FFN) and decoder layers (multi-head self-attention,
deformable cross-attention, FFN), dropout 0.1; learned queries (position | content), reference
points sigmoid(linear(position)); iterative box refinement (one class head and 3-layer box MLP
per decoder layer, deltas in inverse-sigmoid space, reference detached). Offsets: voxels of
their level for point references, extent * 0.5 / points for box references. Loss per decoder
layer (auxiliary on all): Hungarian matching (scipy linear_sum_assignment; costs class 2
(focal-style), L1 5, GIoU 2), sigmoid focal (alpha 0.25, gamma 2) x 2, L1 x 5, 1 - GIoU x 2, each
over the number of boxes. Optimiser: Adam with AMSGrad, lr 3e-4, weight decay 1e-4 (not on
norms), gradient-norm clip 0.1, encoder at 0.1x the rate (the `def_detr` recipe).

Usage: python3 benches/def_detr_twin.py [--preset P] [--threads N] [--steps N] [--profile]
Prints medians after 2 warm-up steps and the peak RSS.
"""

import argparse
import math
import os
import resource
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_twin import Encoder, PRESETS as RETINA_PRESETS  # noqa: E402

# widths, patch, batch from the Retina U-Net presets; then levels, d, heads, points, encoder
# layers, decoder layers, FFN, queries
TRANSFORMER = {
    "quickstart": (3, 32, 4, 2, 1, 2, 64, 16),
    "bench": (2, 64, 4, 4, 2, 3, 256, 50),
    "nndetection": (4, 256, 8, 4, 3, 6, 1024, 300),
}


def sine_position_encoding(shape, d):
    per_axis = 2 * (d // 6)
    grids = torch.meshgrid(*[(torch.arange(n, dtype=torch.float64) + 0.5) / n * 2 * math.pi for n in shape], indexing="ij")
    j = torch.arange(per_axis)
    temperature = 10000.0 ** ((2 * (j // 2)).double() / per_axis)
    out = torch.zeros(*shape, d, dtype=torch.float64)
    for a, g in enumerate(grids):
        v = g[..., None] / temperature
        out[..., a * per_axis:(a + 1) * per_axis] = torch.where(j % 2 == 0, v.sin(), v.cos())
    return out.reshape(-1, d).float()


def token_centres(shapes):
    out = []
    for shape in shapes:
        g = torch.meshgrid(*[(torch.arange(n, dtype=torch.float32) + 0.5) / n for n in shape], indexing="ij")
        out.append(torch.stack(g, -1).reshape(-1, 3))
    return torch.cat(out, 0)


def inverse_sigmoid(x):
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=1e-5) / (1 - x).clamp(min=1e-5))


def xavier(cin, cout):
    layer = nn.Linear(cin, cout)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def neighbour_directions():
    dirs = [(d, h, w) for d in (-1, 0, 1) for h in (-1, 0, 1) for w in (-1, 0, 1) if (d, h, w) != (0, 0, 0)]
    return sorted(dirs, key=lambda v: sum(1 for x in v if x != 0))


def deformable_core(value, shapes, locations, weights):
    """value [N, Lv, h, dh]; locations [N, Lq, h, l, p, 3] normalised (d, h, w); weights
    [N, Lq, h, l, p] -> [N, Lq, h * dh]."""
    n, _, h, dh = value.shape
    _, lq, _, l, p, _ = locations.shape
    grids = 2 * locations.flip(-1) - 1  # grid_sample wants (x, y, z) = (w, h, d) in [-1, 1]
    out = 0
    start = 0
    for level, shape in enumerate(shapes):
        s = shape[0] * shape[1] * shape[2]
        v = value[:, start:start + s].permute(0, 2, 3, 1).reshape(n * h, dh, *shape)
        start += s
        g = grids[:, :, :, level].permute(0, 2, 1, 3, 4).reshape(n * h, lq, p, 1, 3)
        sampled = F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)
        w = weights[:, :, :, level].permute(0, 2, 1, 3).reshape(n * h, 1, lq, p, 1)
        out = out + (sampled * w).sum((3, 4))  # [n*h, dh, lq]
    return out.reshape(n, h, dh, lq).permute(0, 3, 1, 2).reshape(n, lq, h * dh)


class DeformableAttention(nn.Module):
    def __init__(self, d, h, l, p):
        super().__init__()
        self.h, self.l, self.p = h, l, p
        self.sampling_offsets = nn.Linear(d, h * l * p * 3)
        nn.init.zeros_(self.sampling_offsets.weight)
        dirs = neighbour_directions()
        bias = torch.tensor([[[[c * (k + 1) for c in dirs[head % 26]] for k in range(p)] for _ in range(l)] for head in range(h)], dtype=torch.float32)
        self.sampling_offsets.bias.data.copy_(bias.reshape(-1))
        self.attention_weights = nn.Linear(d, h * l * p)
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        self.value_proj = xavier(d, d)
        self.output_proj = xavier(d, d)

    def forward(self, query, reference, inputs, shapes, inverse_shapes):
        n, lq, d = query.shape
        lv = inputs.shape[1]
        h, l, p = self.h, self.l, self.p
        value = self.value_proj(inputs).reshape(n, lv, h, d // h)
        offsets = self.sampling_offsets(query).reshape(n, lq, h, l, p, 3)
        weights = F.softmax(self.attention_weights(query).reshape(n, lq, h, l * p), -1).reshape(n, lq, h, l, p)
        if reference.shape[-1] == 3:
            locations = reference[:, :, None, :, None, :] + offsets * inverse_shapes[None, None, None, :, None, :]
        else:
            locations = reference[:, :, None, :, None, :3] + offsets * reference[:, :, None, :, None, 3:] * (0.5 / p)
        return self.output_proj(deformable_core(value, shapes, locations, weights))


class FeedForward(nn.Module):
    def __init__(self, d, hidden, dropout):
        super().__init__()
        self.linear1, self.linear2 = xavier(d, hidden), xavier(hidden, d)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d)

    def forward(self, x):
        return self.norm(x + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(x))))))


class EncoderLayer(nn.Module):
    def __init__(self, d, h, l, p, ffn, dropout):
        super().__init__()
        self.attention = DeformableAttention(d, h, l, p)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d)
        self.ffn = FeedForward(d, ffn, dropout)

    def forward(self, tokens, position, reference, shapes, inverse_shapes):
        attended = self.attention(tokens + position, reference, tokens, shapes, inverse_shapes)
        return self.ffn(self.norm(tokens + self.dropout(attended)))


class DecoderLayer(nn.Module):
    def __init__(self, d, h, l, p, ffn, dropout):
        super().__init__()
        self.self_attention = nn.MultiheadAttention(d, h, dropout=dropout, batch_first=True)
        self.self_norm = nn.LayerNorm(d)
        self.cross_attention = DeformableAttention(d, h, l, p)
        self.cross_norm = nn.LayerNorm(d)
        self.dropout = nn.Dropout(dropout)
        self.ffn = FeedForward(d, ffn, dropout)

    def forward(self, target, position, reference, memory, shapes, inverse_shapes):
        q = target + position
        attended = self.self_attention(q, q, target, need_weights=False)[0]
        target = self.self_norm(target + self.dropout(attended))
        attended = self.cross_attention(target + position, reference, memory, shapes, inverse_shapes)
        target = self.cross_norm(target + self.dropout(attended))
        return self.ffn(target)


class DefDetr(nn.Module):
    def __init__(self, preset, encoder, patch):
        super().__init__()
        widths = RETINA_PRESETS[preset][0]
        l, d, h, p, n_enc, n_dec, ffn, q = TRANSFORMER[preset]
        self.levels, self.d, self.queries = l, d, q
        self.stages = list(range(len(widths) - l, len(widths)))
        self.encoder = Encoder(widths, encoder)
        groups = max(g for g in range(1, min(32, d) + 1) if d % g == 0)
        self.projections = nn.ModuleList(xavier(widths[s], d) for s in self.stages)
        self.norms = nn.ModuleList(nn.GroupNorm(groups, d) for _ in self.stages)
        self.level_embedding = nn.Parameter(torch.randn(l, d))
        self.encoder_layers = nn.ModuleList(EncoderLayer(d, h, l, p, ffn, 0.1) for _ in range(n_enc))
        self.decoder_layers = nn.ModuleList(DecoderLayer(d, h, l, p, ffn, 0.1) for _ in range(n_dec))
        self.query_embedding = nn.Parameter(torch.randn(q, 2 * d))
        self.reference_points = xavier(d, 3)
        self.class_heads = nn.ModuleList()
        self.box_heads = nn.ModuleList()
        for _ in range(n_dec):
            c = xavier(d, 1)
            nn.init.constant_(c.bias, -math.log((1 - 0.01) / 0.01))
            self.class_heads.append(c)
            mlp = nn.Sequential(xavier(d, d), nn.ReLU(), xavier(d, d), nn.ReLU(), xavier(d, 6))
            nn.init.zeros_(mlp[4].weight)
            mlp[4].bias.data.copy_(torch.tensor([0.0, 0.0, 0.0, -2.0, -2.0, -2.0]))
            self.box_heads.append(mlp)
        strides = [2 ** s for s in self.stages]
        self.shapes = [(patch // s,) * 3 for s in strides]
        self.register_buffer("inverse_shapes", torch.tensor([[1.0 / x for x in s] for s in self.shapes]))
        self.register_buffer("position", torch.cat([sine_position_encoding(s, d) for s in self.shapes], 0))
        self.register_buffer("centres", token_centres(self.shapes))

    def forward(self, images):
        n = images.shape[0]
        features = self.encoder(images)
        tokens, positions = [], []
        start = 0
        for i, s in enumerate(self.stages):
            f = features[s]
            t = self.projections[i](f.flatten(2).transpose(1, 2))
            tokens.append(self.norms[i](t.transpose(1, 2)).transpose(1, 2))
            size = t.shape[1]
            positions.append(self.position[start:start + size] + self.level_embedding[i])
            start += size
        memory = torch.cat(tokens, 1)
        position = torch.cat(positions, 0)[None].expand(n, -1, -1)
        lv = memory.shape[1]
        reference = self.centres[None, :, None, :].expand(n, lv, self.levels, 3)
        for layer in self.encoder_layers:
            memory = layer(memory, position, reference, self.shapes, self.inverse_shapes)
        d, q = self.d, self.queries
        query_position = self.query_embedding[:, :d][None].expand(n, q, d)
        target = self.query_embedding[:, d:][None].expand(n, q, d)
        reference = torch.sigmoid(self.reference_points(query_position))
        logits_all, boxes_all = [], []
        for k, layer in enumerate(self.decoder_layers):
            level_reference = reference[:, :, None, :].expand(n, q, self.levels, reference.shape[-1])
            target = layer(target, query_position, level_reference, memory, self.shapes, self.inverse_shapes)
            logits = self.class_heads[k](target)
            prior = inverse_sigmoid(reference)
            if prior.shape[-1] == 3:
                prior = torch.cat([prior, torch.zeros_like(prior)], -1)
            boxes = torch.sigmoid(self.box_heads[k](target) + prior)
            reference = boxes.detach()
            logits_all.append(logits)
            boxes_all.append(boxes)
        return logits_all, boxes_all


def to_corners(b, scale):
    centre, half = b[..., :3], b[..., 3:] / 2
    return torch.cat([(centre - half) * scale, (centre + half) * scale], -1)


def giou_matrix(a, b):
    lo, hi = torch.max(a[:, None, :3], b[None, :, :3]), torch.min(a[:, None, 3:], b[None, :, 3:])
    inter = (hi - lo).clamp(min=0).prod(-1)
    va, vb = (a[:, 3:] - a[:, :3]).prod(-1), (b[:, 3:] - b[:, :3]).prod(-1)
    union = va[:, None] + vb[None, :] - inter
    elo, ehi = torch.min(a[:, None, :3], b[None, :, :3]), torch.max(a[:, None, 3:], b[None, :, 3:])
    enclose = (ehi - elo).clamp(min=0).prod(-1)
    return inter / (union + 1e-7) - (enclose - union) / (enclose + 1e-7)


def giou_paired(a, b):
    lo, hi = torch.max(a[:, :3], b[:, :3]), torch.min(a[:, 3:], b[:, 3:])
    inter = (hi - lo).clamp(min=0).prod(-1)
    union = (a[:, 3:] - a[:, :3]).prod(-1) + (b[:, 3:] - b[:, :3]).prod(-1) - inter
    elo, ehi = torch.min(a[:, :3], b[:, :3]), torch.max(a[:, 3:], b[:, 3:])
    enclose = (ehi - elo).clamp(min=0).prod(-1)
    return inter / (union + 1e-7) - (enclose - union) / (enclose + 1e-7)


def set_loss(logits, boxes, targets, scale):
    """One layer's focal + L1 + GIoU loss after Hungarian matching (detlab's weights)."""
    n, q, k = logits.shape
    normaliser = max(sum(len(t) for t in targets), 1)
    one_hot = torch.zeros_like(logits)
    rows, matched = [], []
    with torch.no_grad():
        for i, t in enumerate(targets):
            if len(t) == 0:
                continue
            prob = torch.sigmoid(logits[i, :, 0].double())[:, None]
            pos = 0.25 * (1 - prob) ** 2 * -(prob + 1e-8).log()
            neg = 0.75 * prob ** 2 * -(1 - prob + 1e-8).log()
            pred = boxes[i].double()
            cost = 2 * (pos - neg) + 5 * torch.cdist(pred, t, p=1) - 2 * giou_matrix(to_corners(pred, scale), to_corners(t, scale))
            r, c = linear_sum_assignment(cost.numpy())
            for a, b in zip(r, c):
                one_hot[i, a, 0] = 1.0
                rows.append(i * q + a)
                matched.append(t[b])
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, one_hot, reduction="none")
    p_t = p * one_hot + (1 - p) * (1 - one_hot)
    alpha_t = 0.25 * one_hot + 0.75 * (1 - one_hot)
    cls = (ce * (1 - p_t) ** 2 * alpha_t).sum() / normaliser * 2
    predicted = boxes.reshape(n * q, 6)[torch.tensor(rows)]
    target = torch.stack(matched).float()
    l1 = (predicted - target).abs().sum() * 5 / normaliser
    giou = (1 - giou_paired(to_corners(predicted, scale), to_corners(target, scale))).sum() * 2 / normaliser
    return cls + l1 + giou


def cube(n, start, size):
    image = torch.zeros(1, n, n, n)
    image[0, start[0]:start[0] + size[0], start[1]:start[1] + size[1], start[2]:start[2] + size[2]] = 1.0
    box = torch.tensor([(start[a] + size[a] / 2) / n for a in range(3)] + [size[a] / n for a in range(3)], dtype=torch.float64)
    return image, box


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="quickstart", choices=list(TRANSFORMER))
    ap.add_argument("--encoder", default="retunet", choices=["retunet", "resenc"])
    ap.add_argument("--patch", type=int)
    ap.add_argument("--batch", type=int)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--detector", default="def_detr", choices=["def_detr"])
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    patch = args.patch or RETINA_PRESETS[args.preset][3]
    batch = args.batch or RETINA_PRESETS[args.preset][4]
    model = DefDetr(args.preset, args.encoder, patch)
    # The same two cubes as detlab's bench (given at 64^3, scaled to the patch).
    images, targets = [], []
    for i in range(batch):
        start, size = ((20, 12, 30), (10, 12, 9)) if i % 2 == 0 else ((35, 40, 8), (14, 8, 12))
        img, box = cube(patch, [s * patch // 64 for s in start], [max(s * patch // 64, 2) for s in size])
        images.append(img)
        targets.append(box[None])
    images = torch.stack(images)
    scale = torch.tensor([float(patch)] * 3, dtype=torch.float64)
    encoder_ids = {id(p) for p in model.encoder.parameters()}
    groups = {(e, norm): [] for e in (True, False) for norm in (True, False)}
    for m in model.modules():
        for p in m.parameters(recurse=False):
            norm = isinstance(m, (nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm3d))
            groups[(id(p) in encoder_ids, norm)].append(p)
    lr = 3e-4
    optimizer = torch.optim.Adam(
        [{"params": ps, "lr": lr * (0.1 if e else 1.0), "weight_decay": 0.0 if norm else 1e-4} for (e, norm), ps in groups.items() if ps],
        lr=lr, betas=(0.9, 0.999), eps=1e-8, amsgrad=True)
    params = sum(p.numel() for p in model.parameters())
    tokens = sum(s[0] * s[1] * s[2] for s in model.shapes)
    print(f"PyTorch {torch.__version__} Deformable DETR twin (levels {model.shapes} = {tokens} tokens), {params} parameters; "
          f"batch {batch} x 1 x {patch}^3; Adam AMSGrad, clip 0.1; {torch.get_num_threads()} thread(s); median of {args.steps} steps after 2 warm-up")
    model.train()
    t_loss, t_backward, t_step, t_total = [], [], [], []
    for i in range(args.steps + 2):
        t0 = time.perf_counter()
        logits, boxes = model(images)
        loss = sum(set_loss(lg, bx, targets, scale) for lg, bx in zip(logits, boxes))
        value = loss.item()
        t1 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()
        t3 = time.perf_counter()
        assert math.isfinite(value), value
        if i >= 2:
            t_loss.append(t1 - t0)
            t_backward.append(t2 - t1)
            t_step.append(t3 - t2)
            t_total.append(t3 - t0)
    ms = lambda v: statistics.median(v) * 1e3  # noqa: E731
    total = ms(t_total)
    print(f"loss (forward, matching, losses)       {ms(t_loss):>9.1f} ms")
    print(f"backward                               {ms(t_backward):>9.1f} ms")
    print(f"optimiser step                         {ms(t_step):>9.1f} ms")
    print(f"training step                          {total:>9.1f} ms")
    print(f"peak RSS (VmHWM)                       {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:>9.0f} MiB")
    if args.profile:
        profile(model, batch, args.steps, total)


def time_attention(attention, n, lq, width, model, iters):
    d = model.d
    lv = sum(s[0] * s[1] * s[2] for s in model.shapes)
    query = torch.randn(n, lq, d, requires_grad=True)
    inputs = torch.randn(n, lv, d, requires_grad=True)
    reference = torch.rand(n, lq, model.levels, width) * 0.6 + 0.2
    weights = torch.rand(n, lq, d)
    fwd, bwd = [], []
    for _ in range(max(iters, 3) + 1):
        t0 = time.perf_counter()
        y = attention(query, reference, inputs, model.shapes, model.inverse_shapes)
        t1 = time.perf_counter()
        (y * weights).sum().backward()
        t2 = time.perf_counter()
        fwd.append(t1 - t0)
        bwd.append(t2 - t1)
    return statistics.median(fwd[1:]), statistics.median(bwd[1:])


def profile(model, n, iters, step_ms):
    lv = sum(s[0] * s[1] * s[2] for s in model.shapes)
    q = model.queries
    print("deformable attention per layer (isolated, same shapes, median):")
    print(f"{'layer':<34} {'forward ms':>11} {'backward ms':>12} {'% step':>9}")
    f = b = 0.0
    rows = [(f"encoder {i} self ({lv} queries)", layer.attention, lv, 3) for i, layer in enumerate(model.encoder_layers)]
    rows += [(f"decoder {i} cross ({q} queries)", layer.cross_attention, q, 3 if i == 0 else 6) for i, layer in enumerate(model.decoder_layers)]
    for name, attention, lq, width in rows:
        fw, bw = time_attention(attention, n, lq, width, model, iters)
        print(f"{name:<34} {fw * 1e3:>11.1f} {bw * 1e3:>12.1f} {(fw + bw) * 1e3 / step_ms * 100:>8.1f}%")
        f += fw
        b += bw
    print(f"{'deformable attention, all layers':<34} {f * 1e3:>11.1f} {b * 1e3:>12.1f} {(f + b) * 1e3 / step_ms * 100:>8.1f}%")


if __name__ == "__main__":
    main()
