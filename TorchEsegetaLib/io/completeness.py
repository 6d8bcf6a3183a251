"""Is an image file's voxel data all there?

A cut download or an interrupted copy leaves an image whose header is intact but whose voxel data
stops early. ITK's NIfTI reader fills the missing part with zeros and reports success, so an
explanation of half a scan would look like any other; its NRRD and MetaImage readers refuse, but
with messages such as "No such file or directory". This module reads only the header (a few
hundred bytes), works out how many bytes of voxel data it describes, and compares that with
what the file holds, before ITK reads it:

* uncompressed data: the file's size, no data read;
* gzip (``.nii.gz``, NRRD ``encoding: gzip``): the gzip trailer's ISIZE field (the stream's
  length modulo 2^32, at the end of the file) equals the expected length for a complete file;
  only when it does not (several gzip members, trailing bytes, a cut file) is the stream
  inflated, in chunks whose output is discarded, until the expected length is reached or the
  stream ends;
* zlib (MetaImage ``CompressedData = True``): MetaIO records the compressed length
  (``CompressedDataSize``), compared with the file's size; without it the stream is inflated
  as above.

Headers this module does not understand (other encodings, file lists, odd layouts) are left to
ITK: the check refuses only what it can prove incomplete. The same check verifies every image
the library writes (:func:`written_completely`): ITK's NIfTI writer reports success on a full
disk, leaving a short file.
"""

from __future__ import annotations

import math
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserInputError

_GZIP_MAGIC = b"\x1f\x8b"
_GZIP_WBITS = 16 + zlib.MAX_WBITS
_ZLIB_OR_GZIP_WBITS = 32 + zlib.MAX_WBITS  # what MetaIO's inflateInit2 accepts
_CHUNK = 1 << 20
_MAX_HEADER = 1 << 20
_FIX = "download or copy it again"

_NRRD_TYPES = {
    **dict.fromkeys(
        ("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"), 1
    ),
    **dict.fromkeys(
        (
            "short",
            "short int",
            "signed short",
            "signed short int",
            "int16",
            "int16_t",
            "ushort",
            "unsigned short",
            "unsigned short int",
            "uint16",
            "uint16_t",
        ),
        2,
    ),
    **dict.fromkeys(
        ("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t"),
        4,
    ),
    **dict.fromkeys(
        (
            "longlong",
            "long long",
            "long long int",
            "signed long long",
            "signed long long int",
            "int64",
            "int64_t",
            "ulonglong",
            "unsigned long long",
            "unsigned long long int",
            "uint64",
            "uint64_t",
        ),
        8,
    ),
    "float": 4,
    "double": 8,
}
# MetaIO's MET_ValueTypeSize (MET_LONG is 4 bytes there).
_META_TYPES = {
    "MET_CHAR": 1,
    "MET_UCHAR": 1,
    "MET_SHORT": 2,
    "MET_USHORT": 2,
    "MET_INT": 4,
    "MET_UINT": 4,
    "MET_LONG": 4,
    "MET_ULONG": 4,
    "MET_LONG_LONG": 8,
    "MET_ULONG_LONG": 8,
    "MET_FLOAT": 4,
    "MET_DOUBLE": 8,
}


_UNREADABLE = (OSError, EOFError, ValueError, struct.error, zlib.error)


class _Incomplete(Exception):
    """The header itself is cut short (its text says so)."""


@dataclass(frozen=True)
class VoxelData:
    """Where a file's voxel data lies and how long it must be.

    Attributes:
        file: the file holding the data (the image itself, or a detached data file).
        offset: byte where the data (or its compressed stream) starts in ``file``.
        size: bytes the data must have; for a compressed stream, its inflated length.
        encoding: "raw", "gzip" or "zlib" (a zlib or gzip stream, MetaIO's choice).
        compressed_size: the compressed stream's recorded length, when the header gives it.
    """

    file: Path
    offset: int
    size: int
    encoding: str = "raw"
    compressed_size: int | None = None


def check_complete(path: Path) -> None:
    """Raise a :class:`UserInputError` when ``path`` holds less voxel data than its header says.

    Files whose header is not understood pass (ITK then reads them and reports its own errors).
    """
    try:
        data = voxel_data(path)
        if data is not None and not data.file.is_file():
            raise UserInputError(
                f"{path} keeps its voxel data in {data.file}, which does not exist; put the "
                "data file beside the header (or fix the header's data file name)"
            )
        problem = None if data is None else missing_data(path, data)
    except _Incomplete as incomplete:
        problem = str(incomplete)
    except _UNREADABLE:
        return  # not a header we can read: ITK's error message will name the problem
    if problem is not None:
        raise UserInputError(f"{problem} (a cut download or copy?); {_FIX}")


