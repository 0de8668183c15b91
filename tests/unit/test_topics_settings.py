import pytest

from services.settings import Settings
from streams.topics import CATALOG, by_name, min_insync_replicas


def test_catalog_matches_design():
    names = {s.name for s in CATALOG}
    assert names == {"signaling.events", "signaling.events.dlq", "signaling.sources",
                     "switch.control.decisions",
                     "switch.control.acks", "control.policy", "control.allowlist",
                     "feedback.labels", "scores", "control.audit",
                     "control.policy.history", "decisions.shadow"}
    assert "compact" in by_name("control.policy").configs()["cleanup.policy"]
    assert "compact" in by_name("switch.control.decisions").configs()["cleanup.policy"]


def test_settings_from_env():
    s = Settings.from_env({"DIALGUARD_KAFKA_BOOTSTRAP": "k1:9092,k2:9092",
                           "DIALGUARD_TOPIC_PARTITIONS": "12", "DIALGUARD_SHORT_CALL_S": "8.5",
                           "PATH": "/bin"})
    assert s.kafka_bootstrap == "k1:9092,k2:9092" and s.topic_partitions == 12
    assert s.short_call_s == 8.5


def test_settings_reject_unknown_and_bad_values():
    with pytest.raises(ValueError, match="unknown setting"):
        Settings.from_env({"DIALGUARD_NO_SUCH_THING": "1"})
    with pytest.raises(ValueError, match="not a valid int"):
        Settings.from_env({"DIALGUARD_TOPIC_PARTITIONS": "many"})


def test_sasl_settings_reach_client_config():
    s = Settings.from_env({"DIALGUARD_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                           "DIALGUARD_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                           "DIALGUARD_KAFKA_SASL_USERNAME": "u",
                           "DIALGUARD_KAFKA_SASL_PASSWORD": "p"})
    conf = s.kafka_client_config()
    assert conf["security.protocol"] == "SASL_SSL" and conf["sasl.mechanism"] == "SCRAM-SHA-512"


@pytest.mark.parametrize("replication, min_isr", [(1, 1), (2, 1), (3, 2), (4, 2), (5, 2)])
def test_min_insync_replicas_is_one_less_than_the_copies_capped_at_two(replication, min_isr):
    """A single node must still accept writes; 3 copies must survive one broker down."""
    assert min_insync_replicas(replication) == min_isr


def test_min_insync_replicas_rejects_no_copies():
    with pytest.raises(ValueError, match="at least 1"):
        min_insync_replicas(0)


def test_every_catalog_topic_carries_the_min_isr_of_its_replication():
    for spec in CATALOG:
        assert spec.configs()["min.insync.replicas"] == "1", spec.name
        assert spec.configs(3)["min.insync.replicas"] == "2", spec.name


def test_ensure_topics_creates_with_the_settings_replication_and_its_min_isr(monkeypatch):
    """The one place topics are created passes the replication to the catalog's configs."""
    import services.admin as admin
    from streams.topics import SIGNALING_EVENTS

    created: list = []

    class FakeAdmin:
        def create_topics(self, topics, **_):
            created.extend(topics)
            return {}

    class Meta:
        topics: dict = {}

    monkeypatch.setattr(admin, "wait_for_broker", lambda *a, **k: None)
    monkeypatch.setattr(admin, "_admin", lambda settings: FakeAdmin())
    monkeypatch.setattr(admin, "_metadata", lambda *a, **k: Meta())
    monkeypatch.setattr(admin, "_wait_for_leaders", lambda *a, **k: None)
    settings = Settings.from_env({}, topic_replication=3, topic_partitions=6)
    admin.ensure_topics(settings, [SIGNALING_EVENTS])
    [topic] = created
    assert topic.replication_factor == 3 and topic.num_partitions == 6
    assert topic.config["min.insync.replicas"] == "2"


def test_worker_stages_default_to_both_and_reject_unknown_names():
    assert Settings.from_env(environ={}).stages == {"number", "source"}
    only = Settings.from_env(environ={"DIALGUARD_WORKER_STAGES": " source "})
    assert only.stages == {"source"}
    for bad in ("", "numbers", "number,trunk", ","):
        with pytest.raises(ValueError, match="DIALGUARD_WORKER_STAGES"):
            Settings.from_env(environ={"DIALGUARD_WORKER_STAGES": bad}).stages


def test_fetch_wait_is_milliseconds_within_bounds():
    assert Settings.from_env(environ={}).fetch_max_wait_ms == 25
    assert Settings.from_env(
        environ={"DIALGUARD_WORKER_FETCH_MAX_WAIT_S": "0.5"}).fetch_max_wait_ms == 500
    for bad in ("0", "-1", "0.0001", "11"):
        with pytest.raises(ValueError, match="DIALGUARD_WORKER_FETCH_MAX_WAIT_S"):
            Settings.from_env(environ={"DIALGUARD_WORKER_FETCH_MAX_WAIT_S": bad}).fetch_max_wait_ms



def test_fetch_min_bytes_within_bounds():
    assert Settings.from_env(environ={}).fetch_min_bytes == 16_384
    assert Settings.from_env(
        environ={"DIALGUARD_WORKER_FETCH_MIN_BYTES": "1"}).fetch_min_bytes == 1
    for bad in ("0", "-5", str((1 << 20) + 1)):
        with pytest.raises(ValueError, match="DIALGUARD_WORKER_FETCH_MIN_BYTES"):
            Settings.from_env(environ={"DIALGUARD_WORKER_FETCH_MIN_BYTES": bad}).fetch_min_bytes
