"""Records Shopify sent that we cannot store: found page by page, reported by position and field.

A record without an integer id (REST's `id`, GraphQL's `legacyResourceId`) cannot be keyed, and a timestamp
that does not parse cannot be queried.
Such a record is never guessed at: the rest of its page is written, and the sync ends failed with a
permanent data error naming the page, the record's position on it and the field.
"""

from __future__ import annotations

from shopify_pipeline.dynamo.codec import UnkeyableRecordError, record_key, shape_of, timestamp_fields, to_utc
from shopify_pipeline.errors import PermanentError

MAX_REPORTED = 20  # the checkpoint keeps this many problems (and the count of all): it must stay small


class BadRecordError(PermanentError):
    """Shopify sent records that cannot be stored (no integer id, a malformed timestamp)."""

    reason = "bad_record"


def record_problems(data_type: str, records: list, page: int, shape: str | None = None) -> list[dict]:
    """One entry per unusable record of a page: {page, index (0-based), position (1-based), field, problem}.
    With `shape`, a record of the other API's shape is unusable too (it would be keyed and read wrongly)."""
    problems = []
    for index, record in enumerate(records):
        found = _problem(record)
        if found is None and shape is not None and shape_of(record) != shape:
            found = "id", f"is not the id of a {shape.upper()} document ({str(record.get('id'))[:40]!r})"
        if found:
            field, problem = found
            problems.append({"page": page, "index": index, "position": index + 1, "field": field,
                             "problem": problem, "dataType": data_type})
    return problems


def _problem(record: object) -> tuple[str, str] | None:
    if not isinstance(record, dict):
        return "(record)", f"is a JSON {type(record).__name__}, not an object"
    try:
        record_key(record)  # exactly what the codec will key it by (REST's id, GraphQL's legacyResourceId)
    except UnkeyableRecordError as error:
        return error.field, error.problem
    for field in timestamp_fields(record):
        value = record.get(field)
        if value is None:
            continue
        if not isinstance(value, str):
            return field, f"is not a timestamp string ({type(value).__name__})"
        try:
            to_utc(value)  # exactly what the codec will do with it
        except (ValueError, OverflowError):
            return field, "is not an ISO-8601 timestamp that converts to UTC"
    return None


def note_bad_records(state: dict, problems: list[dict]) -> None:
    """Add a page's problems to a checkpoint's state: the first MAX_REPORTED, and the count of all."""
    kept = state.setdefault("bad_records", [])
    kept.extend(problems[: max(0, MAX_REPORTED - len(kept))])
    state["bad_record_count"] = state.get("bad_record_count", 0) + len(problems)


def bad_records_message(data_type: str, state: dict) -> str:
    """What went wrong, where, and what to do, for the status and the error."""
    kept = state.get("bad_records", [])
    where = "; ".join(
        f"page {p['page'] % 1_000_000} of slice {p['page'] // 1_000_000}, record {p['position']}: "
        f"`{p['field']}` {p['problem']}" for p in kept[:3])
    more = state.get("bad_record_count", len(kept)) - min(3, len(kept))
    return (
        f"{state.get('bad_record_count', len(kept))} {data_type} record(s) from Shopify cannot be stored ({where}"
        f"{f'; and {more} more' if more > 0 else ''}). The other records were written; this sync stays "
        "unfinished so that its high-water mark does not pass them. Once Shopify serves them correctly, clear "
        "the checkpoint (`shopify-pipeline checkpoint clear`) and sync again."
    )