def written_completely(path: Path) -> str | None:
    """None when the file just written holds all its voxel data, else what is missing (ITK's
    NIfTI writer reports success on a full disk, leaving a short file)."""
    try:
        data = voxel_data(path)
        if data is None:
            return None
        if not data.file.is_file():
            return f"{data.file} was not written"
        return missing_data(path, data)
    except _Incomplete as problem:
        return str(problem)
    except _UNREADABLE:
        return f"the header of {path} cannot be read back"


def missing_data(path: Path, data: VoxelData) -> str | None:
    """What ``path``'s voxel data ``data`` lacks, in words; None when it is all there."""
    which = path if data.file == path else f"{data.file} (the voxel data of {path})"
    available = data.file.stat().st_size - data.offset
    if data.encoding == "raw":
        if available >= data.size:
            return None
        return (
            f"{which} is incomplete: its header describes {data.size} bytes of voxel data "
            f"but only {max(available, 0)} are there"
        )
    if data.compressed_size is not None:
        if available >= data.compressed_size:
            return None
        return (
            f"{which} is incomplete: its header records {data.compressed_size} bytes of "
            f"compressed voxel data but only {max(available, 0)} are there"
        )
    if data.encoding == "gzip" and _gzip_trailer_matches(data):
        return None
    inflated = _inflate_up_to(data)
    if inflated >= data.size:
        return None
    return (
        f"{which} is incomplete: its compressed voxel data ends after {inflated} of the "
        f"{data.size} bytes its header describes"
    )


def voxel_data(path: Path) -> VoxelData | None:
    """The voxel data ``path``'s header describes; None for a header this module does not read.

    Raises:
        OSError, ValueError, struct.error: the header cannot be read.
    """
    name = path.name.lower()
    if name.endswith(".nii"):
        return _nifti(path, compressed=False)
    if name.endswith(".nii.gz"):
        return _nifti(path, compressed=True)
    if name.endswith((".nrrd", ".nhdr")):
        return _nrrd(path)
    if name.endswith((".mha", ".mhd")):
        return _metaimage(path)
    return None


def _nifti(path: Path, compressed: bool) -> VoxelData | None:
    if compressed:
        import gzip

        try:
            with gzip.open(path, "rb") as f:
                header = f.read(544)
        except EOFError:
            header = b""  # the stream ends inside the header
        if len(header) < 348:
            raise _Incomplete(
                f"{path} is incomplete: its compressed data ends inside the NIfTI header"
            )
    else:
        with path.open("rb") as f:
            header = f.read(544)
    for endian in "<>":
        if len(header) >= 4 and struct.unpack(endian + "i", header[:4])[0] in (348, 540):
            break
    else:
        return None
    if struct.unpack(endian + "i", header[:4])[0] == 348:
        if header[344:348] != b"n+1\x00":  # "ni1": the data is in a separate .img file
            return None
        dims = struct.unpack(endian + "8h", header[40:56])
        bitpix = struct.unpack(endian + "h", header[72:74])[0]
        offset = max(int(struct.unpack(endian + "f", header[108:112])[0]), 352)
    else:
        if len(header) < 544 or header[4:8] != b"n+2\x00":
            return None
        bitpix = struct.unpack(endian + "h", header[14:16])[0]
        dims = struct.unpack(endian + "8q", header[16:80])
        offset = max(struct.unpack(endian + "q", header[168:176])[0], 544)
    count = _voxel_count(dims[1 : 1 + dims[0]] if 1 <= dims[0] <= 7 else ())
    if count is None or bitpix <= 0 or bitpix % 8:
        return None
    data_bytes = count * bitpix // 8
    if compressed:
        return VoxelData(path, 0, offset + data_bytes, "gzip")
    return VoxelData(path, offset, data_bytes)


def _nrrd(path: Path) -> VoxelData | None:
    with path.open("rb") as f:
        head = f.read(_MAX_HEADER)
    if not head.startswith(b"NRRD"):
        return None
    end = head.find(b"\n\n")
    header_end = len(head) if end < 0 else end + 2
    fields: dict[str, str] = {}
    for line in head[:header_end].decode("latin-1").splitlines()[1:]:
        if line.startswith("#") or ":=" in line or ": " not in line:
            continue
        key, value = line.split(": ", 1)
        fields[key.strip().lower()] = value.strip()
    element = _NRRD_TYPES.get(fields.get("type", "").lower())
    count = _voxel_count(_ints(fields.get("sizes", "")))
    encoding = {"raw": "raw", "gzip": "gzip", "gz": "gzip"}.get(fields.get("encoding", "").lower())
    if element is None or count is None or encoding is None:
        return None
    data_file = fields.get("data file", fields.get("datafile"))
    if data_file is None:
        if end < 0:
            return None  # no blank line: no attached data to check
        file, offset = path, header_end
    elif data_file.upper() == "LIST" or len(data_file.split()) > 1:
        return None  # one data file per slice: not checked
    else:
        file, offset = path.parent / data_file, 0
    line_skip = int(fields.get("line skip", fields.get("lineskip", "0")))
    byte_skip = int(fields.get("byte skip", fields.get("byteskip", "0")))
    if line_skip and file.is_file():
        offset = _skip_lines(file, offset, line_skip)
    data_bytes = count * element
    if encoding == "gzip":
        # teem skips "byte skip" bytes of the inflated stream
        return VoxelData(file, offset, max(byte_skip, 0) + data_bytes, "gzip")
    if byte_skip == -1 and file.is_file():  # the data is the last data_bytes of the file
        return VoxelData(file, max(file.stat().st_size - data_bytes, offset), data_bytes)
    return VoxelData(file, offset + max(byte_skip, 0), data_bytes)


