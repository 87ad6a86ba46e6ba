#!/usr/bin/env python3
"""The PyTorch counterpart of `crates/tame-data/examples/bench_decode.rs`.

    python xtask/bench/data_pytorch.py [WORKERS] [ROUNDS] [NAME_PART] [DIR]

Decode + Resize(256) + crop + ToTensor with PIL and torchvision on the images of DIR (default:
the committed test photos), ROUNDS times over (only those whose name contains NAME_PART, if
given): one process calling the transforms directly, then a DataLoader
(batches of 32, WORKERS worker processes) with the evaluation and training transforms.
"""

import sys
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

SAMPLES = Path(__file__).resolve().parents[2] / "tests" / "photos"

EVAL = transforms.Compose(
    [transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()]
)
TRAIN = transforms.Compose(
    [
        transforms.Resize(256),
        transforms.RandomCrop(224),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
    ]
)


class Images(Dataset):
    def __init__(self, paths, transform):
        self.paths, self.transform = paths, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        with Image.open(self.paths[i]) as im:
            return self.transform(im.convert("RGB")), 0


def report(what, images, start):
    print(f"{what:<32} {images / (time.perf_counter() - start):>8.0f} images/s")


def main():
    workers = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    name_part = sys.argv[3] if len(sys.argv) > 3 else ""
    torch.set_num_threads(1)
    folder = Path(sys.argv[4]) if len(sys.argv) > 4 else SAMPLES
    names = sorted(
        p
        for p in folder.iterdir()
        if name_part in p.name and p.suffix.lower() in (".jpg", ".jpeg", ".png")
    )
    paths = names * rounds
    print(f"{len(names)} sample images x {rounds} rounds = {len(paths)} images")

    for label, tf in [("eval", EVAL), ("train", TRAIN)]:
        start = time.perf_counter()
        for p in paths:
            with Image.open(p) as im:
                tf(im.convert("RGB"))
        report(f"1 process, {label} transform", len(paths), start)

    for label, tf in [("eval", EVAL), ("train", TRAIN)]:
        loader = DataLoader(
            Images(paths, tf), batch_size=32, shuffle=label == "train", num_workers=workers
        )
        start = time.perf_counter()
        seen = sum(len(y) for _, y in loader)
        report(f"DataLoader, {workers} workers, {label}", seen, start)


if __name__ == "__main__":
    main()
