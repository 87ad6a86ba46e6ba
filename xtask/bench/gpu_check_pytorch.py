"""PyTorch half of `cargo xtask gpu-check`: its benchmarks on the reference side, on one device.

torchvision VGG-16 / ResNet-50 with random weights and the reference attention mechanism
(xtask/fixtures/make_am_fixtures.py, version TAME) on the default taps, per backbone: the
explanation of each image's top class at each `--explain-batches` size (one pass with taps, the
class maps min-max normalised, upsampled to 224x224 and copied to the host); one training step
at `--batch` (the reference loop of TAME-SPEC section 4, SGD-Nesterov; ResNet-50 in train mode,
VGG-16 in eval mode as on the tame side, whose GPU dropout draws are not the CPU's);
AD/IC of `--batch` images at the three keep levels (TAME-SPEC section 6). Each figure is the
median and best of `--runs` timed runs after a warm-up, the device synchronised after each.
TF32 is off (PyTorch's default allows it in cuDNN convolutions): both sides compute in f32.

Prints one JSON object on stdout (progress goes to stderr); when torch cannot run on the
device, {"error": "..."} and exit status 2.

    python3 xtask/bench/gpu_check_pytorch.py --device cuda:0 --explain-batches 1,32 --batch 32
"""
import argparse
import json
import math
import os
import statistics
import sys
import time


def fail(message):
    print(json.dumps({"error": message}), flush=True)
    sys.exit(2)


try:
    import torch
    import torch.nn.functional as F
    import torchvision

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures"))
    from make_am_fixtures import AttentionMech  # noqa: E402
except ImportError as e:
    fail(f"cannot import torch, torchvision and numpy ({e})")

TAPS = {"vgg16": ["features.16", "features.23", "features.30"],
        "resnet50": ["layer2", "layer3", "layer4"]}
LEVELS = [1.0, 0.5, 0.15]
SIDE = 224

p = argparse.ArgumentParser()
p.add_argument("--device", default="cuda", help="cpu, cuda or cuda:N")
p.add_argument("--models", default="vgg16,resnet50", help="comma-separated backbones")
p.add_argument("--explain-batches", default="1,32", help="comma-separated batch sizes")
p.add_argument("--batch", type=int, default=32, help="batch of the training step and AD/IC")
p.add_argument("--runs", type=int, default=5)
p.add_argument("--threads", type=int, default=os.cpu_count())
args = p.parse_args()

try:
    dev = torch.device(args.device)
except RuntimeError as e:
    fail(f"unknown device {args.device!r} ({e})")
cuda = dev.type == "cuda"
if cuda:
    if not torch.cuda.is_available():
        fail(f"torch {torch.__version__} sees no CUDA device (torch.version.cuda = {torch.version.cuda})")
    if (dev.index or 0) >= torch.cuda.device_count():
        fail(f"no {args.device}: torch sees {torch.cuda.device_count()} CUDA device(s)")
    torch.cuda.set_device(dev)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
torch.set_num_threads(args.threads)
models = [m for m in args.models.split(",") if m]
for m in models:
    if m not in TAPS:
        fail(f"unknown model {m!r} (expected {', '.join(TAPS)})")

MEAN = torch.tensor([0.485, 0.456, 0.406], device=dev).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225], device=dev).view(1, 3, 1, 1)
generator = torch.Generator().manual_seed(0)


def progress(message):
    print(message, file=sys.stderr, flush=True)


def sync():
    if cuda:
        torch.cuda.synchronize(dev)


def measure(f):
    """Median and best seconds of the timed runs; on CUDA the peak memory of all of them."""
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    f()
    sync()
    times = []
    for _ in range(args.runs):
        t = time.perf_counter()
        f()
        sync()
        times.append(time.perf_counter() - t)
    out = {"median_s": statistics.median(times), "best_s": min(times)}
    if cuda:
        out["peak_allocated_bytes"] = torch.cuda.max_memory_allocated(dev)
        out["peak_reserved_bytes"] = torch.cuda.max_memory_reserved(dev)
    return out


