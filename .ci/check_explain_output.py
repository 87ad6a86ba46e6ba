"""Checks what `tame explain` printed, as a user reads it.

    python3 .ci/check_explain_output.py OUTPUT_TXT CLASS [SIZE]

OUTPUT_TXT is the command's standard output, read in the folder it ran in. Checks that the
top-1 class printed first is CLASS, and that every file the output names exists: each `.png`
decodes (chunk CRCs, complete zlib stream, as many bytes as its header's size asks) to
SIZE x SIZE pixels (default 224), each `.npy` holds a SIZE x SIZE float32 array. Standard
library only: CI runs it before any Python package is installed.
"""

import ast
import re
import struct
import sys
import zlib
from pathlib import Path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # PNG colour type -> samples per pixel


def png_size(path: Path) -> tuple:
    data = path.read_bytes()
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError(f"not a PNG file")
    pos, header, idat = len(PNG_SIGNATURE), None, b""
    while pos + 12 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        if pos + 12 + length > len(data):
            raise ValueError("truncated")
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        if zlib.crc32(kind + body) != crc:
            raise ValueError(f"bad CRC in chunk {kind!r}")
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
        pos += 12 + length
    else:
        raise ValueError("no IEND chunk (truncated)")
    if header is None:
        raise ValueError(f"no IHDR chunk")
    width, height, depth, colour, _, _, interlace = header
    if interlace:
        raise ValueError(f"interlaced (tame never writes that)")
    stride = (width * CHANNELS[colour] * depth + 7) // 8
    decoder = zlib.decompressobj()
    raw = decoder.decompress(idat)
    if not decoder.eof or len(raw) != height * (1 + stride):
        raise ValueError(f"image data does not fill {width}x{height}")
    return width, height


def npy_shape(path: Path) -> tuple:
    data = path.read_bytes()
    if not data.startswith(b"\x93NUMPY"):
        raise ValueError(f"not a .npy file")
    (header_len,) = struct.unpack("<H", data[8:10])
    header = ast.literal_eval(data[10 : 10 + header_len].decode("latin1"))
    if header["descr"] != "<f4":
        raise ValueError(f"dtype {header['descr']}, not float32")
    shape = header["shape"]
    count = 1
    for d in shape:
        count *= d
    if len(data) - 10 - header_len != 4 * count:
        raise ValueError(f"{len(data)} bytes do not hold {shape} float32 values")
    return shape


def main() -> int:
    output, want_class = Path(sys.argv[1]), sys.argv[2]
    size = int(sys.argv[3]) if len(sys.argv) > 3 else 224
    text = output.read_text()
    print(text, end="")
    top = re.search(r"top-5: (\d+) ", text)
    if not top or top.group(1) != want_class:
        raise SystemExit(f"top-1 class: expected {want_class}, got {top and top.group(1)}")
    named = re.findall(r"(\S+\.(?:png|npy))\b", text)
    if not any(f.endswith("_mask.png") for f in named):
        raise SystemExit("the output names no overlay (*_mask.png)")
    for name in named:
        path = Path(name)
        if not path.is_file():
            raise SystemExit(f"{name}: named in the output but not written")
        try:
            got = png_size(path) if name.endswith(".png") else npy_shape(path)
        except (ValueError, KeyError, SyntaxError) as e:
            raise SystemExit(f"{name}: {e}")
        if tuple(got) != (size, size):
            raise SystemExit(f"{name}: {got[0]}x{got[1]}, expected {size}x{size}")
        print(f"ok: {name}")
    print(f"ok: top-1 class {want_class}, {len(named)} files checked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
