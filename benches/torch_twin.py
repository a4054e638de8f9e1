#!/usr/bin/env python3
"""PyTorch twin of `detlab bench train-step`: the same Retina U-Net and training step.

Presets and encoders as detlab's (`--preset bench|quickstart|nndetection`, `--encoder
retunet|resenc`, `--patch`, `--batch`, `--device cpu|cuda`). The default, `bench` with the plain
encoder, layer for layer as detlab's bench network (2,106,002 parameters):
  encoder  stem conv(1→16) + stages widths [16, 32, 64, 128], strides 1, 2, 2, 2; every unit is
           conv 3³ (no bias) → InstanceNorm3d(affine) → ReLU; stage 0 has 1 unit after the stem,
           the others 2 (the first strided)
  U-FPN    channels [32, 64, 64, 64]; 1³ laterals (bias), 2³ stride-2 transposed convs (bias),
           3³ output convs (bias) on levels 0–3, additive top-down merge
  heads    shared over levels 1–3: 2 × (conv 3³ 64→64 + GroupNorm(4) + ReLU) then conv 3³ to
           27 logits (classifier) / 27·6 deltas × a learned per-level scale (regressor)
  seg head conv 1³ 32→2 on level 0
Step: 27 anchors per position (extents 4, 8, 16 per axis × level stride / 2, centred on cell
corners), ATSS (4 candidates per level, IoU ≥ mean + std), hard-negative sampling (32 anchors
per image, 1/3 positives, pool 20), BCE on sampled anchors, 1 − GIoU on decoded positives,
segmentation CE + soft Dice (weights 0.5 each), SGD (lr 0.01, Nesterov momentum 0.9, weight
decay 3e-5). Batch 2 × 1 × 64³, one cube per patch.
`quickstart`: widths [8, 16, 32, 64], U-FPN/heads 32 (level 0: 16), GroupNorm(2), 4 × 1 × 32³.
`nndetection`: 6 stages (32…320), U-FPN/heads 128, detection levels 2–5, 4 × 1 × 128³.
`--encoder resenc`: ResNet-D basic blocks (conv bias, LeakyReLU 0.01, avg-pool + 1³ conv
shortcut), blocks [1, 1, 2, 2] on 4 stages, ResEnc-L's [1, 3, 4, 6, 6, 6] on 6.

Usage: python3 benches/torch_twin.py [--preset P] [--encoder E] [--threads N] [--steps N] [--profile]
(N = 0: PyTorch's default thread count). Prints medians after 2 warm-up steps and the peak RSS.
"""

import argparse
import resource
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


PRESETS = {
    # widths, FPN channels, head channels, patch, batch, head channels per GroupNorm group
    # (detlab bench train-step --preset; "tiny" is RetinaUNetConfig::tiny, used by infer_twin.py)
    "bench": ((16, 32, 64, 128), 64, 64, 64, 2, 16),
    "quickstart": ((8, 16, 32, 64), 32, 32, 32, 4, 16),
    "nndetection": ((32, 64, 128, 256, 320, 320), 128, 128, 128, 4, 16),
    "tiny": ((8, 16, 32, 64), 16, 16, 128, 1, 8),
}