def _metaimage(path: Path) -> VoxelData | None:
    with path.open("rb") as f:
        head = f.read(_MAX_HEADER)
    fields: dict[str, str] = {}
    header_end = None
    position = 0
    for raw_line in head.splitlines(keepends=True):
        position += len(raw_line)
        key, sep, value = raw_line.decode("latin-1").partition("=")
        if not sep:
            continue
        fields[key.strip().lower()] = value.strip()
        if key.strip().lower() == "elementdatafile":
            header_end = position
            break
    if header_end is None or fields.get("binarydata", "true").lower() == "false":
        return None
    element = _META_TYPES.get(fields.get("elementtype", "").upper())
    dims = _ints(fields.get("dimsize", ""))
    channels = int(fields.get("elementnumberofchannels", "1"))
    count = _voxel_count((*dims, channels))
    if element is None or count is None or len(dims) != int(fields.get("ndims", len(dims))):
        return None
    name = fields["elementdatafile"]
    if name.upper() == "LOCAL":
        file, offset = path, header_end
    elif name.upper().startswith("LIST") or len(name.split()) > 1 or "%" in name:
        return None  # one data file per slice: not checked
    else:
        file, offset = path.parent / name, 0
    header_size = int(fields.get("headersize", "0"))
    compressed = fields.get("compresseddata", "false").lower() == "true"
    data_bytes = count * element
    if compressed:
        if header_size == -1:
            return None
        recorded = fields.get("compresseddatasize")
        return VoxelData(
            file,
            offset + header_size,
            data_bytes,
            "zlib",
            int(recorded) if recorded and int(recorded) > 0 else None,
        )
    if header_size == -1 and file.is_file():  # the data is the last data_bytes of the file
        return VoxelData(file, max(file.stat().st_size - data_bytes, offset), data_bytes)
    return VoxelData(file, offset + max(header_size, 0), data_bytes)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in re.split(r"[\s,]+", text.strip()) if v)


def _voxel_count(dims: tuple[int, ...] | list[int]) -> int | None:
    if not dims or any(d < 1 for d in dims):
        return None
    return math.prod(int(d) for d in dims)


def _skip_lines(file: Path, offset: int, lines: int) -> int:
    with file.open("rb") as f:
        f.seek(offset)
        while lines > 0:
            line = f.readline(_MAX_HEADER)
            if not line:
                break
            lines -= line.endswith(b"\n")
            offset += len(line)
    return offset


def _gzip_trailer_matches(data: VoxelData) -> bool:
    """Whether the last gzip member's ISIZE equals the expected length (modulo 2^32).

    A file cut inside its stream ends in compressed bytes, which match by chance with
    probability 2^-32.
    """
    with data.file.open("rb") as f:
        f.seek(0, 2)
        if f.tell() - data.offset < 18:  # shorter than an empty gzip member
            return False
        f.seek(-4, 2)
        (isize,) = struct.unpack("<I", f.read(4))
    return isize == data.size % 2**32


def _inflate_up_to(data: VoxelData) -> int:
    """Inflate the stream until ``data.size`` bytes come out or it ends; the count that came out.

    Output is discarded chunk by chunk, so memory stays at a few MB whatever the volume's size.
    Further gzip members (a concatenated .gz) continue the stream.
    """
    wbits = _GZIP_WBITS if data.encoding == "gzip" else _ZLIB_OR_GZIP_WBITS
    produced = 0
    inflater = zlib.decompressobj(wbits)
    pending = b""
    with data.file.open("rb") as f:
        f.seek(data.offset)
        while produced < data.size:
            if inflater.unconsumed_tail:
                chunk = inflater.unconsumed_tail
            elif pending:
                chunk, pending = pending, b""
            else:
                chunk = f.read(_CHUNK)
                if not chunk:
                    break
            try:
                produced += len(inflater.decompress(chunk, _CHUNK))
            except zlib.error:
                break  # corrupt from here on: what came out before counts
            if inflater.eof:
                rest = inflater.unused_data
                if len(rest) < len(_GZIP_MAGIC):
                    rest += f.read(_CHUNK)
                if data.encoding != "gzip" or not rest.startswith(_GZIP_MAGIC):
                    break
                inflater, pending = zlib.decompressobj(wbits), rest
    return produced
