"""processing_guarantee exactly_once: configuration, transactions on a real broker."""

from __future__ import annotations

import pytest

from streamgmm.service.config import ConfigError, load_config

KAFKA = {
    "kafka": {
        "bootstrap_servers": "localhost:9092",
        "topics": "in",
        "group_id": "g",
        "output_topic": "out",
    },
    "model": {"scope": "partition"},
    "processing_guarantee": "exactly_once",
}


def test_exactly_once_is_accepted_with_kafka_input_and_outputs():
    cfg = load_config(overrides=KAFKA, env={})
    assert cfg.processing_guarantee == "exactly_once"
    default = dict(KAFKA)
    default.pop("processing_guarantee")
    assert load_config(overrides=default, env={}).processing_guarantee == "at_least_once"


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (
            {
                "kafka": {"topics": [], "output_topic": None},
                "input": {"path": "in.jsonl"},
                "model": {"scope": "key"},
                "key_field": "k",
            },
            "input",
        ),
        ({"output": {"path": "out.jsonl"}}, "output"),
        ({"output": {"dead_letter": "dlq.jsonl"}}, "dead_letter"),
        ({"model": {"scope": "global"}}, "model.scope"),
    ],
)
def test_exactly_once_refuses_what_cannot_be_in_a_transaction(change, says):
    over = {k: (dict(v) if isinstance(v, dict) else v) for k, v in KAFKA.items()}
    for k, v in change.items():
        over[k] = {**over.get(k, {}), **v} if isinstance(v, dict) else v
    with pytest.raises(ConfigError, match="exactly_once") as e:
        load_config(overrides=over, env={})
    assert says in str(e.value)
