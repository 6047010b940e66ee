"""vaelab: variational autoencoders on MNIST, one module per job (README.md, Layout)."""

import os

# MKL's strict conditional numerical reproducibility: its matrix products give the same bits
# whatever the thread count, and vaelab's thread count follows the processes sharing the cores
# (vaelab/device.py), so without it a run's figures would depend on the machine's load. MKL reads
# the variable at its first call, which comes after any import of vaelab. A value already set wins.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