def images(batch):
    return torch.rand(batch, 3, SIDE, SIDE, generator=generator).to(dev)


def keep(e, f):
    """The reference's keep-fraction mask of one map (TAME-SPEC section 6)."""
    flat = e.flatten().clone()
    n = flat.numel()
    if f < 1:
        v = torch.kthvalue(flat, int(math.floor(n * (1 - f)))).values
        flat[flat < v] = 0
        j = int((flat != 0).sum()) - math.ceil(f * n)
        if j >= 1:
            flat[(flat == v).nonzero().flatten()[:j]] = 0
    return flat.reshape(e.shape)


def normalised(c, k):
    """The maps c[i, k[i]] min-max normalised and upsampled to SIDE x SIDE: (B, SIDE, SIDE)."""
    b = c.shape[0]
    e = c[torch.arange(b, device=dev), k]
    lo = e.flatten(1).min(1).values.view(b, 1, 1)
    hi = e.flatten(1).max(1).values.view(b, 1, 1)
    e = (e - lo) / (hi - lo)
    return F.interpolate(e[:, None], size=(SIDE, SIDE), mode="bilinear", align_corners=False)[:, 0]


results = []


def record(model, work, batch, secs):
    results.append({"model": model, "work": work, "batch": batch, **secs})
    progress(f"pytorch {model} {work} batch {batch}: {secs['median_s']:.4f} s median, "
             f"{batch / secs['median_s']:.1f} images/s")


for name in models:
    taps = TAPS[name]
    net = getattr(torchvision.models, name)(weights=None).to(dev).eval()
    for q in net.parameters():
        q.requires_grad_(False)
    feats = {}
    modules = dict(net.named_modules())
    for t in taps:
        modules[t].register_forward_hook(lambda m, i, o, t=t: feats.__setitem__(t, o))
    with torch.no_grad():
        net((images(1) - MEAN) / STD)
    am = AttentionMech("TAME", [tuple(feats[t].shape) for t in taps]).to(dev).eval()

    for b in [int(s) for s in args.explain_batches.split(",") if s]:
        x = images(b)

        def explain():
            with torch.inference_mode():
                k = net((x - MEAN) / STD).argmax(1)
                _, c = am([feats[t] for t in taps])
                normalised(c, k).cpu()
        record(name, "explain", b, measure(explain))

    b = args.batch
    x = images(b)
    am.train()
    weights = [q for n, q in am.named_parameters() if "weight" in n]
    biases = [q for n, q in am.named_parameters() if "bias" in n]
    opt = torch.optim.SGD([{"params": weights, "weight_decay": 5e-4}, {"params": biases}],
                          lr=1e-4, momentum=0.9, nesterov=True)
    y = torch.tensor([(100 * i + 7) % 1000 for i in range(b)], device=dev)

    def train_step():
        net.train(name != "vgg16")
        net((x - MEAN) / STD)
        a, _ = am([feats[t] for t in taps])
        own = a[torch.arange(b, device=dev), y].unsqueeze(1)
        up = F.interpolate(own, size=(SIDE, SIDE), mode="bilinear", align_corners=False)
        z = net((up * x - MEAN) / STD)
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
        loss.item()
    record(name, "train", b, measure(train_step))

    net.eval()
    am.eval()

    def ad_ic():
        with torch.inference_mode():
            probs = net((x - MEAN) / STD).softmax(1)
            k = probs.argmax(1)
            _, c = am([feats[t] for t in taps])
            e = normalised(c, k)
            rows = torch.arange(b, device=dev)
            for f in LEVELS:
                masks = torch.stack([keep(e[i], f) for i in range(b)])
                net((x * masks[:, None] - MEAN) / STD).softmax(1)[rows, k].cpu()
    record(name, "ad-ic", b, measure(ad_ic))
    del net, am, opt, feats

print(json.dumps({
    "torch": torch.__version__,
    "torchvision": torchvision.__version__,
    "device": torch.cuda.get_device_name(dev) if cuda else "cpu",
    "threads": torch.get_num_threads(),
    "tf32": False,
    "runs": args.runs,
    "results": results,
}), flush=True)
