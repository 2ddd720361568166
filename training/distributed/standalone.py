"""One allreduce worker without Ray: `python -m training.distributed.standalone --spec FILE ...`.

It joins a gloo process group over TCP (`--master HOST:PORT`, rank 0 listens
there) and runs the same `worker.run_worker` loop Ray Train runs. The
distributed benchmark starts two of these inside a pair of network namespaces
joined by a rate-limited veth link, where Ray's own processes cannot follow;
set `GLOO_SOCKET_IFNAME` to the interface gloo should use. Epoch records are
printed as JSON lines on stdout; rank 0 writes the checkpoint as usual.
Parameter-server strategies need Ray's actors and are refused here.
"""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta
from pathlib import Path

import torch.distributed as dist

from training.distributed.worker import WorkerSpec, run_worker
from training.loop import EpochRecord


class _StdoutEnv:
    """`WorkerEnv` that prints rank 0's records; nothing asks it to stop."""

    def __init__(self, rank: int, world_size: int) -> None:
        self._rank, self._world = rank, world_size

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world

    @property
    def servers(self) -> None:
        return None

    def report(self, record: EpochRecord) -> None:
        print(record.model_dump_json(), flush=True)

    def stop_requested(self) -> bool:
        return False

    def finish(self, outcome: str) -> None:
        print(f'{{"outcome": "{outcome}"}}', flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, required=True, help="WorkerSpec JSON file.")
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world", type=int, required=True)
    parser.add_argument("--master", required=True, help="HOST:PORT where rank 0 listens.")
    parser.add_argument("--timeout-s", type=float, default=600.0, help="Collective timeout.")
    args = parser.parse_args(argv)
    spec = WorkerSpec.model_validate_json(args.spec.read_text())
    if spec.config.distributed is None or spec.config.distributed.strategy != "allreduce":
        print("error: the standalone launcher runs strategy allreduce only", file=sys.stderr)
        return 2
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://{args.master}",
        rank=args.rank,
        world_size=args.world,
        timeout=timedelta(seconds=args.timeout_s),
    )
    try:
        outcome = run_worker(spec, _StdoutEnv(args.rank, args.world))
        # Both ranks are done before either tears the group down: a rank that exited while the
        # other still used the store rank 0 hosts aborted once in CI ("terminate called without
        # an active exception", exit -6), as tests/integration/ddp_hook_driver.py once did.
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return 0 if outcome == "finished" else 1


if __name__ == "__main__":
    sys.exit(main())
