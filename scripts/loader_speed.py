"""Images/s of DeviceLoader at a given size with default augmentation on the CPU (2 threads).

    python scripts/loader_speed.py CHECKOUT_DIR SIZE   # CHECKOUT_DIR: the inat-tune checkout to import
"""
import sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np, torch
from inat_tune.data.loader import DeviceLoader, Augment, to_device
torch.set_num_threads(2)
S = int(sys.argv[2])
x, y = to_device(np.random.default_rng(0).integers(0, 256, (512, S, S, 3), dtype=np.uint8), np.arange(512) % 10, "cpu")
dl = DeviceLoader(x, y, 64, shuffle=True, augment=Augment(), seed=0)
best = 0
for rep in range(4):
    dl.set_epoch(rep); t = time.perf_counter(); n = 0
    for xb, yb in dl: n += len(yb)
    best = max(best, n / (time.perf_counter() - t))
print(sys.argv[1], S, f"{best:.0f} img/s")
