"""PyTorch half of the peak-memory row: explain one image with VGG-16 and a TAME mechanism,
print the process's peak resident memory. Same files on both sides:

    python xtask/bench/explain_memory_pytorch.py VGG16.safetensors AM.safetensors IMAGE
    /usr/bin/time -v tame explain --model vgg16 --weights VGG16.safetensors --am AM.safetensors IMAGE

(the weights: any torchvision-named VGG-16 state dict saved as safetensors; the mechanism:
`AttentionMech` of xtask/fixtures/make_am_fixtures.py on the default taps, saved likewise).
"""
import os
import resource
import sys

import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms as T
from PIL import Image
from safetensors.torch import load_file

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "fixtures"))
from make_am_fixtures import AttentionMech  # noqa: E402

weights, am_file, image = sys.argv[1:4]
torch.set_num_threads(2)
net = torchvision.models.vgg16()
net.load_state_dict(load_file(weights))
net.eval()
am = AttentionMech("TAME", [(1, 256, 28, 28), (1, 512, 14, 14), (1, 512, 7, 7)])
am.load_state_dict(load_file(am_file))
am.eval()
feats = {}
modules = dict(net.named_modules())
for t in ["features.16", "features.23", "features.30"]:
    modules[t].register_forward_hook(lambda m, i, o, t=t: feats.__setitem__(t, o))
tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
x = tf(Image.open(image).convert("RGB"))[None]
with torch.inference_mode():
    k = int(net(x).argmax(1))
    _, c = am([feats[t] for t in ["features.16", "features.23", "features.30"]])
    e = c[0, k]
    e = (e - e.min()) / (e.max() - e.min())
    F.interpolate(e[None, None], size=(224, 224), mode="bilinear", align_corners=False)
print(f"class {k}; peak resident memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