def conv_norm_act(cin, cout, stride=1, kernel=3, bias=False, act=True, leaky=False):
    layers = [
        nn.Conv3d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=bias),
        nn.InstanceNorm3d(cout, eps=1e-5, affine=True),
    ]
    if act:
        layers.append(nn.LeakyReLU(0.01, inplace=True) if leaky else nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasicBlockD(nn.Module):
    """ResNet-D basic block as dynamic-network-architectures / detlab build it."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = conv_norm_act(cin, cout, stride, bias=True, leaky=True)
        self.conv2 = conv_norm_act(cout, cout, 1, bias=True, act=False)
        skip = []
        if stride > 1:
            skip.append(nn.AvgPool3d(stride, stride))
        if cin != cout:
            skip.append(conv_norm_act(cin, cout, 1, kernel=1, act=False))
        self.skip = nn.Sequential(*skip)
        self.act = nn.LeakyReLU(0.01, inplace=True)

    def forward(self, x):
        return self.act(self.conv2(self.conv1(x)) + self.skip(x))


class Encoder(nn.Module):
    def __init__(self, widths, kind="retunet"):
        super().__init__()
        resenc = kind == "resenc"
        self.stem = conv_norm_act(1, widths[0], bias=resenc, leaky=resenc)
        self.stages = nn.ModuleList()
        blocks = (1, 3, 4, 6, 6, 6) if len(widths) == 6 else (1, 1, 2, 2)
        prev = widths[0]
        for s, w in enumerate(widths):
            st = 1 if s == 0 else 2
            units = []
            if resenc:
                for b in range(blocks[s]):
                    units.append(BasicBlockD(prev if b == 0 else w, w, st if b == 0 else 1))
            else:
                first = 1 if s == 0 else 0
                for i in range(first, 2):
                    units.append(conv_norm_act(prev if i == first else w, w, st if i == 0 else 1))
            self.stages.append(nn.Sequential(*units))
            prev = w

    def forward(self, x):
        x = self.stem(x)
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips


def detection_levels(stages):
    start = min(max(stages - 4, 1), 2, stages - 1)
    return list(range(start, stages))


def level_channels(stages, first, fpn, minimum=8):
    return [fpn if l >= first else min(max(fpn >> (first - l), minimum), fpn) for l in range(stages)]


class UFPN(nn.Module):
    def __init__(self, enc, fpn):
        super().__init__()
        levels = detection_levels(len(enc))
        ch = level_channels(len(enc), levels[0], fpn)
        self.output_levels = sorted({0, *levels})
        self.laterals = nn.ModuleList(nn.Conv3d(e, c, 1) for e, c in zip(enc, ch))
        self.ups = nn.ModuleList(
            nn.ConvTranspose3d(ch[l + 1], ch[l], 2, stride=2) for l in range(len(ch) - 1)
        )
        self.outputs = nn.ModuleList(nn.Conv3d(ch[l], ch[l], 3, padding=1) for l in self.output_levels)

    def forward(self, skips):
        merged = [None] * len(skips)
        above = None
        for l in reversed(range(len(skips))):
            p = self.laterals[l](skips[l])
            if above is not None:
                p = p + self.ups[l](above)
            merged[l] = p
            above = p
        return {l: conv(merged[l]) for conv, l in zip(self.outputs, self.output_levels)}


def head_convs(cin, c, groups):
    layers = []
    for i in range(2):
        layers += [nn.Conv3d(cin if i == 0 else c, c, 3, padding=1), nn.GroupNorm(groups, c), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class RetinaUNet(nn.Module):
    def __init__(self, preset="bench", encoder="retunet"):
        super().__init__()
        widths, fpn, head = PRESETS[preset][:3]
        groups = head // PRESETS[preset][5]
        self.levels = detection_levels(len(widths))
        self.encoder = Encoder(widths, encoder)
        self.decoder = UFPN(widths, fpn)
        self.cls_convs, self.cls_out = head_convs(fpn, head, groups), nn.Conv3d(head, 27, 3, padding=1)
        self.reg_convs, self.reg_out = head_convs(fpn, head, groups), nn.Conv3d(head, 27 * 6, 3, padding=1)
        self.scales = nn.Parameter(torch.ones(len(self.levels)))
        self.seg = nn.Conv3d(level_channels(len(widths), self.levels[0], fpn)[0], 2, 1)
        for m in [self.cls_out, self.reg_out]:
            nn.init.normal_(m.weight, std=0.01)
            nn.init.constant_(m.bias, -4.59511985 if m is self.cls_out else 0.0)

    def forward(self, x):
        features = self.decoder(self.encoder(x))
        seg = self.seg(features[0])
        logits, deltas, grids = [], [], []
        for i, l in enumerate(self.levels):
            f = features[l]
            n = f.shape[0]
            grids.append(tuple(f.shape[2:]))
            c = self.cls_out(self.cls_convs(f))
            r = self.reg_out(self.reg_convs(f)) * self.scales[i]
            logits.append(c.permute(0, 2, 3, 4, 1).reshape(n, -1, 1))
            deltas.append(r.permute(0, 2, 3, 4, 1).reshape(n, -1, 6))
        return torch.cat(logits, 1), torch.cat(deltas, 1), seg, grids


def make_anchors(patch, grids, base=(4.0, 8.0, 16.0)):
    levels = []
    first = patch // grids[0][0]
    for g in grids:
        stride = patch // g[0]
        rel = stride / first
        d, h, w = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) * stride for n in g], indexing="ij")
        centres = torch.stack([d, h, w], -1).reshape(-1, 1, 3)
        e = torch.tensor(base) * rel
        ext = torch.stack(torch.meshgrid(e, e, e, indexing="ij"), -1).reshape(1, 27, 3)
        boxes = torch.cat([centres - ext / 2, centres + ext / 2], -1).reshape(-1, 6)
        levels.append(boxes)
    return levels


def box_iou(a, b):
    lo = torch.max(a[:, None, :3], b[None, :, :3])
    hi = torch.min(a[:, None, 3:], b[None, :, 3:])
    inter = (hi - lo).clamp(min=0).prod(-1)
    va = (a[:, 3:] - a[:, :3]).prod(-1)
    vb = (b[:, 3:] - b[:, :3]).prod(-1)
    return inter / (va[:, None] + vb[None, :] - inter)


def atss(gt, levels, k=4):
    anchors = torch.cat(levels)
    centres = (anchors[:, :3] + anchors[:, 3:]) / 2
    gt_c = (gt[:, :3] + gt[:, 3:]) / 2
    dist = torch.cdist(gt_c, centres)
    cands, start = [], 0
    for lvl in levels:
        n = lvl.shape[0]
        cands.append(dist[:, start:start + n].topk(min(k, n), largest=False).indices + start)
        start += n
    cands = torch.cat(cands, 1)
    ious = box_iou(gt, anchors)
    cand_iou = ious.gather(1, cands)
    thr = cand_iou.mean(1) + cand_iou.std(1)
    matched = torch.full((anchors.shape[0],), -1, dtype=torch.long, device=anchors.device)
    best = torch.full((anchors.shape[0],), -1.0, device=anchors.device)
    for g in range(gt.shape[0]):
        idx = cands[g][cand_iou[g] >= thr[g]]
        better = ious[g, idx] > best[idx]
        matched[idx[better]] = g
        best[idx[better]] = ious[g, idx[better]]
    return anchors, matched


def decode(deltas, anchors):
    size = anchors[:, 3:] - anchors[:, :3]
    ctr = (anchors[:, :3] + anchors[:, 3:]) / 2
    c = ctr + deltas[:, :3] * size
    s = size * torch.exp(deltas[:, 3:].clamp(max=4.135))
    return torch.cat([c - s / 2, c + s / 2], -1)


def giou_loss(p, t):
    lo = torch.max(p[:, :3], t[:, :3])
    hi = torch.min(p[:, 3:], t[:, 3:])
    inter = (hi - lo).clamp(min=0).prod(-1)
    vp = (p[:, 3:] - p[:, :3]).prod(-1)
    vt = (t[:, 3:] - t[:, :3]).prod(-1)
    union = vp + vt - inter
    enc = (torch.max(p[:, 3:], t[:, 3:]) - torch.min(p[:, :3], t[:, :3])).prod(-1)
    giou = inter / union - (enc - union) / enc
    return (1 - giou).sum() / max(p.shape[0], 1)


def loss_fn(model, images, gts, seg_target, gen):
    logits, deltas, seg, grids = model(images)
    n = images.shape[0]
    levels = [l.to(images.device) for l in make_anchors(images.shape[2], grids)]
    cls_rows, cls_targets, pos_d, pos_a, pos_t = [], [], [], [], []
    for i in range(n):
        anchors, matched = atss(gts[i], levels)
        pos = torch.nonzero(matched >= 0).flatten()
        num_pos = min(pos.numel(), int(32 * 0.33))
        pos = pos[torch.randperm(pos.numel(), generator=gen)[:num_pos].to(pos.device)]
        num_neg = max(int(max(num_pos, 1) * abs(1 - 1 / 0.33)), 1)
        scores = logits[i, :, 0].detach().clone()
        scores[matched >= 0] = -float("inf")
        pool = scores.topk(int(num_neg * 20)).indices
        neg = pool[torch.randperm(pool.numel(), generator=gen)[:num_neg].to(pool.device)]
        cls_rows.append(logits[i, torch.cat([pos, neg]), 0])
        cls_targets.append(torch.cat([torch.ones(pos.numel()), torch.zeros(neg.numel())]).to(logits.device))
        pos_d.append(deltas[i, pos])
        pos_a.append(anchors[pos])
        pos_t.append(gts[i][matched[pos]])
    cls = F.binary_cross_entropy_with_logits(torch.cat(cls_rows), torch.cat(cls_targets))
    reg = giou_loss(decode(torch.cat(pos_d), torch.cat(pos_a)), torch.cat(pos_t))
    one_hot = torch.stack([seg_target == 0, seg_target > 0], 1).float()
    ce = -(one_hot * F.log_softmax(seg, 1)).sum(1).mean()
    prob = F.softmax(seg, 1)
    dims = (0, 2, 3, 4)
    dice = 1 - ((2 * (prob * one_hot).sum(dims) + 1e-5) / (prob.sum(dims) + one_hot.sum(dims) + 1e-5)).mean()
    return cls + reg + 0.5 * ce + 0.5 * dice


def op_profile(model, images, iters, step_ms):
    """Time every conv, norm and ReLU in isolation at its real input shape (as detlab's --profile)."""
    calls = []
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d, nn.InstanceNorm3d, nn.GroupNorm, nn.ReLU)):
            hooks.append(m.register_forward_hook(
                lambda mod, inp, out, name=name: calls.append((name, mod, inp[0].detach().clone()))))
    with torch.no_grad():
        model(images)
    for h in hooks:
        h.remove()
    ops = ["conv3d 3^3 (encoder)", "conv3d (U-FPN, heads)", "conv_transpose3d", "instance norm",
           "group norm", "ReLU"]
    table = [[0.0, 0.0] for _ in ops]
    layers = []
    for name, mod, x in calls:
        if isinstance(mod, nn.Conv3d):
            op = 0 if name.startswith("encoder") else 1
        elif isinstance(mod, nn.ConvTranspose3d):
            op = 2
        elif isinstance(mod, nn.InstanceNorm3d):
            op = 3
        elif isinstance(mod, nn.GroupNorm):
            op = 4
        else:
            op = 5
        f = F.relu if op == 5 else mod
        x = x.requires_grad_(True)
        r = torch.randn_like(f(x))
        fw, bw = [], []
        for _ in range(max(iters, 3) + 1):
            t0 = time.perf_counter()
            y = f(x)
            t1 = time.perf_counter()
            (y * r).sum().backward()
            t2 = time.perf_counter()
            x.grad = None
            mod.zero_grad(set_to_none=True)
            fw.append(t1 - t0)
            bw.append(t2 - t1)
        fw, bw = statistics.median(fw[1:]), statistics.median(bw[1:])
        table[op][0] += fw
        table[op][1] += bw
        layers.append((fw + bw, ops[op], f"{list(x.shape)} -> {list(r.shape)}", fw, bw))
    print("per-op time summed over the network's layers (isolated, same shapes, median):")
    print(f"{'op':<24} {'forward ms':>11} {'backward ms':>12} {'% step':>9}")
    tf = tb = 0.0
    for name, (fw, bw) in zip(ops, table):
        print(f"{name:<24} {fw * 1e3:11.1f} {bw * 1e3:12.1f} {(fw + bw) * 1e3 / step_ms * 100:8.1f}%")
        tf += fw
        tb += bw
    print(f"{'sum':<24} {tf * 1e3:11.1f} {tb * 1e3:12.1f} {(tf + tb) * 1e3 / step_ms * 100:8.1f}%")
    print("the 8 most expensive layers:")
    for _, op, shapes, fw, bw in sorted(layers, key=lambda l: -l[0])[:8]:
        print(f"  {op:<22} {shapes:<46} {fw * 1e3:8.1f} fwd {bw * 1e3:8.1f} bwd ms")


