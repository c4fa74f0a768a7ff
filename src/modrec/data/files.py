"""Reading a source file before any format is parsed: that it exists and is a file,
whether it is compressed (gzip is read as the file it holds; zip, bzip2, xz and zstd are
refused with how to unpack them), and its text, with a NUL byte or bytes that are not
valid in the encoding reported by line. What a file's name says of it (`format_suffix`,
`dataset_name`) is here too.

Below every reader: the pandas readers (`modrec.data.importers`), the DuckDB readers
(`modrec.data.large`, which hands the file to DuckDB after `check_text`) and format
detection (`modrec.data.formats`) all read files through these.
"""

from __future__ import annotations

import codecs
import contextlib
import gzip
import io
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, cast

from modrec.data.dataset import DataFormatError


def require_file(path: Path) -> None:
    if not path.exists():
        raise DataFormatError(f"{path}: file not found; expected a file here")
    if not path.is_file():
        raise DataFormatError(f"{path}: is a folder (or not a regular file); expected a file")


def _line_at(raw: bytes, offset: int) -> int:
    """1-based line of a byte offset, counting CRLF, LF and lone CR as one break each."""
    return _breaks(raw[:offset]) + 1


def _breaks(data: bytes, after_cr: bool = False) -> int:
    """Line breaks in ``data`` (CRLF, LF and lone CR one each); ``after_cr``: the bytes
    before ``data`` ended with a CR, which a leading LF completes rather than repeats."""
    count = data.count(b"\n") + data.count(b"\r") - data.count(b"\r\n")
    return count - 1 if after_cr and data.startswith(b"\n") else count


# Files compressed by a tool other than gzip, by their first bytes: (name, how to unpack).
_PACKED = ((b"PK\x03\x04", "a zip archive", "unzip it"),
           (b"BZh", "bzip2-compressed", "decompress it with bunzip2"),
           (b"\xfd7zXZ\x00", "xz-compressed", "decompress it with unxz"),
           (b"\x28\xb5\x2f\xfd", "zstd-compressed", "decompress it with unzstd"))
_CHUNK = 1 << 24  # bytes a streaming check reads at a time


def compression(path: Path) -> str | None:
    """``"gzip"`` for a gzip-compressed file (read as if it were decompressed, by every
    text reader and by DuckDB), None for a plain one. Another compression is refused:
    its bytes would otherwise be reported as a NUL byte or invalid text."""
    with path.open("rb") as f:
        magic = f.read(10)
    if magic.startswith(b"\x1f\x8b"):
        return "gzip"
    for prefix, what, how in _PACKED:
        if magic.startswith(prefix) and (prefix != b"BZh" or magic[4:10] == b"1AY&SY"):
            raise DataFormatError(
                f"{path}: the file is {what}; expected text (or gzip-compressed text, which "
                f"is read as it is): {how} and pass the file it holds")
    return None


def _gzip_error(path: Path, err: Exception) -> DataFormatError:
    return DataFormatError(
        f"{path}: damaged or truncated gzip file ({err}); expected a complete gzip stream "
        "(`gzip -t FILE` checks one)")


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed when it is gzip-compressed."""
    raw = path.read_bytes()
    if compression(path) == "gzip":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise _gzip_error(path, err) from None
    return raw


@contextlib.contextmanager
def _open_bytes(path: Path) -> Iterator[BinaryIO]:
    """The file's bytes as a stream, decompressed when it is gzip-compressed; a damaged
    gzip stream is a `DataFormatError` naming the file."""
    if compression(path) != "gzip":
        with path.open("rb") as f:
            yield f
        return
    try:
        with gzip.open(path, "rb") as f:
            yield cast(BinaryIO, f)
    except (OSError, EOFError, zlib.error) as err:
        raise _gzip_error(path, err) from None


@contextlib.contextmanager
def open_text(path: Path, encoding: str = "utf-8", errors: str = "strict",
              newline: str | None = None) -> Iterator[io.TextIOWrapper]:
    """The file as text, decompressed on the fly when it is gzip-compressed."""
    with _open_bytes(path) as f:
        yield io.TextIOWrapper(f, encoding=encoding, errors=errors, newline=newline)


def _nul_error(path: Path, line: int, offset: int) -> DataFormatError:
    return DataFormatError(
        f"{path}:{line}: NUL byte at byte {offset}; expected text (is the file truncated or "
        "binary?)")


def _decode_error(path: Path, line: int, encoding: str, err: UnicodeDecodeError, offset: int
                  ) -> DataFormatError:
    return DataFormatError(
        f"{path}:{line}: invalid {encoding.upper()} ({err.reason} at byte {offset}); expected "
        f"{encoding.upper()} text")


def read_text(path: Path, encoding: str = "utf-8") -> str:
    """The file's text (decompressed if it is gzip-compressed), without a byte-order
    mark and with every line ending as "\\n".

    A NUL byte or bytes that are not valid in ``encoding`` are reported with their line:
    both mean a truncated, binary or mis-encoded file, whose fields must not be read as
    data (a zero-filled tail is what a crash mid-write often leaves)."""
    require_file(path)
    raw = _read_bytes(path).removeprefix(codecs.BOM_UTF8)
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise _nul_error(path, _line_at(raw, nul), nul)
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as err:
        raise _decode_error(path, _line_at(raw, err.start), encoding, err, err.start) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def check_text(path: Path) -> None:
    """What `read_text` refuses in a file, found without holding the file: a NUL byte
    (anywhere, first) or else invalid UTF-8, with the same message, line and byte
    (counted after a byte-order mark). For readers that hand the file to another parser
    (DuckDB), which would take a NUL for a character of an id."""
    require_file(path)
    start = 0  # offset of ``data`` in the (decompressed) text
    line = 1  # the line ``data`` starts on
    after_cr = False
    carry = b""  # the start of a character that the previous block cut in two
    invalid: DataFormatError | None = None  # the first, reported if there is no NUL
    with _open_bytes(path) as f:
        block = f.read(_CHUNK).removeprefix(codecs.BOM_UTF8)
        while block or carry:
            data, carry = carry + block, b""
            nul = data.find(b"\x00")
            if nul >= 0:
                raise _nul_error(path, line + _breaks(data[:nul], after_cr), start + nul)
            if invalid is None:
                try:
                    data.decode()
                except UnicodeDecodeError as err:
                    if block and err.reason == "unexpected end of data":
                        data, carry = data[:err.start], data[err.start:]
                    else:
                        invalid = _decode_error(path, line + _breaks(data[:err.start], after_cr),
                                                "utf-8", err, start + err.start)
            line += _breaks(data, after_cr)
            after_cr = data.endswith(b"\r") if data else after_cr
            start += len(data)
            block = f.read(_CHUNK)
    if invalid is not None:
        raise invalid


def format_suffix(path: Path) -> str:
    """The suffix that tells a file's format: ``.csv`` for ``x.csv`` and ``x.csv.gz``
    (a gzip-compressed file is read as the file it holds)."""
    return Path(path.stem).suffix if path.suffix.lower() == ".gz" else path.suffix


def dataset_name(path: Path) -> str:
    """The name of a dataset read from a file: ``x`` for ``x.csv`` and ``x.csv.gz``."""
    return Path(path.stem).stem if path.suffix.lower() == ".gz" else path.stem
