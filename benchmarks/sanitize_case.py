"""A small CUDA workload for compute-sanitizer: every reduction, dtype and label dtype,
valid and out-of-range labels, both kernel paths (vectorised and strided); SLIC in every
mode, cold and warm, with and without connectivity, masked, subsampled.

    compute-sanitizer --tool memcheck python benchmarks/sanitize_case.py
"""

import torch

import gswfast as gsw
from gswfast.testing import grid_labels

for label_dtype in (torch.int32, torch.int64):
    labels, k = grid_labels(2, 3, 20, 28, cell=5, device="cuda", dtype=label_dtype)
    bad = labels.clone()
    bad[0, 1, 2, 3] = k + 5
    bad[1, 0, 0, 0] = -7
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        values = torch.randn(2, 3, 3, 20, 28, device="cuda", dtype=dtype)
        strided = values.to(memory_format=torch.channels_last_3d)
        for reduce in ("sum", "mean", "max", "min", "count"):
            gsw.segment_pool(values, labels, k, reduce)
            gsw.segment_pool(strided, labels, k, reduce)
            try:
                gsw.segment_pool(values, bad, k, reduce)
                raise SystemExit("out-of-range labels were not reported")
            except ValueError:
                pass
        gsw.paint(torch.randn(2, 3, k, device="cuda", dtype=dtype), labels)
        try:
            gsw.paint(torch.randn(2, 3, k, device="cuda", dtype=dtype), bad)
            raise SystemExit("out-of-range labels were not reported by paint")
        except ValueError:
            pass
images = torch.rand(2, 3, 6, 40, 52, device="cuda")
for mode in ("per_frame", "volume"):
    for connectivity in (True, False):
        seg = gsw.slic(images, 30, mode=mode, enforce_connectivity=connectivity)
        gsw.slic(images, 30, mode=mode, enforce_connectivity=connectivity, init=seg)
frames = images[:, :, 0]
mask = torch.zeros(2, 40, 52, dtype=torch.bool, device="cuda")
mask[:, 5:33, 8:47] = True
gsw.slic(frames, 25, mask=mask)
gsw.slic(frames, 25, subsample=3, tol=0.01)
gsw.slic(images, 30, mode="volume", subsample=2, min_size_factor=0.5)
seg = gsw.slic((images[:, :, 0] * 255).to(torch.uint8), 25)
gsw.slic(images[:, :, 0], 25, init=seg, max_iter=3)
gsw.slic(images[:, :2, 0].double(), 25)
torch.cuda.synchronize()
print("sanitize_case: ok")
