import os

# Before torch is imported (DESIGN.md §6): OpenMP's spin-wait makes small CPU workloads erratic.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))
