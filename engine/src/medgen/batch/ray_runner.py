"""The Ray runner: one RowWorker actor per GPU (or per CPU slot on a cluster without GPUs), each
loading the model once; rows handed out one at a time to whichever actor is free.

Outputs go straight to the run's folder, so on a multi-node cluster that folder must be on a path
every node shares. A row whose actor died is handed out again (the actor is restarted by Ray and
reloads the model); so is a row that failed with an unexpected error, up to --max-retries times.
Every worker gets the run's worker options, --batch-invariant included, so a row's files are those of
a local run in either mode (the same bytes with it, the same images within float rounding without).
"""

from __future__ import annotations

import logging
import time
from collections import deque

from medgen.batch.local import FinishedCallback
from medgen.batch.manifest import BatchRow
from medgen.batch.worker import RowOutcome, RowWorker, should_retry
from medgen.errors import InputError

logger = logging.getLogger(__name__)

AUTO = "auto"
LOCAL_CPU_SLOTS = 2
"""CPU slots of the Ray instance that `--ray auto` starts when none is running (its GPUs are all used)."""
RESTART_POLL_S = 1.0
"""How long to wait before asking again whether a lost actor has been restarted."""


def connect(address: str) -> bool:
    """Connect this process to Ray; True when it did so itself (and so must disconnect at the end).

    ``auto``: the running instance (RAY_ADDRESS, or one started with `ray start` on this machine),
    else a new local one on loopback without a dashboard.
    """
    try:
        import ray
    except ImportError:
        raise InputError(None, "--ray needs Ray, which is not installed here: pip install 'medgen[ray]'") from None

    if ray.is_initialized():
        return False
    try:
        if address == AUTO:
            try:
                ray.init(address=AUTO, log_to_driver=False)
            except ConnectionError:
                ray.init(
                    num_cpus=LOCAL_CPU_SLOTS, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False
                )
        else:
            ray.init(address=address, log_to_driver=False)
    except ConnectionError as error:
        raise InputError(None, f"--ray {address}: cannot reach the Ray cluster: {error}") from None
    return True


class RayRunner:
    """Hands rows to RowWorker actors; same outcomes and callback as the LocalRunner."""

    def __init__(self, address: str, worker_options: dict, *, max_retries: int, gpus_per_task: float = 1.0):
        if not gpus_per_task > 0:
            raise InputError(None, f"--gpus-per-task must be > 0, got {gpus_per_task}")
        self.address = address
        self.worker_options = worker_options
        self.max_retries = max_retries
        self.gpus_per_task = gpus_per_task
        self.actors: list = []
        self._disconnect = False
        self.description = f"Ray cluster {address}"

    @property
    def workers(self) -> int:
        return len(self.actors)

    def start(self) -> None:
        import ray

        self._disconnect = connect(self.address)
        resources = ray.cluster_resources()
        gpus, cpus = resources.get("GPU", 0.0), resources.get("CPU", 0.0)
        if gpus >= self.gpus_per_task:
            count, slot = int(gpus // self.gpus_per_task), {"num_gpus": self.gpus_per_task, "num_cpus": 1}
            kind = f"{self.gpus_per_task:g} GPU"
        else:
            count, slot = int(cpus), {"num_cpus": 1}
            kind = "1 CPU slot"
        if count < 1:
            raise InputError(None, f"--ray {self.address}: the cluster has no free GPU or CPU slot ({resources})")
        # max_restarts=-1: a lost actor comes back (and reloads the model); its row is handed out by us
        actor_class = ray.remote(RowWorker).options(max_restarts=-1, max_task_retries=0, **slot)
        self.actors = [actor_class.remote(**self.worker_options) for _ in range(count)]
        self.description = f"Ray cluster {self.address}: {count} workers of {kind} each"
        if self.worker_options.get("batch_invariant"):
            self.description += ", batch-invariant"
        errors = [e for e in ray.get([actor.load.remote() for actor in self.actors]) if e]
        if errors:
            raise InputError(None, errors[0])

    def worker_pids(self) -> list[int]:
        import ray

        return ray.get([actor.pid.remote() for actor in self.actors])

    def run(self, rows: list[BatchRow], on_finished: FinishedCallback) -> None:
        import ray
        from ray.exceptions import RayActorError, RayError

        pending = deque(rows)
        attempts: dict[str, int] = {}
        first_handed_out: dict[str, float] = {}
        idle = list(self.actors)
        in_flight: dict = {}  # object ref of a row -> (actor, row)
        restarting: dict = {}  # object ref of a model load -> actor: a lost actor gets rows again once loaded

        def hand_out() -> None:
            while idle and pending:
                actor, row = idle.pop(), pending.popleft()
                attempts[row.id] = attempts.get(row.id, 0) + 1
                first_handed_out.setdefault(row.id, time.perf_counter())
                in_flight[actor.run.remote(row)] = (actor, row)

        while pending or in_flight:
            # 1. Every free actor gets the next row
            hand_out()
            if not in_flight and not restarting:
                raise RuntimeError("every Ray worker was lost and none could load the model again")
            # 2. Wait for a row's result or a restarted actor's model load
            [ref], _ = ray.wait(list(in_flight) + list(restarting), num_returns=1)
            if ref in restarting:
                self._restarted(ref, restarting, idle)
                continue
            actor, row = in_flight.pop(ref)
            try:
                outcome = ray.get(ref)
                idle.append(actor)
            except RayActorError as error:
                outcome = RowOutcome.lost(row.id, f"worker lost: {type(error).__name__}: {error}")
                logger.warning("row %s: its worker was lost; the row is handed out again", row.id)
                restarting[actor.load.remote()] = actor  # Ray restarts the actor; it reloads the model
            except RayError as error:  # the task itself could not run (e.g. its arguments)
                outcome = RowOutcome(row.id, ok=False, error=f"{type(error).__name__}: {error}", kind="error",
                                     retryable=True)
                idle.append(actor)
            # 3. Retry, or report the row as finished (after the freed actor has its next row)
            retry = should_retry(outcome, attempts[row.id], self.max_retries)
            if retry:
                pending.appendleft(row)
            hand_out()
            if not retry:
                on_finished(row, outcome, attempts[row.id], time.perf_counter() - first_handed_out[row.id])

    @staticmethod
    def _restarted(ref, restarting: dict, idle: list) -> None:
        """A lost actor's model load came back: the actor takes rows again, or is asked again while
        Ray is still restarting it, or is dropped when the model no longer loads."""
        import ray
        from ray.exceptions import RayActorError

        actor = restarting.pop(ref)
        try:
            error = ray.get(ref)
        except RayActorError:
            time.sleep(RESTART_POLL_S)
            restarting[actor.load.remote()] = actor
            return
        if error:
            logger.warning("a restarted Ray worker could not load the model and is left out: %s", error)
        else:
            idle.append(actor)

    def stop(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []
        if self._disconnect:
            ray.shutdown()
            self._disconnect = False
