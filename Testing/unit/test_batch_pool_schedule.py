"""``RayPool.run``'s schedule, without Ray: a stand-in for the few calls it makes (``remote``, ``wait``, ``get``,
``cancel``) records how many studies were read ahead of the actors at each wait. The reads stay bounded (at most
``workers + 1`` ahead, and that many are used), every study comes out once, each ok study's store answer is applied,
and a study whose read failed past Ray's retries is its failed row. The real Ray runs it in
Testing/integration/test_batch_tasks.py."""

from __future__ import annotations

from types import SimpleNamespace

from MedSegReasoning.batch.cohort import Study
from MedSegReasoning.batch.pool import RayPool
from MedSegReasoning.batch.publish import Publication
from MedSegReasoning.batch.read import StudyRead
from MedSegReasoning.batch.study import JobOptions, StudyOutcome


class _RayError(Exception):
    pass


class _Ref:
    def __init__(self, value=None, error: Exception | None = None) -> None:
        self.value, self.error = value, error


class FakeRay:
    """Tasks answer at once; an actor's study is done when ``wait`` hands it out (oldest first)."""

    _actor_error = type("RayActorError", (_RayError,), {})
    exceptions = SimpleNamespace(
        RayError=_RayError,
        RayActorError=_actor_error,
        ActorUnavailableError=type("ActorUnavailableError", (_actor_error,), {}),
        WorkerCrashedError=type("WorkerCrashedError", (_RayError,), {}),
    )

    def __init__(self, unreadable: str = "", kills: str = "", restart_refusals: int = 0) -> None:
        self.reads = self.dispatched = self.stores = 0
        self.ahead_at_wait: list[int] = []
        self.unreadable = unreadable
        self.kills = kills  # the study whose first run kills its actor's process (Ray restarts it)
        self.restart_refusals = restart_refusals  # ready() calls refused while the actor restarts
        self.restarting: set[str] = set()
        self.sent_while_restarting = 0

    def remote(self, **options):
        assert options == {"num_cpus": 0}, "I/O tasks reserve no CPU (the actors hold them all)"

        def wrap(fn):
            def call(*args):
                if fn.__name__ == "read_study":
                    self.reads += 1
                    return _Ref(StudyRead(volume=args[0].key, by="read-task"))
                assert fn.__name__ == "store_back" and isinstance(args[1], _Ref), "the outcome goes by reference"
                self.stores += 1
                return _Ref(Publication(stored=f"url-of-{args[1].value.key}", by="store-task"))

            return SimpleNamespace(remote=call)

        return wrap

    def actor(self, name: str):
        refusals = [0]

        def run(study, volume):
            self.dispatched += 1
            assert isinstance(volume, _Ref), "the actor is handed the read's reference, not a volume"
            if name in self.restarting:  # as Ray does when a task reaches an actor it is restarting
                self.sent_while_restarting += 1
                return _Ref(error=self.exceptions.ActorUnavailableError("The actor is restarting."))
            if study.key == self.kills:
                self.kills = ""
                self.restarting.add(name)
                return _Ref(error=self.exceptions.RayActorError("the worker process died"))
            if study.key == self.unreadable:
                return _Ref(error=_RayError("the read task's worker died 4 times"))
            return _Ref(StudyOutcome(study.key, "ok", worker=name, read_by=volume.value.by))

        def ready():
            if name in self.restarting and refusals[0] < self.restart_refusals:
                refusals[0] += 1
                return _Ref(error=self.exceptions.ActorUnavailableError("The actor is restarting."))
            self.restarting.discard(name)
            return _Ref({"load_s": 0.1, "worker": name})

        return SimpleNamespace(run=SimpleNamespace(remote=run), ready=SimpleNamespace(remote=ready))

    def wait(self, refs, num_returns=1):
        self.ahead_at_wait.append(self.reads - self.dispatched)
        return [refs[0]], refs[1:]

    def get(self, ref):
        if ref.error is not None:
            raise ref.error
        return ref.value

    def cancel(self, ref, force=False):
        pass


def _pool(fake: FakeRay, workers: int) -> RayPool:
    pool = RayPool.__new__(RayPool)  # no ray.init: the stand-in is the whole of Ray here
    pool.ray, pool.options, pool.workers, pool.source = fake, JobOptions(), workers, None
    pool.actors = [fake.actor(f"actor-{n}") for n in range(workers)]
    return pool


def test_reads_stay_at_most_workers_plus_one_ahead_and_every_study_comes_out_once():
    fake = FakeRay()
    studies = [Study(f"s{i}", f"s{i}.nii.gz", box="1,1,5,5,0") for i in range(9)]
    finished = list(_pool(fake, workers=2).run(studies, dicomweb="http://pacs/dicom-web"))
    assert sorted(s.key for s, _, _ in finished) == sorted(s.key for s in studies)
    assert max(fake.ahead_at_wait) == 3, "at most workers + 1 studies read ahead of the actors, and used"
    assert fake.reads == fake.dispatched == 9 and fake.stores == 9
    for study, outcome, stop in finished:
        assert stop is None and outcome.stored == f"url-of-{study.key}" and outcome.stored_by == "store-task"
        assert outcome.read_by == "read-task"


def test_a_read_that_failed_past_rays_retries_is_that_studys_failed_row():
    fake = FakeRay(unreadable="s1")
    studies = [Study(f"s{i}", f"s{i}.nii.gz", box="1,1,5,5,0") for i in range(3)]
    outcomes = {s.key: o for s, o, _ in _pool(fake, workers=1).run(studies)}
    assert [outcomes[k].status for k in ("s0", "s1", "s2")] == ["ok", "failed", "ok"], "the run went on"
    assert "lost this study's read" in outcomes["s1"].error and "died 4 times" in outcomes["s1"].error
    assert fake.stores == 0, "no --dicomweb: nothing stored"
    assert max(fake.ahead_at_wait) == 2


def test_a_killed_actor_gets_no_study_until_ray_has_restarted_it(monkeypatch):
    """The flake this fixes: the killed study went straight back to its restarting actor, Ray refused it ("the actor
    is restarting"), and that second loss made the study a failed row. Now the actor is asked ``ready`` (refused
    while it restarts) and takes studies again only once it answers."""
    monkeypatch.setattr("MedSegReasoning.batch.pool.time.sleep", lambda seconds: None)
    fake = FakeRay(kills="s1", restart_refusals=3)
    studies = [Study(f"s{i}", f"s{i}.nii.gz", box="1,1,5,5,0") for i in range(4)]
    outcomes = {s.key: o for s, o, _ in _pool(fake, workers=1).run(studies)}
    assert [outcomes[f"s{i}"].status for i in range(4)] == ["ok"] * 4, "the killed study finished on its retry"
    assert fake.sent_while_restarting == 0, "no study was sent to the actor while Ray restarted it"
    assert fake.dispatched == 5, "four studies, one of them twice"


def test_an_actor_that_never_comes_back_ends_the_run_with_the_studies_left_for_resume(monkeypatch):
    from MedSegReasoning.batch import pool as pool_module

    monkeypatch.setattr(pool_module.time, "sleep", lambda seconds: None)
    fake = FakeRay(kills="s0", restart_refusals=10_000)
    studies = [Study(f"s{i}", f"s{i}.nii.gz", box="1,1,5,5,0") for i in range(2)]
    import pytest

    from MedSegReasoning.wire.errors import ServiceError

    with pytest.raises(ServiceError, match="every Ray worker was lost"):
        list(_pool(fake, workers=1).run(studies))
    assert fake.sent_while_restarting == 0
