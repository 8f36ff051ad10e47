"""Live partial results, pure parts: message ids, delta joining, the follow view."""

from __future__ import annotations

import pytest

from agentbus.bus.progress import join_deltas, progress_msg_id
from agentbus.cli.follow import FollowView
from agentbus.client.stream import PartialResult
from agentbus.contract import subjects
from agentbus.contract.messages import (
    DocumentRef,
    JobState,
    JobStatus,
    StreamItem,
    StreamKind,
    TaskResult,
    decode,
    encode,
    utcnow,
)
from agentbus_orchestrator import lifecycle
from agentbus_orchestrator.lifecycle import ResultKey
from agentbus_orchestrator.progress import chunk_items, final_item

pytestmark = pytest.mark.unit


def _item(kind: StreamKind, **kw: object) -> StreamItem:
    return StreamItem(job_id="job-1", kind=kind, **kw)


def test_subject_and_ids() -> None:
    assert subjects.job_progress("job-1") == "progress.job-1"
    assert subjects.job_progress("acme.job-1") == "progress.acme.job-1"  # a tenant's
    with pytest.raises(ValueError, match="job_id"):
        subjects.job_progress("a.b.c")
    assert progress_msg_id(_item(StreamKind.CHUNK, level=1, index=7)) == "job-1:p:c1.7"
    assert progress_msg_id(_item(StreamKind.REDUCE, level=2)) == "job-1:p:r2"
    assert progress_msg_id(_item(StreamKind.COMPLETED)) == "job-1:p:completed"
    a, b = (progress_msg_id(_item(StreamKind.DELTA, index=0)) for _ in range(2))
    assert a != b  # deltas are best effort, never deduplicated against each other


def test_item_round_trips() -> None:
    item = _item(StreamKind.CHUNK, level=0, index=3, count=9, text="s", worker_id="w-1")
    assert decode(encode(item, sender="orch-1"), StreamItem).payload == item
    assert StreamKind.COMPLETED.final and StreamKind.FAILED.final
    assert not StreamKind.CHUNK.final


def test_join_deltas_joins_one_tasks_deltas_in_order() -> None:
    items = [
        _item(StreamKind.DELTA, index=0, text="Hel"),
        _item(StreamKind.DELTA, index=1, text="Oth"),
        _item(StreamKind.DELTA, index=0, text="lo"),
        _item(StreamKind.CHUNK, index=0, text="Hello"),
        _item(StreamKind.DELTA, index=0, text="again"),
        _item(StreamKind.DELTA, index=1, text="er"),
    ]
    joined = join_deltas(items)
    assert [(i.kind, i.index, i.text, pos) for i, pos in joined] == [
        (StreamKind.DELTA, 0, "Hello", [0, 2]),
        (StreamKind.DELTA, 1, "Other", [1, 5]),
        (StreamKind.CHUNK, 0, "Hello", [3]),
        (StreamKind.DELTA, 0, "again", [4]),
    ]
    assert sorted(p for _, pos in joined for p in pos) == list(range(len(items)))


def test_follow_view_folds_items() -> None:
    view = FollowView(title="doc")
    assert view.status_line() == "queued"
    seq = iter(range(1, 100))

    def apply(kind: StreamKind, **kw: object) -> None:
        view.apply(PartialResult.of(_item(kind, **kw), cursor=next(seq)))

    apply(StreamKind.STARTED, count=3)
    apply(StreamKind.DELTA, index=0, text="Riv")
    apply(StreamKind.DELTA, index=0, text="ers")
    assert view.writing == {(0, 0): "Rivers"}
    apply(StreamKind.CHUNK, index=0, text="Rivers flood.")
    assert view.writing == {} and view.status_line() == "map: 1/3 · 3 chunk(s)"
    apply(StreamKind.REDUCE, level=1, count=1)
    assert view.status_line() == "reduce level 1: 0/1 · 3 chunk(s)"
    apply(StreamKind.COMPLETED, level=1, text="Final.")
    assert view.summary == "Final." and view.status_line() == "completed" and view.cursor == 6
    view.render()  # renders without a terminal


def test_partial_result_json() -> None:
    r = PartialResult.of(_item(StreamKind.FAILED, error="boom"), cursor=4)
    assert r.final and r.as_json() == {"cursor": 4, "kind": "failed", "level": 0, "error": "boom"}


def test_join_deltas_restart_drops_what_came_before() -> None:
    items = [
        _item(StreamKind.DELTA, index=0, text="Riv"),
        _item(StreamKind.DELTA, index=0, text="Rivers", restart=True),
        _item(StreamKind.DELTA, index=0, text=" flood"),
    ]
    ((joined, positions),) = join_deltas(items)
    assert (joined.text, joined.restart, positions) == ("Rivers flood", True, [0, 1, 2])
    view = FollowView(title="doc")
    for cursor, item in enumerate(items, start=1):
        view.apply(PartialResult.of(item, cursor=cursor))
    assert view.writing == {(0, 0): "Rivers flood"}


def test_the_follow_view_ends_on_a_cancel_with_its_reason() -> None:
    view = FollowView(title="doc")
    view.apply(PartialResult.of(_item(StreamKind.DELTA, index=0, text="Riv"), cursor=1))
    final = _item(StreamKind.CANCELED, index=None, text="")
    final = final.model_copy(update={"error": "changed my mind"})
    view.apply(PartialResult.of(final, cursor=2))
    assert final.kind.final and view.writing == {} and view.cursor == 2
    assert view.status_line() == "canceled: changed my mind"


def _result(level: int, index: int, *, ok: bool = True) -> TaskResult:
    return TaskResult(
        job_id="job-1", task_id=f"{level}-{index}", level=level, index=index, ok=ok,
        summary=f"summary {level}.{index}", worker_id="w-1", duration_ms=1.0,
    )  # fmt: skip


def test_chunk_items_skip_recorded_failed_and_one_task_levels() -> None:
    start = JobState(job_id="job-1", status=JobStatus.RUNNING, chunks=4, level_tasks=4)
    view = lifecycle.record(
        start, [ResultKey(level=0, index=1, ok=True, task_id="0-1")], now=utcnow()
    )[0]
    assert view is not None
    results = [_result(0, 0), _result(0, 1), _result(0, 2, ok=False), _result(0, 3)]
    ref = DocumentRef(
        bucket="documents", name="job-1.summary.txt", size_bytes=300_000, sha256="0" * 64
    )
    items = chunk_items(view, "job-1", results, {3: ref})
    assert [(i.index, i.count, i.text, i.summary_ref) for i in items] == [
        (0, 4, "summary 0.0", None),  # new
        (3, 4, "", ref),  # stored by reference
    ]  # 1 already recorded, 2 failed
    one_task = JobState(job_id="job-1", status=JobStatus.RUNNING, chunks=1, level_tasks=1)
    assert chunk_items(one_task, "job-1", [_result(0, 0)], {}) == []
    (unknown,) = chunk_items(None, "job-1", [_result(1, 0)], {})
    assert unknown.count is None and unknown.level == 1


def test_final_item_of_completed_and_failed_jobs() -> None:
    done = JobState(job_id="job-1", status=JobStatus.COMPLETED, summary="Final.", level=2)
    assert (final_item(done).kind, final_item(done).text, final_item(done).level) == (
        StreamKind.COMPLETED, "Final.", 2,
    )  # fmt: skip
    failed = JobState(job_id="job-1", status=JobStatus.FAILED, error="x" * 2000)
    assert final_item(failed).kind is StreamKind.FAILED and final_item(failed).error == "x" * 1000
