"""Model scope ``key``: say so, once and early, when the records carry no key at all.

Records without a key go to their partition's pooled model (see
:mod:`~streamgmm.service.state`), which is right for a few of them and silently wrong for all
of them: a misspelt ``--key-field`` (or Kafka messages produced without keys) then gives one
pooled model and not a single per-key one, with no error anywhere.

Example
-------
>>> w = KeyWatch("sensor", after=3)
>>> w.observe([None, None], lambda: ["a", "b"])  # not enough records yet
>>> print(w.observe([None], lambda: ["a", "b"]))  # doctest: +ELLIPSIS
model scope 'key': none of the first 3 valid records has a key: field 'sensor' is in none ...
>>> w.observe([None], lambda: []), w.message()  # said once
(None, None)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = ["KeyWatch"]


class KeyWatch:
    """Counts valid records until one has a key; :meth:`observe` returns the warning (once)
    when ``after`` valid records went by without any.

    Parameters
    ----------
    key_field
        The record field naming the key (``None``: the Kafka message key only).
    after
        Valid records without any key before the warning.
    """

    def __init__(self, key_field: str | None, after: int = 100) -> None:
        self.key_field = key_field
        self.after = after
        self.seen = 0
        self.done = False
        self.fields: list[str] = []  # of the first valid record, for the warning

    def observe(self, keys: Sequence, fields: Callable[[], list[str]]) -> str | None:
        """``keys`` of a batch's valid records; ``fields()``: a record's field names (asked
        only for the warning)."""
        if self.done or not keys:
            return None
        if any(k is not None for k in keys):
            self.done = True
            return None
        if not self.seen:
            self.fields = fields()
        self.seen += len(keys)
        return self.message() if self.seen >= self.after else None

    def message(self) -> str | None:
        """The warning if no valid record so far had a key (also at the end of a short input);
        said once."""
        if self.done or not self.seen:
            return None
        self.done = True
        where = (
            f"field '{self.key_field}' is in none of them (a record's fields: "
            f"{', '.join(self.fields) or 'none'})"
            if self.key_field is not None
            else "their Kafka messages have no key and no --key-field is set"
        )
        return (
            f"model scope 'key': none of the first {self.seen} valid records has a key: "
            f"{where}. Every record goes to the pooled model and no per-key model is made; "
            "check --key-field"
        )
