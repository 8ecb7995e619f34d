"""`nerveseg` under torchrun, recording whether DistributedDataParallel wrapped the model.

bench_cuda.py launches ``python -m torch.distributed.run ... benchmarks/ddp_probe.py train ...``
where a user would launch ``-m nerveseg_cli train ...``. This script wraps two torch functions
without changing what they do or their signatures: ``torch.distributed.init_process_group``
(the backend asked for) and ``DistributedDataParallel.__init__`` (the process group's backend,
world size and the device ids DDP was built with); then it runs nerveseg's command line
unchanged. At exit each process appends one JSON line to the file named by $DDP_PROBE_OUT,
with ``"ddp": false`` when the trainer never built DDP (as it did not at world size 1 before
issue 25), so the benchmark row can say what ran instead of what was asked for.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import runpy
import sys
from typing import Any

import torch.distributed
from torch.nn.parallel import DistributedDataParallel

SEEN: dict[str, Any] = {"ddp": False, "init_backend": None}


def _wrap_init_process_group() -> None:
    original = torch.distributed.init_process_group

    @functools.wraps(original)  # keeps its signature: the trainer inspects it for device_id
    def init_process_group(*args: Any, **kwargs: Any) -> Any:
        SEEN["init_backend"] = str(kwargs.get("backend", args[0] if args else None))
        return original(*args, **kwargs)

    torch.distributed.init_process_group = init_process_group


def _wrap_ddp() -> None:
    original = DistributedDataParallel.__init__

    @functools.wraps(original)
    def init(self: DistributedDataParallel, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        SEEN.update(ddp=True, backend=str(torch.distributed.get_backend()),
                    world=torch.distributed.get_world_size(),
                    device_ids=[str(d) for d in (self.device_ids or [])])

    DistributedDataParallel.__init__ = init


def _write() -> None:
    path = os.environ.get("DDP_PROBE_OUT")
    if not path:
        return
    record = {"rank": os.environ.get("RANK"), "env_world_size": os.environ.get("WORLD_SIZE"),
              "torchelastic": "TORCHELASTIC_RUN_ID" in os.environ, **SEEN}
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def main() -> None:
    _wrap_init_process_group()
    _wrap_ddp()
    atexit.register(_write)
    sys.argv = ["nerveseg", *sys.argv[1:]]
    runpy.run_module("nerveseg_cli", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