def cube_batch(patch, batch, device):
    """detlab bench train-step's batch: cubes a and b (alternating), given at 64^3, scaled."""
    images = torch.zeros(batch, 1, patch, patch, patch)
    seg_target = torch.zeros(batch, patch, patch, patch, dtype=torch.long)
    cubes = [((20, 12, 30), (10, 12, 9)), ((35, 40, 8), (14, 8, 12))]
    gts = []
    for i in range(batch):
        s, e = cubes[i % 2]
        s = tuple(a * patch // 64 for a in s)
        e = tuple(max(b * patch // 64, 2) for b in e)
        sl = tuple(slice(a, a + b) for a, b in zip(s, e))
        images[(i, 0) + sl] = 1.0
        seg_target[(i,) + sl] = 1
        gts.append(torch.tensor([[*s, *(a + b for a, b in zip(s, e))]], dtype=torch.float32, device=device))
    return images.to(device), gts, seg_target.to(device)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="bench")
    parser.add_argument("--encoder", choices=["retunet", "resenc"], default="retunet")
    parser.add_argument("--patch", type=int, default=0)
    parser.add_argument("--batch", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    patch = args.patch or PRESETS[args.preset][3]
    batch = args.batch or PRESETS[args.preset][4]
    model = RetinaUNet(args.preset, args.encoder).to(device)
    params = sum(p.numel() for p in model.parameters())
    images, gts, seg_target = cube_batch(patch, batch, device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=3e-5)
    gen = torch.Generator().manual_seed(0)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    t_loss, t_bwd, t_step, t_total = [], [], [], []
    for i in range(args.steps + 2):
        sync()
        t0 = time.perf_counter()
        loss = loss_fn(model, images, gts, seg_target, gen)
        value = loss.item()
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sync()
        t2 = time.perf_counter()
        opt.step()
        sync()
        t3 = time.perf_counter()
        assert value == value, "NaN loss"
        if i >= 2:
            t_loss.append(t1 - t0)
            t_bwd.append(t2 - t1)
            t_step.append(t3 - t2)
            t_total.append(t3 - t0)
    ms = lambda v: statistics.median(v) * 1e3
    print(f"PyTorch {torch.__version__} Retina U-Net twin ({args.encoder}, preset {args.preset}), {params} parameters; "
          f"batch {batch} x 1 x {patch}^3; device {device}; "
          f"{torch.get_num_threads()} thread(s); median of {args.steps} steps after 2 warm-up")
    print(f"loss (forward, ATSS, sampling, losses) {ms(t_loss):9.1f} ms")
    print(f"backward                               {ms(t_bwd):9.1f} ms")
    print(f"optimiser step                         {ms(t_step):9.1f} ms")
    print(f"training step                          {ms(t_total):9.1f} ms")
    print(f"peak RSS (ru_maxrss)                   {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:9.0f} MiB")
    if cuda:
        print(f"peak GPU memory (max allocated)        {torch.cuda.max_memory_allocated() / 2**20:9.0f} MiB")
    if args.profile:
        op_profile(model, images, args.steps, ms(t_total))


if __name__ == "__main__":
    main()
