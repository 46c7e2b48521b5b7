"""``python -m ops.worker --data-dir DIR``: the withdrawal scheduler process.

``conclave up`` starts one that owns every shard. More workers can split the
shards between them (``--shards 0,1``); each shard is a durable consumer, so a
restarted worker picks up where its predecessor stopped.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

import anyio

from engine.ceremony import tracing
from ops.deploy import Deployment
from ops.scheduler import SchedulerConfig, WithdrawalWorker


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="conclave-worker")
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--shards", help="comma-separated shard numbers this worker owns (default: all)")
    ap.add_argument("--name", default="worker", help="names its pid, log and ready files under <data dir>/worker/")
    args = ap.parse_args(argv)
    dep = Deployment(Path(args.data_dir))
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s {args.name} %(levelname)s %(name)s: %(message)s")
    tracing.install("conclave-worker")
    owned = tuple(int(s) for s in args.shards.split(",")) if args.shards else None
    worker = WithdrawalWorker(dep, SchedulerConfig.from_config(dep.config(), owned=owned))

    async def run() -> None:
        async with anyio.create_task_group() as tg:
            async def on_signals() -> None:
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for _ in signals:
                        worker.stop.set()
                        return

            async def mark_ready() -> None:
                await worker.ready.wait()
                dep.worker_ready_marker(args.name).write_text(str(os.getpid()))

            tg.start_soon(on_signals)
            tg.start_soon(mark_ready)
            await worker.run()
            tg.cancel_scope.cancel()

    anyio.run(run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
