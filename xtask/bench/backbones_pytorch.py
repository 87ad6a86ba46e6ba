"""PyTorch half of `cargo xtask bench backbones`: the same measurements with torchvision.

    python xtask/bench/backbones_pytorch.py --threads 2 --runs 5
"""
import argparse
import statistics
import time

import torch
import torchvision

p = argparse.ArgumentParser()
p.add_argument("--threads", type=int, default=2)
p.add_argument("--runs", type=int, default=5)
p.add_argument("--model", choices=["vgg16", "resnet50"], help="only this backbone")
args = p.parse_args()
torch.set_num_threads(args.threads)
print(f"torch {torch.__version__}, threads: {torch.get_num_threads()}")
print("model     batch  median s/batch  best s/batch  images/s")
for name in [args.model] if args.model else ["vgg16", "resnet50"]:
    net = getattr(torchvision.models, name)(weights=None).eval()
    for batch in [1, 8]:
        x = torch.rand(batch, 3, 224, 224)
        times = []
        with torch.inference_mode():
            net(x)  # warm-up
            for _ in range(args.runs):
                t = time.perf_counter()
                net(x)
                times.append(time.perf_counter() - t)
        s = statistics.median(times)
        print(f"{name:<9} {batch:>5}  {s:>14.3f}  {min(times):>12.3f}  {batch / s:>8.2f}")
