"""``python -m autograd_lens``: the ``lens`` command line, e.g. as torchrun's python mode calls it
(``torchrun --nproc_per_node=2 -m autograd_lens trace train.py --epochs 1``)."""

from __future__ import annotations

from autograd_lens.cli.main import run

if __name__ == "__main__":
    run()
