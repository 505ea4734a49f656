"""Peak memory of preprocessing thin images, exact and fast mode.

Each measurement runs in a fresh interpreter (Linux): it imports cliprt, warms PIL's PNG
decoder on a small image, resets the kernel's peak-RSS mark (/proc/self/clear_refs), reads it
(the baseline), preprocesses one PNG for a 224 px spec and reads the peak again (VmHWM, what
getrusage's ru_maxrss reports for the process itself; ru_maxrss is not read directly because
a child's figure also carries its parent's peak across exec). The table gives the peak and
the peak above the baseline.

The PNGs are RGB (Pillow holds RGB at 4 bytes a pixel): 1 x 1,000,000, 1,000,000 x 1 and
1 x 16,000, with a repeating gradient so that they compress to a few KB. The last rows run
the 1 x 16,000 image with the window off (exact mode resizing the whole image, as the
reference transform does) for comparison; the 1 x 1,000,000 one would need about 50 GB.

    python benchmarks/image_memory.py
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

from _machine import cpu_name

CHILD = r"""
import importlib.machinery, json, os, resource, sys
root, path, mode, resize_mode, window = sys.argv[1:6]


class _SameTree:  # cliprt from the parent's tree, even where another copy is installed in development mode
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "cliprt" or name.startswith("cliprt."):
            return importlib.machinery.PathFinder.find_spec(name, path if path is not None else [root])
        return None


sys.meta_path.insert(0, _SameTree)
import io
import numpy as np
from PIL import Image
from cliprt import preprocess
from cliprt.models import ImageSpec
if window == "off":
    preprocess.WINDOW_PIXELS = 1 << 62
s = ImageSpec(size=(224, 224), resize_mode=resize_mode, resize_size=224, interpolation="bicubic",
              antialias=True, mean=(0.5,) * 3, std=(0.5,) * 3)
pre = preprocess.Preprocessor(s, mode=mode)
warm = io.BytesIO()
Image.new("RGB", (300, 200), (10, 20, 30)).save(warm, "PNG")
pre(warm.getvalue())
data = open(path, "rb").read()


def status_kb(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


# ru_maxrss of a child can carry its parent's peak across exec; on Linux the peak is reset
# here (clear_refs 5) and read back as VmHWM, so the figures are this process's own
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
base = status_kb("VmHWM")
out = pre(data)
peak = status_kb("VmHWM")
print(json.dumps({"file": preprocess.__file__, "base_kb": base, "peak_kb": peak,
                  "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "shape": list(out.shape), "finite": bool(np.isfinite(out).all())}))
"""


def thin_png(width: int, height: int) -> bytes:
    n = width * height
    ramp = (np.arange(n, dtype=np.int64) % 251).astype(np.uint8)
    a = np.stack([ramp, ramp[::-1], np.full(n, 128, np.uint8)], axis=-1).reshape(height, width, 3)
    buf = tempfile.SpooledTemporaryFile()
    Image.fromarray(a).save(buf, "PNG", optimize=True)
    buf.seek(0)
    return buf.read()


def measure(root: str, path: str, mode: str, resize_mode: str = "shortest", window: str = "on") -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, root, path, mode, resize_mode, window],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])




def main() -> None:
    import cliprt.preprocess

    pkg = os.path.dirname(os.path.abspath(cliprt.preprocess.__file__))
    root = os.path.dirname(pkg)
    cases = [("1 x 1,000,000", 1, 1_000_000), ("1,000,000 x 1", 1_000_000, 1), ("1 x 16,000", 1, 16_000)]
    rows = []
    with tempfile.TemporaryDirectory() as d:
        files = {}
        for name, w, h in cases:
            files[name] = os.path.join(d, f"{w}x{h}.png")
            with open(files[name], "wb") as f:
                data = thin_png(w, h)
                f.write(data)
            files[name + " size"] = len(data)
        runs = [(name, mode, "shortest", "on") for name, _, _ in cases for mode in ("exact", "fast")]
        runs += [(name, mode, "squash", "on") for name in ("1 x 1,000,000", "1,000,000 x 1") for mode in ("exact", "fast")]
        runs += [("1 x 16,000", "exact", "shortest", "off")]
        for name, mode, resize_mode, window in runs:
            r = measure(root, files[name], mode, resize_mode, window)
            assert r["file"].startswith(pkg) and r["finite"] and r["shape"] == [3, 224, 224], r
            rows.append((name, files[name + " size"], mode, resize_mode, window, r["peak_kb"], r["peak_kb"] - r["base_kb"]))
    print(f"CPU: {cpu_name()}; Python {sys.version.split()[0]}, Pillow {Image.__version__}, numpy {np.__version__}")
    print("spec: 224 px, bicubic; RGB PNGs; peak RSS (VmHWM, the process's own ru_maxrss) of a fresh interpreter, MiB\n")
    print("| image | PNG bytes | mode | resize | window | peak RSS | above baseline |")
    print("|---|---:|---|---|---|---:|---:|")
    for name, size, mode, resize_mode, window, peak, delta in rows:
        print(f"| {name} | {size:,} | {mode} | {resize_mode} | {window} | {peak / 1024:.1f} | {delta / 1024:.1f} |")


if __name__ == "__main__":
    main()
