"""``streamgmm`` command line: ``run``, ``inspect`` and ``demo``.

Exit codes: 0 success (also after SIGTERM/SIGINT), 1 runtime failure (e.g. Kafka unreachable,
outputs not delivered), 2 invalid configuration or a checkpoint refused for it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

from .checkpoint import CheckpointError, CheckpointRefused, latest_checkpoint, read_checkpoint
from .config import ConfigError, load_config

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


def setup_logging(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="streamgmm",
        description="Online Gaussian mixture stream processor: scores each record before "
        "learning it, flags anomalies, checkpoints model + offsets.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    S = argparse.SUPPRESS

    r = sub.add_parser("run", help="process a file, stdin or Kafka topics", argument_default=S)
    r.add_argument("--config", help="YAML configuration file (see configs/)")
    g = r.add_argument_group("file mode")
    g.add_argument("--input", metavar="PATH|-", help="JSONL or CSV file, or - for stdin")
    g.add_argument("--input-format", choices=["auto", "jsonl", "csv"])
    g.add_argument("--output", metavar="PATH|-", help="JSONL output (default stdout)")
    g.add_argument(
        "--dead-letter",
        metavar="PATH",
        help="JSONL dead letters (default <output>.dlq.jsonl, stderr for stdout)",
    )
    g = r.add_argument_group("Kafka mode")
    g.add_argument("--bootstrap-servers", metavar="HOST:PORT")
    g.add_argument("--topic", help="input topic(s), comma separated")
    g.add_argument("--output-topic")
    g.add_argument("--dead-letter-topic", help="default: <input topic>.dlq")
    g.add_argument("--group-id")
    g.add_argument("--max-poll-records")
    g = r.add_argument_group("records")
    g.add_argument(
        "--features",
        metavar="a,b,c",
        help="feature fields (default: numeric fields of the first valid record)",
    )
    g.add_argument("--key-field")
    g.add_argument("--timestamp-field")
    g.add_argument("--vector-field", help="read the features as an array in this field")
    g.add_argument("--batch-size")
    g.add_argument("--max-record-bytes")
    g.add_argument("--max-records", help="stop after this many input records")
    g.add_argument("--idle-timeout", metavar="SECONDS", help="stop after this long without input")
    g.add_argument(
        "--max-batch-wait",
        metavar="SECONDS",
        help="live input (stdin, pipe): process a partial batch after this long (default 0.2)",
    )
    g = r.add_argument_group("checkpoints")
    g.add_argument("--checkpoint-dir", metavar="DIR")
    g.add_argument("--checkpoint-every", metavar="N", help="records between checkpoints")
    g.add_argument("--checkpoint-interval", metavar="SECONDS")
    g.add_argument("--keep-checkpoints", metavar="N")
    g.add_argument(
        "--fresh",
        action="store_const",
        const=True,
        help="ignore existing checkpoints and start a new model",
    )
    g = r.add_argument_group("model")
    g.add_argument("--n-components")
    g.add_argument("--covariance-type")
    g.add_argument("--half-life", help="samples; forgetting for drifting streams")
    g.add_argument("--warm-up")
    g.add_argument("--n-init")
    g.add_argument("--random-state")
    g.add_argument("--false-alarm-rate")
    g.add_argument(
        "--no-gate",
        dest="gate",
        action="store_const",
        const=False,
        help="learn from flagged records too",
    )
    g = r.add_argument_group("operations")
    g.add_argument("--metrics-port", help="serve /metrics and /healthz on this port (0: any)")
    g.add_argument("--metrics-host")
    g.add_argument("--log-level")
    g.add_argument("--log-format", choices=["json", "text"])
    g.add_argument("--progress", dest="progress", action="store_const", const=True)
    g.add_argument("--no-progress", dest="progress", action="store_const", const=False)

    i = sub.add_parser("inspect", help="summarise a checkpoint (directory or file)")
    i.add_argument("path")
    i.add_argument("--json", action="store_true", help="machine-readable output")

    d = sub.add_parser("demo", help="synthetic multi-sensor stream with drift and anomalies")
    d.add_argument("--plot", metavar="OUT.png", help="write a figure (needs matplotlib)")
    d.add_argument("--n", type=int, default=20000, help="records (default 20000)")
    d.add_argument("--seed", type=int, default=7)
    d.add_argument("--workdir", help="keep the demo's files here (default: a temp dir)")
    return p


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
    from .processor import Processor

    try:
        proc = Processor(cfg)
    except CheckpointError as e:
        print(f"streamgmm: {e}", file=sys.stderr)
        return 2
    try:
        return proc.run()
    except CheckpointRefused as e:  # the input's fields differ from the checkpoint's features
        print(f"streamgmm: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"streamgmm: {e.strerror}: {e.filename}", file=sys.stderr)
        return 2
    except Exception as e:
        log.exception("stream processor failed: %s", e)
        print(f"streamgmm: failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


def summarise(ck) -> dict:
    """JSON-able summary of a loaded checkpoint (what ``inspect --json`` prints)."""
    from .processor import model_from_checkpoint

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


def _inspect(ns) -> int:
    setup_logging("WARNING", "text")
    path = Path(ns.path)
    try:
        if path.is_dir():
            ck = latest_checkpoint(path)
            if ck is None:
                print(f"streamgmm: no checkpoint in {path}", file=sys.stderr)
                return 1
        elif path.exists():
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


def main(argv: list[str] | None = None) -> int:
    ns = _parser().parse_args(argv)
    if ns.command == "run":
        code = _run(ns)
    elif ns.command == "inspect":
        code = _inspect(ns)
    else:
        from .demo import run_demo

        setup_logging("WARNING", "text")
        code = run_demo(n=ns.n, seed=ns.seed, plot=ns.plot, workdir=ns.workdir)
    return code


if __name__ == "__main__":
    sys.exit(main())
