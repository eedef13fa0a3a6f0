"""``streamgmm`` command line: ``run``, ``inspect`` and ``demo``.

Exit codes: 0 success (also after SIGTERM/SIGINT), 1 runtime failure (e.g. Kafka unreachable,
outputs not delivered), 2 invalid configuration, an unusable path or a checkpoint refused for
it, 141 when the reader of stdout went away (``streamgmm inspect ck | head``).

The help of every ``run`` flag ends with its default, read from the configuration model
(:class:`~streamgmm.service.config.ServiceConfig`), and lists its choices where the model has a
fixed set: the flags cannot drift from the settings they override.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import math
import os
import sys
import time
import typing
import zipfile
from pathlib import Path

from .checkpoint import CheckpointError, CheckpointRefused, latest_checkpoint, read_checkpoint
from .config import ConfigError, ServiceConfig, load_config

__all__ = ["main"]

log = logging.getLogger("streamgmm.service")

# flag -> dotted config path (CLI flags win over YAML and STREAMGMM_* variables)
_RUN_FLAGS = {
    "input": "input.path",
    "input_format": "input.format",
    "output": "output.path",
    "dead_letter": "output.dead_letter",
    "features": "features",
    "checkpoint_dir": "checkpoint.dir",
    "checkpoint_every": "checkpoint.every_records",
    "checkpoint_interval": "checkpoint.every_seconds",
    "keep_checkpoints": "checkpoint.keep",
    "batch_size": "batch_size",
    "max_record_bytes": "max_record_bytes",
    "max_records": "max_records",
    "idle_timeout": "idle_timeout",
    "max_batch_wait": "max_batch_wait",
    "bootstrap_servers": "kafka.bootstrap_servers",
    "topic": "kafka.topics",
    "output_topic": "kafka.output_topic",
    "dead_letter_topic": "kafka.dead_letter_topic",
    "group_id": "kafka.group_id",
    "max_poll_records": "kafka.max_poll_records",
    "n_components": "model.n_components",
    "model_scope": "model.scope",
    "model_exchange": "model.exchange",
    "exchange_snapshot_every": "model.exchange_snapshot_every",
    "exchange_trim_after": "model.exchange_trim_after",
    "max_live_keys": "model.max_live_keys",
    "covariance_type": "model.covariance_type",
    "half_life": "model.half_life",
    "warm_up": "model.warm_up",
    "n_init": "model.n_init",
    "random_state": "model.random_state",
    "false_alarm_rate": "gate.false_alarm_rate",
    "gate": "gate.enabled",
    "key_field": "key_field",
    "timestamp_field": "timestamp_field",
    "vector_field": "vector_field",
    "metrics_port": "metrics_port",
    "metrics_host": "metrics_host",
    "log_level": "log_level",
    "log_format": "log_format",
    "progress": "progress",
    "fresh": "fresh",
    "processing_guarantee": "processing_guarantee",
    "transactional_id": "kafka.transactional_id",
}


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        d = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            d["exc"] = self.formatException(record.exc_info)
        return json.dumps(d, default=str)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted (like logging's own
    last-resort handler): in-process callers such as tests and notebooks replace it."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def setup_logging(level: str = "INFO", fmt: str = "json") -> None:
    handler = _StderrHandler()
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("streamgmm")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # kafka-python logs every reconnect at INFO; keep its warnings only.
    logging.getLogger("kafka").setLevel(logging.WARNING)


def _field(path: str):
    """The pydantic field of ``ServiceConfig`` at dotted ``path``."""
    model = ServiceConfig
    *parents, leaf = path.split(".")
    for part in parents:
        model = model.model_fields[part].annotation
    return model.model_fields[leaf]


def _default_text(path: str) -> str:
    value = _field(path).get_default(call_default_factory=True)
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ",".join(value) or "none"
    return str(value)


def _choices(path: str) -> list | None:
    args = typing.get_args(_field(path).annotation)
    return list(args) if args and all(isinstance(a, str) for a in args) else None


def _parser() -> argparse.ArgumentParser:
    from streamgmm import __version__

    p = argparse.ArgumentParser(
        prog="streamgmm",
        description="Online Gaussian mixture stream processor: scores each record before "
        "learning it, flags anomalies, checkpoints model + offsets.",
        epilog="examples:\n"
        "  streamgmm run --input data.jsonl --output scored.jsonl --checkpoint-dir ck/\n"
        "  streamgmm run --config configs/file.yaml\n"
        "  streamgmm inspect ck/\n"
        "  streamgmm demo --plot demo.png\n"
        "'streamgmm run --help' lists every setting with its default.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"streamgmm {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="{run,inspect,demo}")
    S = argparse.SUPPRESS

    r = sub.add_parser(
        "run",
        help="process a file, stdin or Kafka topics",
        description="Score and learn a stream. Settings: the defaults shown here, overridden "
        "by --config, then by STREAMGMM_* environment variables, then by these flags.",
        argument_default=S,
    )

    def opt(group, flag: str, text: str, default: str | None = None, **kw) -> None:
        """A flag whose help ends with its default (read from the configuration) and choices."""
        dest = kw.pop("dest", flag[2:].replace("-", "_"))
        path = _RUN_FLAGS[dest]
        choices = _choices(path)
        if choices and "action" not in kw:
            kw["choices"] = choices
        shown = default if default is not None else _default_text(path)
        group.add_argument(flag, dest=dest, help=f"{text} (default: {shown})", **kw)

    r.add_argument("--config", metavar="FILE", help="YAML configuration file (see configs/)")
    g = r.add_argument_group("file mode")
    opt(g, "--input", "JSONL or CSV file, or - for stdin", metavar="PATH|-")
    opt(
        g,
        "--input-format",
        "record format; auto: CSV for .csv files, JSONL for other files, stdin by its first line",
    )
    opt(g, "--output", "JSONL output, - for stdout", default="-", metavar="PATH|-")
    opt(
        g,
        "--dead-letter",
        "JSONL file for invalid records, with the reason",
        default="<output>.dlq.jsonl beside a regular file, else stderr",
        metavar="PATH",
    )
    g = r.add_argument_group("Kafka mode")
    opt(g, "--bootstrap-servers", "Kafka brokers, comma separated", metavar="HOST:PORT")
    opt(g, "--topic", "input topic(s), comma separated", metavar="TOPIC")
    opt(g, "--output-topic", "topic for scored records", metavar="TOPIC")
    opt(
        g,
        "--dead-letter-topic",
        "topic for invalid records",
        default="<input topic>.dlq",
        metavar="TOPIC",
    )
    opt(g, "--group-id", "consumer group", metavar="GROUP")
    opt(g, "--max-poll-records", "records per poll at most", metavar="N")
    opt(
        g,
        "--processing-guarantee",
        "at_least_once: a crash repeats outputs since the last checkpoint; exactly_once: "
        "outputs, dead letters, model state and offsets commit in one Kafka transaction per "
        "checkpoint (read them with isolation.level read_committed)",
    )
    opt(
        g,
        "--transactional-id",
        "exactly_once: the producer's transactional id, unique per instance and kept across "
        "its restarts (a restart then fences its predecessor at once)",
        default="<group>-<instance>-<random>",
        metavar="ID",
    )
    g = r.add_argument_group("records")
    opt(
        g,
        "--features",
        "feature fields, in order",
        default="numeric fields of the first batch, except id-, counter- and label-like ones",
        metavar="a,b,c",
    )
    opt(
        g,
        "--key-field",
        "field copied to the output as its key (and, with --model-scope key, naming the model)",
        metavar="FIELD",
    )
    opt(
        g,
        "--timestamp-field",
        "field copied to the output as its timestamp; a value that is neither a number nor "
        "an ISO 8601 string is left out",
        metavar="FIELD",
    )
    opt(g, "--vector-field", "read the features as one array in this field", metavar="FIELD")
    opt(g, "--batch-size", "records scored and learned together", metavar="N")
    opt(g, "--max-record-bytes", "larger records are dead letters", metavar="N")
    opt(g, "--max-records", "stop after this many input records", metavar="N")
    opt(g, "--idle-timeout", "stop after this long without input", metavar="SECONDS")
    opt(
        g,
        "--max-batch-wait",
        "live input (stdin, pipe): process a partial batch after this long",
        metavar="SECONDS",
    )
    g = r.add_argument_group("checkpoints")
    opt(
        g,
        "--checkpoint-dir",
        "where model + offsets are saved",
        default="none: no checkpoints",
        metavar="DIR",
    )
    opt(g, "--checkpoint-every", "records between checkpoints", metavar="N")
    opt(g, "--checkpoint-interval", "seconds between checkpoints", metavar="SECONDS")
    opt(g, "--keep-checkpoints", "checkpoints kept", metavar="N")
    opt(
        g,
        "--fresh",
        "ignore existing checkpoints and start a new model",
        action="store_const",
        const=True,
    )
    g = r.add_argument_group("model")
    opt(
        g,
        "--model-scope",
        "one model for the whole input, per input partition (Kafka), or per record key "
        "(Kafka message key, or --key-field); keyless records go to their partition's pooled "
        "model",
    )
    opt(g, "--max-live-keys", "per-key models kept decoded in memory", metavar="N")
    opt(
        g,
        "--model-exchange",
        "global scope on Kafka with several instances: one model across the consumer group "
        "(instances exchange sufficient-statistics increments through the topic "
        "<group>-<input topic>-exchange at every checkpoint)",
        action="store_const",
        const=True,
    )
    opt(
        g,
        "--exchange-snapshot-every",
        "model exchange: publish the group's model to <exchange topic>-snapshot every N "
        "exchanges (0: never); joiners start from the newest snapshot",
        metavar="N",
    )
    opt(
        g,
        "--exchange-trim-after",
        "model exchange: delete exchange records covered by a snapshot at least this old",
        metavar="SECONDS",
    )
    opt(
        g,
        "--n-components",
        "mixture components: an integer, or auto (chosen at the warm-up, then born, merged "
        "and removed online)",
        metavar="K|auto",
    )
    opt(g, "--covariance-type", "shape of each component")
    opt(
        g,
        "--half-life",
        "samples after which a record's weight halves, for drifting streams; none: stationary",
        metavar="N",
    )
    opt(
        g,
        "--warm-up",
        "rows fitted in batch before learning online",
        default="max(1000, 2 K (D+1)), K=3 for auto",
        metavar="N",
    )
    opt(g, "--n-init", "k-means++ starts of the warm-up fit", metavar="N")
    opt(g, "--random-state", "seed of the model", metavar="SEED")
    opt(g, "--false-alarm-rate", "target share of normal records flagged", metavar="RATE")
    opt(
        g,
        "--no-gate",
        "learn every record, even those far beyond the flag threshold",
        default="records far beyond the flag threshold are not learned",
        dest="gate",
        action="store_const",
        const=False,
    )
    g = r.add_argument_group("operations")
    opt(g, "--metrics-port", "serve /metrics and /healthz on this port (0: any)", metavar="PORT")
    opt(g, "--metrics-host", "address the metrics server listens on", metavar="HOST")
    opt(g, "--log-level", "log level", type=str.upper)
    opt(g, "--log-format", "log lines as JSON or plain text")
    opt(
        g,
        "--progress",
        "show a progress bar for a file input",
        default="when stderr is a terminal",
        action="store_const",
        const=True,
    )
    opt(
        g,
        "--no-progress",
        "never show a progress bar",
        default="when stderr is a terminal",
        dest="progress",
        action="store_const",
        const=False,
    )

    i = sub.add_parser(
        "inspect",
        help="summarise a checkpoint (directory or file), or the state in a changelog topic",
    )
    i.add_argument(
        "path",
        nargs="?",
        help="checkpoint directory (its newest checkpoint) or .npz file; omit with "
        "--bootstrap-servers/--topic/--group-id to read the Kafka changelog",
    )
    i.add_argument("--bootstrap-servers", metavar="HOST:PORT", help="read state from Kafka")
    i.add_argument("--topic", metavar="TOPIC", help="input topic whose state to read")
    i.add_argument("--group-id", metavar="GROUP", help="consumer group of the processor")
    i.add_argument(
        "--changelog-topic",
        metavar="TOPIC",
        help="changelog topic (default: <group>-<topic>-state)",
    )
    i.add_argument("--json", action="store_true", help="machine-readable output")

    d = sub.add_parser("demo", help="synthetic multi-sensor stream with drift and anomalies")
    d.add_argument(
        "--plot",
        metavar="OUT.png",
        help="write a figure (needs matplotlib: pip install 'streamgmm[plot]')",
    )
    d.add_argument(
        "--n",
        type=_demo_records,
        default=20000,
        help=f"records, at least {demo_min_records} (default: 20000)",
    )
    d.add_argument("--seed", type=int, default=7, help="seed of the stream and model (default: 7)")
    d.add_argument(
        "--workdir", metavar="DIR", help="keep the demo's files here (default: a temp dir)"
    )
    return p


demo_min_records = 2000


def _demo_records(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if n < demo_min_records:
        raise argparse.ArgumentTypeError(
            f"the demo needs at least {demo_min_records} records (its model warms up on the "
            f"first 1000), got {n}"
        )
    return n


def _overrides(ns: argparse.Namespace) -> dict:
    out: dict = {}
    for flag, path in _RUN_FLAGS.items():
        if hasattr(ns, flag):
            node = out
            *parents, leaf = path.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = getattr(ns, flag)
    return out


def _run(ns) -> int:
    try:
        cfg = load_config(getattr(ns, "config", None), overrides=_overrides(ns))
    except ConfigError as e:
        print(f"streamgmm: {e}", file=sys.stderr)
        return 2
    setup_logging(cfg.log_level, cfg.log_format)
    if cfg.mode == "kafka":
        # Said up front: reaching a broker that is not there takes kafka-python ~30 s to report.
        k = cfg.kafka
        log.info(
            "connecting to Kafka at %s: group %s, topics %s",
            k.bootstrap_servers,
            k.group_id,
            k.topics,
        )
    from .processor import Processor

    try:
        proc = Processor(cfg)  # restores checkpoints and, in Kafka mode, connects
    except CheckpointError as e:
        print(f"streamgmm: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        return _run_failed(e, cfg)
    try:
        return proc.run()
    except CheckpointRefused as e:  # the input's fields differ from the checkpoint's features
        print(f"streamgmm: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        raise  # stdout's reader went away: main() ends quietly
    except Exception as e:
        return _run_failed(e, cfg)


def _run_failed(e: Exception, cfg) -> int:
    """One message and the exit code for a run that could not start or go on."""
    if isinstance(e, OSError) and e.errno in _PATH_ERRORS and e.filename is not None:
        # A path of the configuration that cannot be used as given: the user's to fix.
        print(f"streamgmm: {e.filename}: {e.strerror}", file=sys.stderr)
        return 2
    from .sources import InputError

    if isinstance(e, InputError):  # the input file as a whole: the user's to fix
        print(f"streamgmm: {e}", file=sys.stderr)
        return 2
    if _is_kafka_error(e):
        # Connectivity and broker errors are the user's to fix, not bugs: no traceback
        # (it is logged at DEBUG).
        log.debug("Kafka error", exc_info=True)
        servers = cfg.kafka.bootstrap_servers
        print(
            f"streamgmm: cannot reach Kafka at {servers}: {_describe(e)}. Is a broker "
            "running there? (kafka.bootstrap_servers, --bootstrap-servers)",
            file=sys.stderr,
        )
        return 1
    log.exception("stream processor failed: %s", _describe(e))
    print(f"streamgmm: failed: {_describe(e)}", file=sys.stderr)
    return 1


# errno values that mean "this path cannot be used as given" (wrong path, a folder, no access)
_PATH_ERRORS = frozenset(
    {errno.ENOENT, errno.EISDIR, errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.EROFS}
)


def _is_kafka_error(e: BaseException) -> bool:
    return type(e).__module__.split(".")[0] == "kafka"


def _describe(e: BaseException) -> str:
    """``Type: message``, once (kafka-python's messages already start with their type)."""
    name, text = type(e).__name__, str(e)
    text = text.removeprefix(f"{name}: ").removeprefix(name).strip(": ")
    return f"{name}: {text}" if text else name


def summarise(ck) -> dict:
    """JSON-able summary of a loaded checkpoint (what ``inspect --json`` prints)."""
    from .processor import checkpoint_blobs, model_from_checkpoint

    if ck.meta.get("states") is not None:  # model scope partition/key: one entry per state
        return {
            "path": str(ck.path),
            "seq": ck.seq,
            "created": ck.meta.get("created"),
            "format_version": ck.meta.get("format_version"),
            "scope": ck.meta.get("scope"),
            "features": ck.meta.get("features"),
            "offsets": ck.meta.get("offsets"),
            "counts": ck.meta.get("counts"),
            "states": [
                {**entry, **summarise_state(blob)}
                for entry, blob in zip(ck.meta["states"], checkpoint_blobs(ck), strict=True)
            ],
        }
    model, gate = model_from_checkpoint(ck)
    meta = ck.meta
    weights = means = None
    if getattr(model, "n_samples_seen_", 0):
        try:
            weights = [float(w) for w in model.weights_]
            means = [[float(v) for v in row] for row in model.means_]
        except (AttributeError, ValueError):  # still buffering its warm-up: no components yet
            pass
    try:
        thr = float(gate.threshold_for(model))
    except Exception:
        thr = math.nan
    return {
        "path": str(ck.path),
        "seq": ck.seq,
        "created": meta.get("created"),
        "format_version": meta.get("format_version"),
        "fingerprint": meta.get("fingerprint"),
        "n_samples_seen": int(getattr(model, "n_samples_seen_", 0)),
        "warming_up": bool(getattr(model, "warming_up_", True)),
        "features": meta.get("features"),
        "n_components": model.n_components,
        "covariance_type": model.covariance_type,
        "offsets": meta.get("offsets"),
        "counts": meta.get("counts"),
        "weights": weights,
        "means": means,
        "threshold": thr if math.isfinite(thr) else None,
        "config": meta.get("config"),
    }


def _looks_like_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a zip archive, as every ``.npz`` checkpoint is (checked before numpy
    reads it: for any other file numpy's error talks about loading pickles)."""
    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False


def summarise_state(blob: bytes) -> dict:
    """JSON-able summary of one encoded model+gate state (a changelog message, a checkpoint
    entry)."""
    from .state import decode_slot

    model, gate, meta = decode_slot(blob)
    try:
        thr = float(gate.threshold_for(model))
    except Exception:
        thr = math.nan
    seen = int(getattr(model, "n_samples_seen_", 0))
    means = weights = None
    if seen:
        with contextlib.suppress(AttributeError, ValueError):
            means = [[float(v) for v in row] for row in model.means_]
            weights = [float(w) for w in model.weights_]
    return {
        "n_samples_seen": seen,
        "rows_own": seen - int(meta.get("seen_at_birth", 0)) + int(meta.get("pre_birth", 0)),
        # Offered but not learned (n_components="auto": held back while a component may be
        # forming): rows_own + held_back_own is every valid record the state was given.
        "held_back_own": int(getattr(model, "n_held_back_", 0)) - int(meta.get("held_at_birth", 0)),
        "warming_up": bool(getattr(model, "warming_up_", True)),
        "threshold": thr if math.isfinite(thr) else None,
        "means": means,
        "weights": weights,
        "bytes": len(blob),
    }


def summarise_changelog(bootstrap: str, topic: str, group: str, changelog: str | None) -> dict:
    """Every partition's and key's state in the changelog of ``topic`` (read-only)."""
    from kafka import KafkaConsumer

    from .changelog import changelog_topic, read_changelog
    from .state import SourcePartition

    name = changelog or changelog_topic(group, topic)
    c = KafkaConsumer(
        bootstrap_servers=bootstrap.split(","),
        enable_auto_commit=False,
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        isolation_level="read_committed",  # exactly_once: not an aborted transaction's states
    )
    try:
        parts = sorted(c.partitions_for_topic(name) or ())
        if not parts:
            raise CheckpointError(f"changelog topic {name!r} does not exist or has no partitions")
        got = read_changelog(c, name, [SourcePartition.kafka(topic, p) for p in parts])
    finally:
        with contextlib.suppress(Exception):
            c.close()
    out = []
    for sp, ps in sorted(got.items()):
        states = []
        for sk, (blob, learned_to) in sorted(
            ps.states.items(), key=lambda kv: (kv[0].key is not None, kv[0].key or "")
        ):
            states.append({"key": sk.key, "learned_to": learned_to, **summarise_state(blob)})
        out.append(
            {"partition": sp.partition, "offset": ps.offset, "seq": ps.seq, "states": states}
        )
    return {"topic": topic, "changelog": name, "partitions": out}


def _print_changelog(s: dict) -> None:
    print(f"changelog    {s['changelog']} (state of {s['topic']})")
    for p in s["partitions"]:
        if p["offset"] is None:
            print(f"partition {p['partition']:<3} no state yet")
            continue
        print(
            f"partition {p['partition']:<3} next offset {p['offset']} (checkpoint #{p['seq']}), "
            f"{len(p['states'])} states"
        )
        for st in p["states"]:
            who = "(partition model)" if st["key"] is None else f"key {st['key']}"
            thr = st["threshold"]
            print(
                f"  {who:<24} {st['rows_own']} rows learned"
                + (f", {st['held_back_own']} held back" if st["held_back_own"] else "")
                + (" (warming up)" if st["warming_up"] else "")
                + (f", threshold {thr:.4g}" if thr is not None else "")
            )


def _inspect(ns) -> int:
    setup_logging("WARNING", "text")
    kafka_args = (ns.bootstrap_servers, ns.topic, ns.group_id)
    if any(kafka_args) or ns.changelog_topic:
        if ns.path is not None or not all(kafka_args):
            print(
                "streamgmm: inspect a changelog with --bootstrap-servers, --topic and "
                "--group-id (and no path)",
                file=sys.stderr,
            )
            return 2
        try:
            s = summarise_changelog(*kafka_args, ns.changelog_topic)
        except Exception as e:
            print(f"streamgmm: {_describe(e) if _is_kafka_error(e) else e}", file=sys.stderr)
            return 1
        if ns.json:
            print(json.dumps(s, indent=2))
        else:
            _print_changelog(s)
        return 0
    if ns.path is None:
        print("streamgmm: inspect needs a checkpoint path, or a changelog", file=sys.stderr)
        return 2
    path = Path(ns.path)
    try:
        if path.is_dir():
            ck = latest_checkpoint(path)
            if ck is None:
                print(f"streamgmm: no checkpoint in {path}", file=sys.stderr)
                return 1
        elif path.exists():
            if not _looks_like_checkpoint(path):
                print(f"streamgmm: {path} is not a streamgmm checkpoint", file=sys.stderr)
                return 1
            ck = read_checkpoint(path)
        else:
            print(f"streamgmm: {path}: no such file or directory", file=sys.stderr)
            return 2
        s = summarise(ck)
    except CheckpointError as e:
        print(f"streamgmm: {e}", file=sys.stderr)
        return 1
    if ns.json:
        print(json.dumps(s, indent=2))
        return 0
    created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s["created"] or 0))
    print(f"checkpoint   {s['path']} (#{s['seq']}, {created})")
    if "states" in s:
        print(f"scope        {s['scope']}, {len(s['states'])} states")
        for st in s["states"]:
            who = "(pooled model)" if st["key"] is None else f"key {st['key']}"
            held = f", {st['held_back_own']} held back" if st["held_back_own"] else ""
            print(f"  {who:<24} {st['rows_own']} rows learned{held}")
        return 0
    print(
        f"model        {s['n_components']} components, {s['covariance_type']} covariance, "
        f"{s['n_samples_seen']} rows learned" + (" (warming up)" if s["warming_up"] else "")
    )
    print(f"features     {', '.join(s['features'] or []) or '(not fixed yet)'}")
    c = s["counts"] or {}
    print(
        f"records      {c.get('in', 0)} in, {c.get('out', 0)} out, {c.get('dead', 0)} dead "
        f"letters, {c.get('anomalies', 0)} anomalies"
    )
    thr = s["threshold"]
    print(f"threshold    {thr:.4g}" if thr is not None else "threshold    (not calibrated)")
    offs = s["offsets"] or {}
    for k, v in sorted({**offs.get("kafka", {}), **offs.get("files", {})}.items()):
        print(f"offset       {k} -> next {v}")
    if s["weights"] is not None:
        print("components   weight   mean")
        for k, (w, mu) in enumerate(zip(s["weights"], s["means"], strict=True)):
            print(f"  {k:>3}        {w:6.3f}   [" + ", ".join(f"{v:.4g}" for v in mu) + "]")
    return 0


def _demo(ns) -> int:
    from .demo import check_plot_path, run_demo

    problem = check_plot_path(ns.plot) if ns.plot else None
    if ns.workdir is not None and Path(ns.workdir).exists() and not Path(ns.workdir).is_dir():
        problem = f"--workdir: {ns.workdir} exists and is not a folder"
    if problem:
        print(f"streamgmm demo: {problem}", file=sys.stderr)
        return 2
    setup_logging("WARNING", "text")
    return run_demo(n=ns.n, seed=ns.seed, plot=ns.plot, workdir=ns.workdir)


def main(argv: list[str] | None = None) -> int:
    ns = _parser().parse_args(argv)
    commands = {"run": _run, "inspect": _inspect, "demo": _demo}
    try:
        return commands[ns.command](ns)
    except BrokenPipeError:
        # The reader went away (``streamgmm inspect ck | head``): not an error of ours. Python
        # would complain again when it flushes stdout at exit, so stdout goes to /dev/null.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # like a program killed by SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
