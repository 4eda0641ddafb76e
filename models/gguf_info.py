"""Read what a GGUF file is from its header alone (no model load, no numpy): architecture, name,
parameter count, context length, quantization, chat template present or not.

The GGUF layout (version 2 and 3, little-endian): ``GGUF``, version u32, tensor count u64,
metadata count u64, the metadata (key string, value type u32, value), then one record per tensor
(name string, dimension count u32, dimensions u64 each, type u32, offset u64). Strings are a u64
length and UTF-8 bytes. Every count and length is bounded, so a damaged file is a clear error.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Dict, Optional, Union

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
MAX_STRING_BYTES = 16 << 20  # chat templates are a few KB; token lists hold short strings
MAX_COUNT = 1 << 24  # metadata entries, array items, tensors
MAX_DIMS = 8
#: arrays longer than this are skipped, not kept (token lists): only their length is recorded
KEEP_ARRAY_ITEMS = 64

# metadata value types
_U8, _I8, _U16, _I16, _U32, _I32, _F32, _BOOL, _STRING, _ARRAY, _U64, _I64, _F64 = range(13)
_SCALARS = {_U8: "<B", _I8: "<b", _U16: "<H", _I16: "<h", _U32: "<I", _I32: "<i", _F32: "<f",
            _BOOL: "<?", _U64: "<Q", _I64: "<q", _F64: "<d"}

#: llama.cpp's ``general.file_type`` values (enum llama_ftype) and their usual names
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M",
    18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S",
    25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M",
    32: "BF16", 36: "TQ1_0", 37: "TQ2_0",
}


class GGUFError(ValueError):
    """The file is not a GGUF file, or its header is damaged."""


@dataclass(frozen=True)
class GGUFInfo:
    """What the header says about a model."""

    path: Path
    version: int
    size: int
    architecture: Optional[str]
    name: Optional[str]
    parameters: int
    context_length: Optional[int]
    quantization: Optional[str]
    has_chat_template: bool
    tensor_count: int
    metadata: Dict[str, Any] = field(default_factory=dict, repr=False)


def is_gguf(path: Union[str, Path]) -> bool:
    """True when the file starts with the GGUF magic (False if it cannot be read)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(len(GGUF_MAGIC)) == GGUF_MAGIC
    except OSError:
        return False


def read_gguf_info(path: Union[str, Path]) -> GGUFInfo:
    """Read the header of ``path``; raise ``GGUFError`` (or ``OSError`` if unreadable)."""
    path = Path(path)
    with open(path, "rb") as handle:
        reader = _Reader(handle, path)
        if handle.read(len(GGUF_MAGIC)) != GGUF_MAGIC:
            raise GGUFError(f"{path}: not a GGUF file")
        version = reader.scalar("<I")
        if version not in SUPPORTED_VERSIONS:
            raise GGUFError(f"{path}: GGUF version {version} is not supported (only {SUPPORTED_VERSIONS})")
        tensor_count = reader.count(reader.scalar("<Q"), "tensors")
        metadata: Dict[str, Any] = {}
        for _ in range(reader.count(reader.scalar("<Q"), "metadata entries")):
            key = reader.string()
            metadata[key] = reader.value(reader.scalar("<I"))
        parameters = 0
        for _ in range(tensor_count):
            reader.string()
            dims = reader.scalar("<I")
            if dims > MAX_DIMS:
                raise GGUFError(f"{path}: a tensor with {dims} dimensions: damaged header")
            elements = 1
            for _ in range(dims):
                elements *= reader.scalar("<Q")
            parameters += elements
            reader.read(4 + 8)  # type, offset
    arch = metadata.get("general.architecture")
    arch = arch if isinstance(arch, str) else None
    context = metadata.get(f"{arch}.context_length") if arch else None
    file_type = metadata.get("general.file_type")
    name = metadata.get("general.name")
    return GGUFInfo(
        path=path, version=version, size=path.stat().st_size, architecture=arch,
        name=name if isinstance(name, str) else None, parameters=parameters,
        context_length=context if isinstance(context, int) else None,
        quantization=FILE_TYPES.get(file_type) if isinstance(file_type, int) else None,
        has_chat_template=isinstance(metadata.get("tokenizer.chat_template"), str),
        tensor_count=tensor_count, metadata=metadata)


def format_parameters(count: int) -> str:
    """Return a parameter count as people write it: ``494M``, ``1.5B``, ``86K``."""
    for limit, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= limit:
            value = count / limit
            return f"{value:.1f}{suffix}" if value < 10 else f"{value:.0f}{suffix}"
    return str(count)


class _Reader:
    """Bounded little-endian reads from a GGUF header."""

    def __init__(self, handle: BinaryIO, path: Path) -> None:
        self.handle, self.path = handle, path

    def read(self, size: int) -> bytes:
        data = self.handle.read(size)
        if len(data) != size:
            raise GGUFError(f"{self.path}: the header ends early (truncated file?)")
        return data

    def scalar(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def count(self, value: int, what: str) -> int:
        if value > MAX_COUNT:
            raise GGUFError(f"{self.path}: {value} {what}: damaged header")
        return value

    def string(self) -> str:
        length = self.scalar("<Q")
        if length > MAX_STRING_BYTES:
            raise GGUFError(f"{self.path}: a {length}-byte string: damaged header")
        return self.read(length).decode("utf-8", errors="replace")

    def value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self.scalar(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item_kind = self.scalar("<I")
            length = self.count(self.scalar("<Q"), "array items")
            if item_kind == _ARRAY:
                raise GGUFError(f"{self.path}: nested arrays are not supported")
            if item_kind in _SCALARS and length > KEEP_ARRAY_ITEMS:
                self.read(struct.calcsize(_SCALARS[item_kind]) * length)  # skip numbers in one read
                return _Skipped(length)
            items = [self.value(item_kind) for _ in range(length)]
            return items if length <= KEEP_ARRAY_ITEMS else _Skipped(length)
        raise GGUFError(f"{self.path}: unknown metadata value type {kind}: damaged header")


class _Skipped(int):
    """A long array that was read past: only its length is kept."""
