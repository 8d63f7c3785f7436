"""Records from a bulk result, one at a time: JSONL lines stitched back into the documents a paged GraphQL
query returns, with the memory of one record.

A bulk result is one object a line: a record (no `__parentId`), then the items of its nested connection, each
with `"__parentId": "<the record's gid>"`. We ask for `groupObjects: true`, so a record's items follow it
directly; that is checked, never assumed: an item whose parent is not the record just read is an error (the
file is not grouped), not a record silently cut short. Each record comes with the byte offset where the
next one starts, so a reader that stops after any record resumes there with `Range`, and nothing is read twice.

A record is stored exactly as the paged query returns it (`shopify/sources.py`): the nested items under
`<field>.nodes`, in file order.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from shopify_pipeline.exact_json import parse_json
from shopify_pipeline.shopify.client import UnexpectedAnswerError


class UngroupedResultError(UnexpectedAnswerError):
    """A nested item does not follow its record: the result is not grouped, so records cannot be streamed."""


@dataclass(frozen=True)
class BulkRecord:
    """One whole record, and the byte offset of the line after its last one (where to resume)."""

    document: dict
    resume_offset: int


def stitch(lines: Iterable[tuple[bytes, int]], field: str, start_offset: int = 0,
           hold_last: bool = False) -> Iterator[BulkRecord]:
    """The records of `lines` ((line, offset after it), as `ResultDownload.lines` gives them), each with its
    nested items under `field` (`lineItems`, `variants`, `addressesV2`). `start_offset` is where `lines`
    begins (a record's line, or 0). With `hold_last` the record the lines end with is not given: a partial
    result (`partialDataUrl`) may have stopped before its last items."""
    record: dict | None = None
    items: list[dict] = []
    record_end = start_offset
    for line, after in lines:
        try:
            value = parse_json(line)
        except ValueError:
            raise UnexpectedAnswerError(f"a bulk result line before byte {after} is not JSON") from None
        if not isinstance(value, dict) or not isinstance(value.get("id"), str):
            raise UnexpectedAnswerError(f"a bulk result line before byte {after} is not an object with an id")
        parent = value.pop("__parentId", None)
        if parent is None:
            if record is not None:
                yield BulkRecord(_whole(record, field, items), record_end)
            record, items = value, []
        elif record is None or parent != record["id"]:
            raise UngroupedResultError(
                f"a nested item before byte {after} belongs to {str(parent)[:80]}, not to the record read just "
                f"before it ({record['id'] if record else 'none'}): the result is not grouped by parent")
        else:
            items.append(value)
        record_end = after
    if record is not None and not hold_last:
        yield BulkRecord(_whole(record, field, items), record_end)


def _whole(record: dict, field: str, items: list[dict]) -> dict:
    return {**record, field: {"nodes": items}}


def bulk_query(listing_fields: str, field: str, item_fields: str, root: str, search: str | None = None) -> str:
    """A bulk query for `root` whose records carry `listing_fields` (without their nested connection) and,
    under `field`, every item with `item_fields`, in id order (what lets an export that ended short be
    continued after its last record). Bulk queries take no `first` and use `edges { node }`."""
    arguments = "sortKey: ID" + (f", query: {json.dumps(search)}" if search else "")  # JSON strings are GraphQL's
    return (f"{{ {root}({arguments}) {{ edges {{ node {{ {listing_fields} "
            f"{field} {{ edges {{ node {{ {item_fields} }} }} }} }} }} }} }}")
