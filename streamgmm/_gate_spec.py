"""The one parameter spec of the anomaly gate, shared by every face that exposes it.

:class:`streamgmm.anomaly.AnomalyGate`, :class:`streamgmm.river.GaussianMixtureDetector` and the
service configuration (``gate`` section) take their defaults and their validation from here, so
that the three cannot drift apart again.

Each entry is ``name: (default, constraints, doc)``. The constraints are written as plain data,
``("interval", type, low, high, closed)``, ``"boolean"`` or ``None``, and turned into
scikit-learn's parameter-validation vocabulary only when something is validated: the service's
configuration reads the defaults without importing scikit-learn (the CLI starts in 0.3 s).
"""

from __future__ import annotations

from numbers import Integral, Real

__all__ = ["GATE_DEFAULTS", "GATE_PARAMETERS", "gate_constraints", "validate_gate_params"]

GATE_PARAMETERS: dict = {
    "false_alarm_rate": (
        0.01,
        [("interval", Real, 0.0, 1.0, "neither")],
        "Target fraction of normal records flagged (tail probability below it).",
    ),
    "exclusion_ratio": (
        0.05,
        [("interval", Real, 0.0, 1.0, "right")],
        "A record is kept out of the model only if its tail probability is below "
        "``exclusion_ratio * false_alarm_rate``: far more extreme than the flag threshold, so "
        "the normal tail is still learned (1.0 would drop every flagged record).",
    ),
    "refresh_every": (
        1000,
        [("interval", Integral, 1, None, "left")],
        "Records between recalibrations of the reference score distribution.",
    ),
    "n_calibration": (
        2000,
        [("interval", Integral, 100, None, "left")],
        "Records drawn from the model at each calibration.",
    ),
    "n_recent": (
        2000,
        [("interval", Integral, 100, None, "left")],
        "Recent scores of the stream kept to check the model's calibration against.",
    ),
    "stream_factor": (
        4.0,
        [("interval", Real, 1.0, None, "neither")],
        "If more than ``stream_factor * false_alarm_rate`` of the recent stream lies above the "
        "model-calibrated threshold, the model's own samples are too optimistic: calibrate on "
        "the stream's recent scores instead.  A realised flag rate above it for three refresh "
        "windows in a row raises a warning.",
    ),
    "drift_detection": (
        True,
        ["boolean"],
        "Watch the score stream with River's PageHinkley change detector and re-adapt fast.",
    ),
    "drift_threshold": (
        20.0,
        [("interval", Real, 0.0, None, "neither")],
        "PageHinkley threshold (lambda) on the median, over blocks of 5 records, of the clipped "
        "surprise ``-log(tail probability)``.",
    ),
    "adapt_half_life": (
        30.0,
        [("interval", Real, 1.0, None, "left")],
        "After a detected change the model's step is raised to that of this half-life "
        "(records) ...",
    ),
    "adapt_records": (
        300,
        [("interval", Integral, 1, None, "left")],
        "... for this many records, during which every record is learned.",
    ),
    "gating": (
        True,
        ["boolean"],
        "Whether extreme records are kept out of the model.",
    ),
    "random_state": (
        None,
        [("interval", Integral, 0, None, "left"), None],
        "Seed of the calibration draws (None means 0: calibration is always reproducible).",
    ),
}

GATE_DEFAULTS: dict = {name: spec[0] for name, spec in GATE_PARAMETERS.items()}


def _sklearn_constraint(constraint):
    if isinstance(constraint, tuple) and constraint[0] == "interval":
        from sklearn.utils._param_validation import Interval

        _, kind, low, high, closed = constraint
        return Interval(kind, low, high, closed=closed)
    return constraint


def gate_constraints() -> dict:
    """``{name: [constraint, ...]}`` in scikit-learn's vocabulary (imports scikit-learn)."""
    return {
        name: [_sklearn_constraint(c) for c in spec[1]] for name, spec in GATE_PARAMETERS.items()
    }


def validate_gate_params(params: dict, caller: str = "AnomalyGate") -> None:
    """Raise ``ValueError`` (sklearn's ``InvalidParameterError``) naming a bad parameter."""
    from sklearn.utils._param_validation import validate_parameter_constraints

    from streamgmm._params import validate_once

    def validate():
        constraints = gate_constraints()
        validate_parameter_constraints(
            {name: constraints[name] for name in params if name in constraints},
            params,
            caller_name=caller,
        )

    validate_once(caller, params, validate)
