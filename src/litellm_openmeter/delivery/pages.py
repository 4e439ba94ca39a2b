"""Table rows read straight from the pages of a SQLite file, whatever became of the
pages above them: what salvaging a damaged outbox needs where SQLite itself can no
longer reach a table's rows (a damaged inner page, a damaged first page).

Pure: bytes in, rows out, following SQLite's file format (sqlite.org/fileformat2.html).
Only table leaf pages are read; a row that spills onto overflow pages is skipped (an
outbox event is far smaller than a page). Pages on the free list are left out, since
they hold rows already deleted (delivered events).
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass

HEADER = b"SQLite format 3\x00"
DEFAULT_PAGE_SIZE = 4096
_TABLE_LEAF = 0x0D
_PAGE_TYPES = (0x02, 0x05, 0x0A, 0x0D, 0x00)
"""The first byte of a b-tree page (index and table, inner and leaf), and of an
overflow or free-list trunk page (the high byte of a page number)."""
_INTEGER_SIZES = {1: 1, 2: 2, 3: 3, 4: 4, 5: 6, 6: 8}

Value = int | float | str | bytes | None
Data = bytes | mmap.mmap
"""A whole file's bytes (a memory map of it will do)."""


@dataclass
class PageScan:
    """The rows of every table leaf page, with what could not be read."""

    rows: list[list[Value]]
    skipped_cells: int
    damaged_pages: int
    """Pages that are no kind of page SQLite writes (garbage over them, say)."""
    free_pages_known: bool
    """False when the header or the free list is damaged: then pages of deleted rows
    cannot be told apart and their rows are among ``rows``."""


def page_size(data: Data) -> int:
    """The page size the header gives, or the default when the header is damaged."""
    if data[:16] == HEADER:
        size = int.from_bytes(data[16:18], "big")
        size = 65536 if size == 1 else size
        if 512 <= size <= 65536 and size & (size - 1) == 0:
            return size
    return DEFAULT_PAGE_SIZE


def varint(data: Data, position: int) -> tuple[int, int]:
    """SQLite's variable-length integer at ``position``: (value, position after it)."""
    value = 0
    for index in range(8):
        byte = data[position + index]
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, position + index + 1
    return (value << 8) | data[position + 8], position + 9


def _value(serial: int, data: Data, position: int) -> tuple[Value, int]:
    if serial == 0:
        return None, 0
    if serial in _INTEGER_SIZES:
        size = _INTEGER_SIZES[serial]
        raw = data[position : position + size]
        if len(raw) != size:
            raise ValueError("record cut short")
        return int.from_bytes(raw, "big", signed=True), size
    if serial == 7:
        return struct.unpack_from(">d", data, position)[0], 8
    if serial in (8, 9):
        return serial - 8, 0
    if serial < 12:
        raise ValueError(f"reserved serial type {serial}")
    size = (serial - 12) // 2
    raw = data[position : position + size]
    if len(raw) != size:
        raise ValueError("record cut short")
    return (bytes(raw), size) if serial % 2 == 0 else (raw.decode("utf-8"), size)


def record(payload: bytes) -> list[Value]:
    """The values of one record; ValueError when it is not a well-formed record (its
    header and body must fill the payload exactly, which garbage rarely does)."""
    header_size, position = varint(payload, 0)
    if not 1 <= header_size <= len(payload):
        raise ValueError("bad record header")
    serials = []
    while position < header_size:
        serial, position = varint(payload, position)
        serials.append(serial)
    if position != header_size:
        raise ValueError("bad record header")
    values = []
    for serial in serials:
        value, size = _value(serial, payload, position)
        values.append(value)
        position += size
    if position != len(payload):
        raise ValueError("record length does not match its payload")
    return values


def free_pages(data: Data, size: int) -> set[int] | None:
    """The page numbers on the free list, or None when the header or the list is
    damaged."""
    if data[:16] != HEADER:
        return None
    trunk = int.from_bytes(data[32:36], "big")
    expected = int.from_bytes(data[36:40], "big")
    pages: set[int] = set()
    while trunk:
        start = (trunk - 1) * size
        if trunk in pages or start + size > len(data):
            return None
        pages.add(trunk)
        following = int.from_bytes(data[start : start + 4], "big")
        count = int.from_bytes(data[start + 4 : start + 8], "big")
        if count > (size - 8) // 4:
            return None
        for index in range(count):
            offset = start + 8 + 4 * index
            pages.add(int.from_bytes(data[offset : offset + 4], "big"))
        trunk = following
    return pages if len(pages) == expected else None


def scan(data: Data) -> PageScan:
    """Every row of every table leaf page that is not on the free list."""
    size = page_size(data)
    usable = size - (data[20] if data[:16] == HEADER else 0)
    free = free_pages(data, size)
    result = PageScan([], 0, 0, free is not None)
    for number in range(1, len(data) // size + 1):
        if free is not None and number in free:
            continue
        page = data[(number - 1) * size : number * size]
        head = 100 if number == 1 else 0
        if page[head] != _TABLE_LEAF:
            if page[head] not in _PAGE_TYPES or (number == 1 and data[:16] != HEADER):
                result.damaged_pages += 1
            continue
        cells = int.from_bytes(page[head + 3 : head + 5], "big")
        if head + 8 + 2 * cells > size:
            continue
        for index in range(cells):
            pointer = head + 8 + 2 * index
            try:
                row = _cell(page, int.from_bytes(page[pointer : pointer + 2], "big"), usable)
            except (IndexError, ValueError, struct.error):
                row = None
            if row is None:
                result.skipped_cells += 1
            else:
                result.rows.append(row)
    return result


def _cell(page: bytes, offset: int, usable: int) -> list[Value] | None:
    payload_size, position = varint(page, offset)
    _, position = varint(page, position)  # the rowid
    if payload_size > usable - 35:  # the rest is on overflow pages
        return None
    payload = page[position : position + payload_size]
    if len(payload) != payload_size:
        return None
    return record(payload)
