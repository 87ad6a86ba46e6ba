"""PyTorch half of `cargo run --release -p tame-ops --example bench_resnet_layers`: every
distinct convolution of ResNet-50's forward pass (batch 1 unless --batch; bias and ReLU, random weights),
with how often each occurs; medians of the runs after a warm-up.

    python xtask/bench/resnet_layers_pytorch.py --threads 2 [--runs 21] [--batch 1]
"""
import argparse
import time

import torch
import torch.nn.functional as F

# (name, occurrences, c_in, input size, c_out, kernel, stride, padding), as in the Rust half.
LAYERS = [
    ("conv1 7x7/2 3->64 @224", 1, 3, 224, 64, 7, 2, 3),
    ("layer1 1x1 64->64 @56", 1, 64, 56, 64, 1, 1, 0),
    ("layer1 1x1 256->64 @56", 2, 256, 56, 64, 1, 1, 0),
    ("layer1 3x3 64->64 @56", 3, 64, 56, 64, 3, 1, 1),
    ("layer1 1x1 64->256 @56", 4, 64, 56, 256, 1, 1, 0),
    ("layer2 1x1 256->128 @56", 1, 256, 56, 128, 1, 1, 0),
    ("layer2 3x3/2 128->128 @56", 1, 128, 56, 128, 3, 2, 1),
    ("layer2 1x1/2 256->512 @56", 1, 256, 56, 512, 1, 2, 0),
    ("layer2 1x1 512->128 @28", 3, 512, 28, 128, 1, 1, 0),
    ("layer2 3x3 128->128 @28", 3, 128, 28, 128, 3, 1, 1),
    ("layer2 1x1 128->512 @28", 4, 128, 28, 512, 1, 1, 0),
    ("layer3 1x1 512->256 @28", 1, 512, 28, 256, 1, 1, 0),
    ("layer3 3x3/2 256->256 @28", 1, 256, 28, 256, 3, 2, 1),
    ("layer3 1x1/2 512->1024 @28", 1, 512, 28, 1024, 1, 2, 0),
    ("layer3 3x3 256->256 @14", 5, 256, 14, 256, 3, 1, 1),
    ("layer3 1x1 1024->256 @14", 5, 1024, 14, 256, 1, 1, 0),
    ("layer3 1x1 256->1024 @14", 6, 256, 14, 1024, 1, 1, 0),
    ("layer4 1x1 1024->512 @14", 1, 1024, 14, 512, 1, 1, 0),
    ("layer4 3x3/2 512->512 @14", 1, 512, 14, 512, 3, 2, 1),
    ("layer4 1x1/2 1024->2048 @14", 1, 1024, 14, 2048, 1, 2, 0),
    ("layer4 3x3 512->512 @7", 2, 512, 7, 512, 3, 1, 1),
    ("layer4 1x1 2048->512 @7", 2, 2048, 7, 512, 1, 1, 0),
    ("layer4 1x1 512->2048 @7", 3, 512, 7, 2048, 1, 1, 0),
]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads: {args.threads}")
    print("| convolution | count | ms | GFLOP/s | count x ms |")
    print("|---|---:|---:|---:|---:|")
    total = 0.0
    with torch.no_grad():
        for name, count, c, size, o, k, s, p in LAYERS:
            x = torch.randn(args.batch, c, size, size)
            w = torch.randn(o, c, k, k) * 0.05
            b = torch.zeros(o)
            F.relu(F.conv2d(x, w, b, s, p))
            times = []
            for _ in range(args.runs):
                start = time.perf_counter()
                F.relu(F.conv2d(x, w, b, s, p))
                times.append((time.perf_counter() - start) * 1e3)
            ms = sorted(times)[len(times) // 2]
            out = (size + 2 * p - k) // s + 1
            gflop = 2 * args.batch * o * c * k * k * out * out / 1e9
            total += ms * count
            print(f"| {name} | {count} | {ms:.3f} | {gflop / ms * 1e3:.0f} | {ms * count:.2f} |")
    print(f"| all convolutions | 53 | | | {total:.1f} |")


if __name__ == "__main__":
    main()
