"""Configuration of the stream processor: pydantic models, YAML, ``STREAMGMM_*`` env, CLI flags.

Precedence, lowest first: model defaults < YAML file (``--config``) < environment variables <
command-line flags.  Environment variables name a field by its path, nested levels joined by a
double underscore: ``STREAMGMM_MODEL__N_COMPONENTS=5``, ``STREAMGMM_KAFKA__GROUP_ID=g1``,
``STREAMGMM_FEATURES=a,b,c``.  Values are read as YAML scalars/lists, so numbers, booleans and
``null`` behave as in the YAML file.

Example
-------
>>> cfg = load_config(overrides={"input": {"path": "in.jsonl"}, "features": "a,b"}, env={})
>>> cfg.mode, cfg.features, cfg.model.n_components
('file', ['a', 'b'], 'auto')
>>> try:
...     load_config(overrides={"model": {"n_components": 0}}, env={})
... except ConfigError as e:
...     print(e)
invalid configuration: model.n_components: n_components must be 'auto' or an integer >= 1 (got 0)

"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from streamgmm._gate_spec import GATE_DEFAULTS, validate_gate_params
from streamgmm._mixture_spec import MIXTURE_DEFAULTS

__all__ = [
    "CheckpointConfig",
    "ConfigError",
    "GateConfig",
    "InputConfig",
    "KafkaConfig",
    "ModelConfig",
    "OutputConfig",
    "ServiceConfig",
    "load_config",
]

ENV_PREFIX = "STREAMGMM_"
_GATE = GATE_DEFAULTS


class ConfigError(ValueError):
    """The configuration is invalid; the message is meant for the user as is."""


class _Strict(BaseModel):
    # A typo in a YAML key must be an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Strict):
    """Hyper-parameters of :class:`streamgmm.OnlineGaussianMixture`, and the model scope.

    ``scope``: ``global`` (one model for the whole input), ``partition`` (one per input
    partition; Kafka only) or ``key`` (one per record key: the Kafka message key, or the field
    named by ``key_field``); see :mod:`streamgmm.service.state`.  ``max_live_keys``: per-key
    models kept decoded in memory; idle ones beyond it are kept encoded (a few KiB each).
    """

    # "auto" by default, as in the core and the River estimators (one spec,
    # streamgmm._mixture_spec): K by BIC at the warm-up, then online birth, merge and death.
    n_components: int | Literal["auto"] = MIXTURE_DEFAULTS["n_components"]
    covariance_type: Literal["full", "diag", "spherical", "tied"] = "full"
    half_life: float | None = Field(None, gt=0)
    step_exponent: float = Field(0.8, gt=0.5, le=1.0)
    step_offset: float = Field(2.0, ge=0)
    warm_up: int | None = Field(None, ge=2)
    n_init: int = Field(3, ge=1)
    reg_covar: float = Field(1e-6, ge=0)
    random_state: int | None = 0
    # Not estimator parameters: how many models, and how many of them stay decoded in memory.
    scope: Literal["global", "partition", "key"] = "global"
    max_live_keys: int | None = Field(10000, ge=1)
    # Global scope on Kafka: one model across the consumer group, increments exchanged through
    # exchange_topic (None: "<group>-<first input topic>-exchange"); see service/exchange.py.
    exchange: bool = False
    exchange_topic: str | None = None
    # Publish the group's model to "<exchange topic>-snapshot" every this many exchanges (0:
    # never), and delete exchange records covered by a snapshot at least exchange_trim_after
    # seconds old (None: never): the exchange topic stays bounded, a joiner starts from the
    # newest snapshot.
    exchange_snapshot_every: int = Field(20, ge=0)
    exchange_trim_after: float | None = Field(600.0, ge=0)

    def estimator_params(self) -> dict:
        """The :class:`streamgmm.OnlineGaussianMixture` parameters (not scope, key bound,
        exchange)."""
        return self.model_dump(
            exclude={
                "scope",
                "max_live_keys",
                "exchange",
                "exchange_topic",
                "exchange_snapshot_every",
                "exchange_trim_after",
            }
        )

    @field_validator("n_components")
    @classmethod
    def _positive_k(cls, value):
        if isinstance(value, int) and value < 1:
            raise ValueError("n_components must be 'auto' or an integer >= 1")
        return value


class GateConfig(_Strict):
    """Anomaly threshold and learning gate (:class:`streamgmm.anomaly.AnomalyGate`).

    Defaults and validation come from the gate's own spec
    (:data:`streamgmm._gate_spec.GATE_PARAMETERS`); ``enabled`` is its ``gating``.
    """

    enabled: bool = _GATE["gating"]
    false_alarm_rate: float = _GATE["false_alarm_rate"]
    exclusion_ratio: float = _GATE["exclusion_ratio"]
    refresh_every: int = _GATE["refresh_every"]
    n_calibration: int = _GATE["n_calibration"]
    n_recent: int = _GATE["n_recent"]
    stream_factor: float = _GATE["stream_factor"]
    drift_detection: bool = _GATE["drift_detection"]
    drift_threshold: float = _GATE["drift_threshold"]
    adapt_half_life: float = _GATE["adapt_half_life"]
    adapt_records: int = _GATE["adapt_records"]
    random_state: int | None = 0  # the service is reproducible by default

    @field_validator("*")
    @classmethod
    def _check_spec(cls, value: Any, info: Any) -> Any:
        # Each field is checked against the gate's spec, so the error names the field.
        name = "gating" if info.field_name == "enabled" else info.field_name
        validate_gate_params({name: value}, "the gate")
        return value

    def gate_kwargs(self) -> dict:
        """The :class:`~streamgmm.anomaly.AnomalyGate` parameters."""
        kwargs = self.model_dump(exclude={"enabled"})
        kwargs["gating"] = self.enabled
        return kwargs


class InputConfig(_Strict):
    """File/stdin source. ``path`` ``-`` means stdin."""

    path: str | None = None
    format: Literal["auto", "jsonl", "csv"] = "auto"


def _same_file(a: str, b: str) -> bool:
    """Whether paths ``a`` and ``b`` name one regular file (devices, pipes: never)."""
    try:
        return os.path.samefile(a, b) and os.path.isfile(b)
    except OSError:  # one does not exist (yet)
        return os.path.realpath(a) == os.path.realpath(b)


class OutputConfig(_Strict):
    """File/stdout sinks. ``path`` ``-`` (default) is stdout; ``dead_letter`` ``None`` means
    ``<output>.dlq.jsonl`` beside a regular file, stderr beside stdout or an output that is not
    a regular file (``/dev/null``, a named pipe)."""

    path: str | None = None
    dead_letter: str | None = None

    @model_validator(mode="after")
    def _dead_letters_beside_a_device(self) -> OutputConfig:
        # "/dev/null.dlq.jsonl" would be a new file among the devices; stderr is where
        # dead letters go beside stdout too.
        from .sinks import is_regular_output

        p = self.path
        if self.dead_letter is None and p not in (None, "-") and not is_regular_output(p):
            self.dead_letter = "<stderr>"
        return self


class KafkaConfig(_Strict):
    """Kafka source and sink (kafka-python)."""

    bootstrap_servers: str | None = None
    topics: list[str] = Field(default_factory=list)
    output_topic: str | None = None
    # None -> "<input topic>.dlq", one dead-letter topic per input topic.
    dead_letter_topic: str | None = None
    group_id: str | None = None
    # Static group membership: a restarted instance with the same id takes its partitions
    # back at once instead of waiting for its old session to expire (session_timeout_ms).
    group_instance_id: str | None = None
    client_id: str = "streamgmm"
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    max_poll_records: int = Field(2000, ge=1)
    poll_timeout_ms: int = Field(200, ge=1)
    session_timeout_ms: int = Field(10000, ge=1000)
    # How long to wait for the first broker to answer before "cannot reach Kafka" (exit 1).
    # Shorter than kafka-python's 30 s: a newcomer without a broker should not wait half a
    # minute for the message; a broker that is still starting usually answers within seconds.
    bootstrap_timeout_ms: int = Field(15000, ge=100)
    # Longest pause between reconnection attempts to a broker that went away (the backoff
    # doubles from 50 ms up to this). kafka-python's default is 30 s, so after an outage of
    # half a minute the processor could sit up to ~30 s longer before noticing the broker was
    # back; 1 s is the Java clients' default (reconnect.backoff.max.ms).
    reconnect_backoff_max_ms: int = Field(1000, ge=50)
    linger_ms: int = Field(5, ge=0)
    producer_batch_size: int = Field(262144, ge=1024)
    # processing_guarantee exactly_once: the producer's transactional id (None: group id,
    # group instance id or client id, and a random suffix per process; see processor.py) and
    # how long the broker lets an open transaction of a dead instance block its partitions.
    transactional_id: str | None = None
    transaction_timeout_ms: int = Field(10000, ge=1000)

    @field_validator("topics", mode="before")
    @classmethod
    def _split_topics(cls, v: Any) -> Any:
        return _split_csv(v)

    def client_kwargs(self, suffix: str | None = None) -> dict[str, Any]:
        """The settings every kafka-python client of the service shares (consumers, producers,
        admin clients): the brokers, the client id (``"<client_id>-<suffix>"`` if given) and
        the reconnection backoff."""
        return {
            "bootstrap_servers": (self.bootstrap_servers or "").split(","),
            "client_id": f"{self.client_id}-{suffix}" if suffix else self.client_id,
            "reconnect_backoff_max_ms": self.reconnect_backoff_max_ms,
        }


class CheckpointConfig(_Strict):
    """When and where the model state and input offsets are saved."""

    dir: str | None = None
    every_records: int | None = Field(10000, ge=1)
    every_seconds: float | None = Field(30.0, gt=0)
    keep: int = Field(3, ge=1)


class ServiceConfig(_Strict):
    """Everything ``streamgmm run`` needs.

    ``mode`` is derived: ``kafka`` when topics are configured, else ``file``.
    """

    input: InputConfig = Field(default_factory=InputConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    features: list[str] | None = None
    key_field: str | None = None
    timestamp_field: str | None = "timestamp"
    vector_field: str | None = None
    batch_size: int = Field(500, ge=1, le=1_000_000)
    max_record_bytes: int = Field(65536, ge=16)
    max_records: int | None = Field(None, ge=1)
    idle_timeout: float | None = Field(None, gt=0)
    # Live input (stdin, a pipe): a partial batch is processed once its first record has
    # waited this long, so `tail -f log | streamgmm run --input -` shows results at once.
    max_batch_wait: float = Field(0.2, gt=0)
    metrics_port: int | None = Field(None, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"
    progress: bool | None = None
    fresh: bool = False
    # Kafka Streams' names. exactly_once: outputs, dead letters, changelog state and consumed
    # offsets are committed in one Kafka transaction per checkpoint (see processor.py).
    processing_guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"

    @field_validator("features", mode="before")
    @classmethod
    def _split_features(cls, v: Any) -> Any:
        v = _split_csv(v)
        if isinstance(v, list) and not v:
            # An empty list used to mean auto-detection, silently: a typo'd or unset shell
            # variable (--features "$COLS") then scored whatever numeric fields came first.
            # Auto-detection is asked for by leaving the setting out.
            raise ValueError(
                "is empty: name the feature fields (e.g. --features a,b,c), or leave the "
                "setting out to detect them from the first records"
            )
        return v

    @field_validator("features")
    @classmethod
    def _unique_features(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and len(set(v)) != len(v):
            raise ValueError(f"duplicate feature names in {v}")
        return v

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v

    @model_validator(mode="after")
    def _check_mode(self) -> ServiceConfig:
        k = self.kafka
        if k.topics:
            missing = [n for n in ("bootstrap_servers", "group_id") if not getattr(k, n)]
            if missing:
                raise ValueError(f"Kafka input needs kafka.{' and kafka.'.join(missing)}")
            if self.input.path is not None:
                raise ValueError("give either an input path or Kafka topics, not both")
            if not k.output_topic and self.output.path is None:
                raise ValueError("Kafka input needs kafka.output_topic (or an output path)")
        else:
            if self.input.path is None:
                raise ValueError("no input: give --input PATH|- or Kafka --topic")
            if k.output_topic:
                raise ValueError("kafka.output_topic is set but no Kafka input topic is given")
            # Writing over the input emptied it before a line was read (exit 0, data gone).
            for name, path in (
                ("output", self.output.path),
                ("dead letter", self.output.dead_letter),
            ):
                if (
                    self.input.path != "-"
                    and path not in (None, "-", "<stderr>")
                    and _same_file(path, self.input.path)
                ):
                    raise ValueError(
                        f"the {name} file {path} is the input file: it would be overwritten; "
                        "write it elsewhere"
                    )
        if self.vector_field is not None and self.features is None:
            raise ValueError("vector_field needs an explicit feature list (features)")
        if self.model.scope == "partition" and not k.topics:
            raise ValueError(
                "model.scope 'partition' needs Kafka input (a file has one partition: use "
                "'global', or 'key' with key_field)"
            )
        if self.model.scope == "key" and not k.topics and self.key_field is None:
            raise ValueError("model.scope 'key' on a file needs key_field (the key's field)")
        if self.processing_guarantee == "exactly_once":
            files = [
                name
                for name, used in (
                    ("input", not k.topics),
                    ("output", self.output.path is not None or not k.output_topic),
                    ("dead_letter", self.output.dead_letter is not None),
                )
                if used
            ]
            if files:
                raise ValueError(
                    "processing_guarantee 'exactly_once' needs Kafka input, a Kafka output topic "
                    "and Kafka dead-letter topics (files cannot take part in a Kafka "
                    f"transaction), but {' and '.join(files)} is a file or stdio: use "
                    "'at_least_once' or Kafka topics"
                )
            if self.model.scope == "global" and not self.model.exchange:
                raise ValueError(
                    "processing_guarantee 'exactly_once' with model.scope 'global' needs the "
                    "model exchange (model.exchange, --model-exchange: the model's increments "
                    "join the transaction); or use model.scope 'partition' or 'key' (their "
                    "state moves with its partitions through the changelog in the transaction)"
                )
        if self.model.exchange and (not k.topics or self.model.scope != "global"):
            raise ValueError(
                "model.exchange (one model across a consumer group) needs Kafka input and "
                "model.scope 'global'"
            )
        return self

    @property
    def mode(self) -> str:
        return "kafka" if self.kafka.topics else "file"

    def fingerprint(self) -> str:
        """Hash of the settings a checkpoint's model depends on (model + gate hyper-parameters).

        The feature list is checked on its own so the error can name the difference.
        """
        blob = json.dumps(
            {"model": self.model.estimator_params(), "gate": self.gate.model_dump()},
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _split_csv(v: Any) -> Any:
    if isinstance(v, str):
        return [s.strip() for s in v.split(",") if s.strip()]
    return v


def _deep_merge(base: dict, over: Mapping) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def env_overrides(env: Mapping[str, str]) -> dict:
    """Nested dict from ``STREAMGMM_A__B=value`` variables (values parsed as YAML scalars)."""
    out: dict = {}
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX:
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        # "a,b,c" parses as a plain string; list fields split it in their validators.
        node = out
        for p in path[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"invalid configuration: {name} conflicts with another variable")
        node[path[-1]] = value
    return out


def _format_errors(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        got = e.get("input")
        where = f"{loc}: " if loc else ""
        suffix = f" (got {got!r})" if loc and not isinstance(got, dict | list) else ""
        parts.append(f"{where}{msg}{suffix}")
    return "invalid configuration: " + "; ".join(parts)


def load_config(
    path: str | os.PathLike | None = None,
    overrides: Mapping | None = None,
    env: Mapping[str, str] | None = None,
) -> ServiceConfig:
    """Build a :class:`ServiceConfig` from a YAML file, the environment and overrides.

    Parameters
    ----------
    path
        YAML file, optional.
    overrides
        Nested dict of settings that win over everything (the CLI flags).
    env
        Environment to read ``STREAMGMM_*`` from; ``os.environ`` by default.

    Raises
    ------
    ConfigError
        With one readable message naming every invalid field.
    """
    data: dict = {}
    if path is not None:
        p = Path(path)
        try:
            loaded = yaml.safe_load(p.read_text())
        except OSError as e:
            raise ConfigError(f"cannot read config file {p}: {e.strerror or e}") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            what = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(f"config file {p} is not valid YAML{where}: {what}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping at the top level")
        data = loaded
    data = _deep_merge(data, env_overrides(os.environ if env is None else env))
    if overrides:
        data = _deep_merge(data, overrides)
    try:
        return ServiceConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e)) from None
