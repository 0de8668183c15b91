import pytest

from services.settings import Settings
from streams.topics import CATALOG, by_name


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
