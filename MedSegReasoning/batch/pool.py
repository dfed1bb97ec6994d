"""Who runs the studies: a pool of Ray actors (each loads the models once), or this process one study at a time.

Ray is imported here only, and only when a run uses it: ``--help`` and the in-process path never load it. Without
``--ray-address`` a local Ray starts inside the command with ``--workers`` actors; ``auto`` or ``ray://host:port``
joins a running cluster (the inputs must be readable where the actors run; the outputs come back to this
process as bytes). An actor that dies in the middle of a study (its process killed, its node lost) is restarted
once by Ray, and the study is tried once more on the next free actor (the restarted one where no other is free);
a study whose second try also loses its worker is a failed row; when every actor is lost twice the run stops
(exit 4). Reading a study and storing its SEG and SR back on a PACS are Ray tasks around the actors (``run``).
Each runner yields ``(study, outcome, stop)`` as studies finish: ``stop`` the error that ends the run (a PACS
that cannot be reached), or None.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Generator, Sequence
from typing import Any

from ..wire.errors import InputError, MedSegError, ModelError, ServiceError
from .cohort import Study
from .publish import Publication, apply, publish, store_back
from .read import read_study
from .study import JobOptions, StudyOutcome, StudyWorker

log = logging.getLogger(__name__)

Finished = tuple[Study, StudyOutcome, MedSegError | None]  # a study, its outcome, the error that stops the run
WORKER_LOST = "the worker running this study was lost twice (process killed or out of memory)"


def ray_available() -> bool:
    """Whether Ray can be imported here (without importing it: that takes seconds)."""
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def default_workers() -> int:
    """Fit the cores and the memory: one actor per core, at most one per 3 GiB of RAM (a model and a volume)."""
    cores = os.cpu_count() or 1
    try:
        import psutil

        by_memory = max(int(psutil.virtual_memory().available // (3 * 2**30)), 1)
    except ImportError:
        by_memory = cores
    return max(min(cores, by_memory), 1)


def run_in_process(
    studies: Sequence[Study], options: JobOptions, source: Any = None, dicomweb: str | None = None
) -> Generator[Finished, None, None]:
    """One worker in this process, one study at a time (read, round, store back): what a run without Ray does,
    with the same outputs."""
    if not studies:
        return
    worker = StudyWorker(options, source, needs_reasoner=any(s.box is None for s in studies))
    for study in studies:
        outcome = worker.run(study, read_study(study, options.series_filter))
        yield (study, *publish(dicomweb, outcome)) if dicomweb else (study, outcome, None)


class RayPool:
    """``workers`` ``StudyWorker`` actors on a local Ray or a cluster; ``run`` hands them the studies."""

    def __init__(self, options: JobOptions, *, workers: int, address: str | None, source: Any = None) -> None:
        import ray

        self.ray = ray
        self.started_ray = False
        if not ray.is_initialized():
            self._init(address, workers)
        self.options = options
        self.source = source
        self.workers = workers
        self.actors: list[Any] = []

    def _init(self, address: str | None, workers: int) -> None:
        os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # no GPU is hidden from a CPU-only actor
        try:
            if address:
                self.ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
            else:
                self.ray.init(
                    num_cpus=max(workers, os.cpu_count() or 1),
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level=logging.WARNING,
                )
        except ValueError as exc:  # e.g. ray:// without Ray's client (grpcio)
            self._forget_failed_init()
            raise InputError(
                f"--ray-address {address} cannot be used here ({str(exc).splitlines()[0][:200]}): "
                "pip install 'medseg-reasoning[batch]' installs Ray with its client."
            ) from None
        except (ConnectionError, TimeoutError, RuntimeError) as exc:
            self._forget_failed_init()
            where = f"the Ray cluster at {address}" if address else "a local Ray"
            raise ServiceError(
                f"{where} cannot be reached or started ({str(exc).splitlines()[0][:200]}): check the address "
                "(`ray status` there), or leave out --ray-address for a local run."
            ) from None
        self.started_ray = True

    def _forget_failed_init(self) -> None:
        """A failed ``ray.init`` (a ``ray://`` client that never connected) leaves Ray's client mode half set up in
        this process, and the next ``ray.init`` of the process (a library caller's next run) then fails inside Ray:
        shut it down."""
        try:
            self.ray.shutdown()
        except Exception:  # nothing to shut down
            log.debug("ray.shutdown after a failed init", exc_info=True)

    def start(self, needs_reasoner: bool) -> None:
        """Start the actors and wait until each has loaded its models; a model that cannot load ends the run."""
        remote = self.ray.remote(num_cpus=1, max_restarts=1, max_task_retries=0)(StudyWorker)
        self.actors = [
            remote.remote(self.options, self.source, needs_reasoner, defer_errors=True) for _ in range(self.workers)
        ]
        for answer in self.ray.get([a.ready.remote() for a in self.actors]):
            _raise_load_error(answer)

    def run(self, studies: Sequence[Study], dicomweb: str | None = None) -> Generator[Finished, None, None]:
        """The studies through the actors, as they finish: each read by a task (at most ``workers + 1`` read ahead
        of the actors: memory stays bounded), its volume's reference handed to the next free actor, and with
        ``dicomweb`` its outputs stored back by a task while the actors go on."""
        ray = self.ray
        read = ray.remote(num_cpus=0)(read_study)  # I/O: no CPU reserved, or the actors' would starve it
        store = ray.remote(num_cpus=0)(store_back)
        queue = deque(studies)  # not read yet
        ahead: deque[tuple[Study, Any]] = deque()  # read (or being read), waiting for an actor
        tries: dict[str, int] = {}
        losses: dict[int, int] = {}  # per actor: Ray restarts it once (max_restarts=1); lost twice, it is gone
        running: dict[Any, tuple[Study, int, Any]] = {}
        storing: dict[Any, tuple[Study, StudyOutcome]] = {}
        restarting: dict[Any, tuple[int, int]] = {}  # ready() of an actor Ray restarts -> (actor, asks so far)
        idle = deque(range(len(self.actors)))  # actors free to take a study, the longest free first

        def read_ahead() -> None:
            while queue and len(ahead) <= self.workers:
                study = queue.popleft()
                ahead.append((study, read.remote(study, self.options.series_filter)))

        try:
            while queue or ahead or running or storing:
                read_ahead()
                while ahead and idle and len(storing) <= self.workers:
                    (study, volume), n = ahead.popleft(), idle.popleft()
                    tries[study.key] = tries.get(study.key, 0) + 1
                    running[self.actors[n].run.remote(study, volume)] = (study, n, volume)
                read_ahead()  # the actors are busy: the next studies are read meanwhile
                if not running and not storing and not restarting:
                    raise ServiceError(
                        f"every Ray worker was lost ({len(self.actors)} started, each restarted once): check the "
                        "nodes' memory and logs (`ray status`); --resume continues with the studies left."
                    )
                (ref,), _ = ray.wait([*running, *storing, *restarting], num_returns=1)
                if ref in restarting:
                    n, asks = restarting.pop(ref)
                    state = _restarted(ray, ref, asks)
                    if state:
                        idle.append(n)
                    elif state is None and asks < RESTART_ASKS:  # still coming back: ask again shortly
                        restarting[self.actors[n].ready.remote()] = (n, asks + 1)
                    continue
                if ref in storing:
                    study, outcome = storing.pop(ref)
                    yield (study, *apply(outcome, self._stored(ray, ref)))
                    continue
                study, n, volume = running.pop(ref)
                try:
                    outcome = ray.get(ref)
                except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as exc:
                    log.warning("study %s lost its worker: %s", study.key, str(exc).splitlines()[0])
                    losses[n] = losses.get(n, 0) + 1
                    if losses[n] < 2:  # Ray restarts it: free again once it answers (a task sent while it
                        restarting[self.actors[n].ready.remote()] = (n, 1)  # restarts would be lost too)
                    if tries[study.key] < 2:
                        ahead.appendleft((study, volume))  # once more (its volume is read), on the next free actor
                        continue
                    outcome = StudyOutcome(study.key, "failed", error=WORKER_LOST)
                except ray.exceptions.RayError as exc:  # e.g. its read task lost past Ray's retries
                    idle.append(n)
                    error = f"Ray lost this study's read or round ({_first(exc)}): --resume tries it again"
                    outcome = StudyOutcome(study.key, "failed", error=error)
                else:
                    idle.append(n)
                if dicomweb and outcome.status == "ok":
                    storing[store.remote(dicomweb, ref)] = (study, outcome)  # the outputs stay in Ray's store
                    continue
                yield study, outcome, None
        finally:  # what is in flight is not saved: --resume does it
            for ref in running:
                _cancel(ray, ref, force=True)
            for ref in [*storing, *(volume for _, volume in ahead)]:
                _cancel(ray, ref, force=False)

    @staticmethod
    def _stored(ray: Any, ref: Any) -> Publication:
        """A store task's answer; a task lost past Ray's retries is a store that failed (the study can be retried)."""
        try:
            return ray.get(ref)
        except ray.exceptions.RayError as exc:
            return Publication(error=f"the store task was lost ({_first(exc)})")

    def close(self) -> None:
        for actor in self.actors:
            try:
                self.ray.kill(actor)
            except Exception:  # an actor already gone
                log.debug("actor already gone", exc_info=True)
        if self.started_ray:
            self.ray.shutdown()


def _cancel(ray: Any, ref: Any, force: bool) -> None:
    try:
        ray.cancel(ref, force=force)
    except Exception:  # a task already finished, or its owner gone
        log.debug("cancelling %s", ref, exc_info=True)


def _first(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__


RESTART_ASKS = 100
"""How many times a restarting actor's ``ready`` is asked (each refused at once while Ray restarts it, else answered
when its models are loaded) before the actor counts as gone."""


def _restarted(ray: Any, ref: Any, asks: int) -> bool | None:
    """Whether the restarted actor behind ``ready`` ref ``ref`` can take studies: True when it answered with its models
    loaded; None while Ray still restarts it (asked again after a short pause); False when it is gone or its models
    no longer load (its studies go to the other actors)."""
    try:
        answer = ray.get(ref)
    except ray.exceptions.ActorUnavailableError:
        time.sleep(min(0.05 * asks, 1.0))
        return None
    except ray.exceptions.RayError as exc:
        log.warning("a restarted Ray worker is gone: %s", _first(exc))
        return False
    if isinstance(answer, dict) and answer.get("error"):
        log.warning("a restarted Ray worker cannot load its models: %s", answer["error"])
        return False
    return True


def _raise_load_error(answer: Any) -> None:
    """``StudyWorker.ready``'s answer: the load time, or the load's error as the class the exit code needs."""
    if isinstance(answer, dict) and answer.get("error"):
        kind = {"InputError": InputError, "ServiceError": ServiceError}.get(answer.get("kind", ""), ModelError)
        raise kind(answer["error"])


def check_ray_request(address: str | None, in_process: bool) -> bool:
    """Whether this run uses Ray: yes where it is installed (unless --in-process); --ray-address without Ray is
    a usage error, not a silent local run."""
    if in_process:
        if address:
            raise InputError("--ray-address and --in-process contradict each other: give one of them.")
        return False
    if ray_available():
        return True
    if address:
        raise InputError(
            "--ray-address needs Ray, which is not installed here: pip install 'medseg-reasoning[batch]', "
            "or leave out --ray-address to run in this process."
        )
    return False


__all__ = ["MedSegError", "RayPool", "check_ray_request", "default_workers", "ray_available", "run_in_process"]
