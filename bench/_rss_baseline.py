"""What a torchrun/gloo worker holds before any model exists: torch and torch.export imported,
the process group up. bench_accuracy subtracts this from each rank's peak RSS."""

import os
import time

import torch
import torch.distributed as dist
import torch.export
from torch.distributed.pipelining import PipelineStage  # noqa: F401

dist.init_process_group("gloo")
x = torch.ones(1)
dist.all_reduce(x)
dist.barrier()
time.sleep(0.5)  # let the poller see this peak
dist.destroy_process_group()
print(os.environ.get("RANK"), flush=True)
