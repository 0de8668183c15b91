"""Published event ids: a replay counts once, a failed run can be replayed in full."""

from services.ingest.replay_guard import PublishedEvents
from services.settings import Settings
from streams.schema import SignalingEvent
from tests.unit.ingest_recorder import recording_sink

T0 = 1_795_420_800.0


def call(i: int, kind: str = "attempt") -> SignalingEvent:
    return SignalingEvent(T0 + i, "sip", kind, f"c{i}", "8613800138000", "8613900139000",
                          switch="sw1")


def test_ids_are_remembered_only_once_the_run_is_committed(tmp_path):
    db = tmp_path / "ids.sqlite"
    run = PublishedEvents(db, now=T0)
    assert run.first_time(call(1)) and not run.first_time(call(1))
    assert run.first_time(call(1, "answer"))  # another event of the same call
    run.forget()  # the broker did not take them: the next replay publishes them
    run = PublishedEvents(db, now=T0)
    assert run.first_time(call(1))
    run.commit()
    run = PublishedEvents(db, now=T0 + 10)
    assert not run.first_time(call(1)) and run.skipped == 1
    run.commit()


def test_ids_older_than_the_topic_retention_are_forgotten(tmp_path):
    db = tmp_path / "ids.sqlite"
    run = PublishedEvents(db, retention_s=100, now=T0)
    run.first_time(call(1))
    run.commit()
    later = PublishedEvents(db, retention_s=100, now=T0 + 101)
    assert later.first_time(call(1))
    later.commit()


def test_the_sink_skips_and_counts_what_was_published_before(tmp_path):
    for expect in (1, 0):
        sink, producer = recording_sink("cdr", Settings.from_env(environ={}))
        sink.published = PublishedEvents(tmp_path / "ids.sqlite", now=T0)
        sink.event(call(1))
        sink.close()
        assert len(producer.events()) == expect
    assert sink.ignored == {"already_published": 1}
