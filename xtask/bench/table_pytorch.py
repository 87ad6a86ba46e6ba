"""PyTorch half of `cargo xtask bench table`: the same work on the reference side.

torchvision VGG-16 / ResNet-50 with random weights and the reference attention mechanism
(xtask/fixtures/make_am_fixtures.py, version TAME) on the default taps; per backbone the
median and best seconds of: forward at batch 1; explanation of the top class at batch 1 (one
pass with taps, the class map min-max normalised and upsampled to 224x224); one training step
at batch 8 (the reference loop of TAME-SPEC section 4, backbone in train mode, SGD-Nesterov);
AD/IC of one image at the three keep levels (TAME-SPEC section 6).

    python xtask/bench/table_pytorch.py --threads 2 --runs 5 [--model resnet50] [--work train]
"""
import argparse
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
import torchvision

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "fixtures"))
from make_am_fixtures import AttentionMech  # noqa: E402

TAPS = {"vgg16": ["features.16", "features.23", "features.30"],
        "resnet50": ["layer2", "layer3", "layer4"]}
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
LEVELS = [1.0, 0.5, 0.15]

p = argparse.ArgumentParser()
p.add_argument("--threads", type=int, default=2)
p.add_argument("--runs", type=int, default=5)
p.add_argument("--model", choices=list(TAPS), help="only this backbone")
p.add_argument("--work", choices=["forward", "explain", "train", "ad-ic"], help="only this row")
args = p.parse_args()
torch.set_num_threads(args.threads)


def median_seconds(f):
    f()
    times = []
    for _ in range(args.runs):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return statistics.median(times), min(times)


def keep(e, f):
    flat = e.flatten().clone()
    n = flat.numel()
    if f < 1:
        v = torch.kthvalue(flat, int(math.floor(n * (1 - f)))).values
        flat[flat < v] = 0
        j = int((flat != 0).sum()) - math.ceil(f * n)
        if j >= 1:
            flat[(flat == v).nonzero().flatten()[:j]] = 0
    return flat.reshape(e.shape)


def wants(work):
    return args.work in (None, work)


def report(model, work, secs):
    median, best = secs
    print(f"{model:<9} {work:<29} {median:>8.3f}  {best:>8.3f}", flush=True)


print(f"torch {torch.__version__}, threads: {torch.get_num_threads()}")
print("model     work                          median s    best s")
for name, taps in TAPS.items():
    if args.model and name != args.model:
        continue
    net = getattr(torchvision.models, name)(weights=None).eval()
    for q in net.parameters():
        q.requires_grad_(False)
    feats = {}
    modules = dict(net.named_modules())
    for t in taps:
        modules[t].register_forward_hook(lambda m, i, o, t=t: feats.__setitem__(t, o))
    one = torch.rand(1, 3, 224, 224)

    def forward():
        with torch.inference_mode():
            net((one - MEAN) / STD)
    if wants("forward"):
        report(name, "forward, batch 1", median_seconds(forward))

    with torch.no_grad():
        net((one - MEAN) / STD)
    am = AttentionMech("TAME", [tuple(feats[t].shape) for t in taps]).eval()

    def explain():
        with torch.inference_mode():
            k = int(net((one - MEAN) / STD).argmax(1))
            _, c = am([feats[t] for t in taps])
            e = c[0, k]
            e = (e - e.min()) / (e.max() - e.min())
            F.interpolate(e[None, None], size=(224, 224), mode="bilinear", align_corners=False)
    if wants("explain"):
        report(name, "explain, batch 1, one class", median_seconds(explain))

    am.train()
    weights = [q for n, q in am.named_parameters() if "weight" in n]
    biases = [q for n, q in am.named_parameters() if "bias" in n]
    opt = torch.optim.SGD([{"params": weights, "weight_decay": 5e-4}, {"params": biases}],
                          lr=1e-4, momentum=0.9, nesterov=True)
    eight = torch.rand(8, 3, 224, 224)
    y = torch.tensor([100 * i + 7 for i in range(8)])

    def train_step():
        net.train()
        net((eight - MEAN) / STD)
        a, _ = am([feats[t] for t in taps])
        own = a[torch.arange(8), y].unsqueeze(1)
        up = F.interpolate(own, size=(224, 224), mode="bilinear", align_corners=False)
        z = net((up * eight - MEAN) / STD)
        masks = a[:, y, :, :]
        area = torch.mean((masks + 0.0005) ** 0.3)
        dx = torch.sum(torch.abs(masks[:, :, 1:, :] - masks[:, :, :-1, :]) ** 2)
        dy = torch.sum(torch.abs(masks[:, :, :, 1:] - masks[:, :, :, :-1]) ** 2)
        border = 0.3 * torch.sum(masks[:, :, -1, :] ** 2 + masks[:, :, 0, :] ** 2
                                 + masks[:, :, :, -1] ** 2 + masks[:, :, :, 0] ** 2)
        loss = 1.5 * F.cross_entropy(z, y) + 2 * area + 0.01 * (dx + dy + border) / 16
        opt.zero_grad()
        loss.backward()
        opt.step()
    if wants("train"):
        secs = median_seconds(train_step)
        report(name, "training step, batch 8", secs)
        print(f"{'':<9} {'  (images/s)':<29} {8 / secs[0]:>8.2f}")

    net.eval()
    am.eval()

    def ad_ic():
        with torch.inference_mode():
            probs = net((one - MEAN) / STD).softmax(1)[0]
            k = int(probs.argmax())
            _, c = am([feats[t] for t in taps])
            e = c[0, k]
            e = (e - e.min()) / (e.max() - e.min())
            e = F.interpolate(e[None, None], size=(224, 224), mode="bilinear", align_corners=False)
            for f in LEVELS:
                net((one * keep(e[0, 0], f)[None, None] - MEAN) / STD).softmax(1)[0, k]
    if wants("ad-ic"):
        report(name, "AD/IC, one image, 3 levels", median_seconds(ad_ic))
