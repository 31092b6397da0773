"""The message format between the grading harness and a submission's sandbox: data only, never code.

Both sides import this file: the harness (``grader.runtime.wire``) and the sandbox's runner, which has
nothing of the course but this folder. It imports only the standard library, and torch and numpy when a
message holds their arrays.

Why not pickle: unpickling runs code chosen by whoever wrote the bytes, and the sandbox's bytes are written
by the submission. Here a message is a JSON header plus raw buffers, and decoding can only build plain
values: ``None``, bool, int, float, complex, str, bytes, list, tuple, dict, dense CPU tensors and numpy
arrays of the dtypes below, numpy scalars, torch dtypes, exceptions as `RemoteError` records, callables
as `Handle` numbers, and `Opaque` for everything else (a value the sandbox cannot send: its type name only).
Every size, depth and count is bounded, and a buffer must hold exactly the bytes its shape needs, so a
hostile message fails with `WireError` instead of exhausting the decoder.

Framing: ``u64 total length | u32 header length | header JSON | buffers``.
"""

from __future__ import annotations

import json
import math
import struct

MAX_MESSAGE_BYTES = 256 * 2**20
MAX_DEPTH = 32
MAX_ITEMS = 200_000
MAX_STRING = 4 * 2**20
MAX_DIMS = 12

TENSOR_DTYPES = ("float16", "bfloat16", "float32", "float64", "complex64", "complex128", "int8", "int16", "int32",
                 "int64", "uint8", "bool")
NUMPY_DTYPES = ("float16", "float32", "float64", "complex64", "complex128", "int8", "int16", "int32", "int64",
                "uint8", "uint16", "uint32", "uint64", "bool")


class WireError(ValueError):
    """A message that breaks the format or its limits."""


class Handle:
    """A callable that stays on the side that sent it; the other side can only ask for it to be called."""

    __slots__ = ("number", "description")

    def __init__(self, number: int, description: str = "a function"):
        self.number = number
        self.description = description

    def __repr__(self) -> str:
        return f"<{self.description}>"


class Opaque:
    """A value of a type the message format does not carry; ``type_name`` is what the sender called it."""

    __slots__ = ("type_name",)

    def __init__(self, type_name: str):
        self.type_name = type_name

    def __repr__(self) -> str:
        return f"<a {self.type_name} object>"


class RemoteError:
    """An exception raised on the other side, as data: its type name, message and where in the student's code."""

    __slots__ = ("type_name", "message", "location", "cause")

    def __init__(self, type_name: str, message: str = "", location: str = "", cause: str = ""):
        self.type_name, self.message, self.location, self.cause = type_name, message, location, cause

    def __repr__(self) -> str:
        return f"{self.type_name}: {self.message}"


def _torch():
    import torch

    return torch


def _numpy():
    import numpy

    return numpy


# --------------------------------------------------------------------------------------------------- encoding


class _Encoder:
    def __init__(self, handles: dict | None):
        self.buffers: list[bytes] = []
        self.handles = handles  # id -> callable, filled when callables may be sent; None: callables are Opaque
        self.size = 0

    def buffer(self, data: bytes) -> int:
        self.size += len(data)
        if self.size > MAX_MESSAGE_BYTES:
            raise WireError(f"the message is larger than {MAX_MESSAGE_BYTES // 2**20} MiB")
        self.buffers.append(data)
        return len(self.buffers) - 1

    def encode(self, obj, depth: int = 0):
        if depth > MAX_DEPTH:
            raise WireError(f"the value is nested more than {MAX_DEPTH} levels deep")
        if obj is None or isinstance(obj, (bool, str)) or type(obj) is int:
            if isinstance(obj, str) and len(obj) > MAX_STRING:
                raise WireError("a string longer than the limit")
            return obj
        if isinstance(obj, int):  # an int subclass (not bool): send the plain int
            return int(obj)
        if isinstance(obj, float):
            return float(obj) if math.isfinite(obj) else {"$": "float", "v": repr(float(obj))}
        if isinstance(obj, complex):
            return {"$": "complex", "v": [self.encode(obj.real), self.encode(obj.imag)]}
        if isinstance(obj, bytes):
            return {"$": "bytes", "b": self.buffer(bytes(obj))}
        if isinstance(obj, (list, tuple)):
            if len(obj) > MAX_ITEMS:
                raise WireError("a sequence with too many items")
            items = [self.encode(o, depth + 1) for o in obj]
            return items if type(obj) is list else {"$": "tuple", "v": items}
        if isinstance(obj, dict):
            if len(obj) > MAX_ITEMS:
                raise WireError("a dict with too many items")
            return {"$": "dict", "v": [[self.encode(k, depth + 1), self.encode(v, depth + 1)] for k, v in obj.items()]}
        if isinstance(obj, Handle):
            return {"$": "handle", "n": obj.number, "d": obj.description}
        if isinstance(obj, RemoteError):
            return {"$": "error", "t": obj.type_name, "m": obj.message, "l": obj.location, "c": obj.cause}
        module = type(obj).__module__.split(".")[0]
        if module == "torch":
            return self._torch(obj)
        if module == "numpy":
            return self._numpy(obj)
        return self._other(obj)

    def _other(self, obj):
        """A callable becomes a handle when the sender keeps a handle table; anything else an opaque name."""
        if callable(obj) and self.handles is not None:
            number = len(self.handles) + 1
            self.handles[number] = obj
            return {"$": "handle", "n": number, "d": _describe_callable(obj)}
        return {"$": "opaque", "t": _type_name(obj)}

    def _torch(self, obj):
        torch = _torch()
        if isinstance(obj, torch.dtype):
            return {"$": "dtype", "v": str(obj).replace("torch.", "")}
        if isinstance(obj, torch.Size):
            return {"$": "tuple", "v": [int(d) for d in obj]}
        if isinstance(obj, torch.Tensor):
            dtype = str(obj.dtype).replace("torch.", "")
            plain = obj.layout == torch.strided and not obj.is_quantized and obj.device.type == "cpu"
            if dtype not in TENSOR_DTYPES or not plain:
                return {"$": "opaque", "t": f"tensor ({obj.dtype}, {obj.layout}, on {obj.device.type})"}
            flat = obj.detach().contiguous().reshape(-1)
            if flat.numel():
                data = flat.view(torch.uint8).numpy().tobytes() if flat.element_size() > 0 else b""
            else:
                data = b""
            return {"$": "tensor", "d": dtype, "s": [int(d) for d in obj.shape], "b": self.buffer(data)}
        return self._other(obj)

    def _numpy(self, obj):
        np = _numpy()
        if isinstance(obj, np.ndarray):
            dtype = str(obj.dtype)
            if dtype not in NUMPY_DTYPES:
                return {"$": "opaque", "t": f"numpy array of {dtype}"}
            return {"$": "ndarray", "d": dtype, "s": [int(d) for d in obj.shape],
                    "b": self.buffer(np.ascontiguousarray(obj).tobytes())}
        if isinstance(obj, np.generic) and str(obj.dtype) in NUMPY_DTYPES:
            return {"$": "npscalar", "d": str(obj.dtype), "v": self.encode(obj.item())}
        return {"$": "opaque", "t": _type_name(obj)}


def _type_name(obj) -> str:
    name = f"{type(obj).__module__}.{type(obj).__qualname__}" if type(obj).__module__ not in ("builtins",) else \
        type(obj).__qualname__
    return str(name)[:200]


def _describe_callable(obj) -> str:
    return "the grader's model" if hasattr(obj, "parameters") else "a function from the grader"


def encode(obj, handles: dict | None = None) -> bytes:
    """One framed message holding ``obj``. Callables become `Handle` numbers recorded in ``handles`` when it
    is given (the caller keeps them to answer calls), and `Opaque` otherwise."""
    encoder = _Encoder(handles)
    tree = encoder.encode(obj)
    meta = json.dumps([tree, [len(b) for b in encoder.buffers]], allow_nan=False, separators=(",", ":")).encode()
    if len(meta) > MAX_MESSAGE_BYTES:
        raise WireError("the message header is too large")
    body = struct.pack("<I", len(meta)) + meta + b"".join(encoder.buffers)
    return struct.pack("<Q", len(body)) + body


# --------------------------------------------------------------------------------------------------- decoding


class _Decoder:
    def __init__(self, buffers: list[bytes]):
        self.buffers = buffers
        self.items = 0

    def count(self, n: int = 1):
        self.items += n
        if self.items > MAX_ITEMS:
            raise WireError("the message holds too many items")

    def buffer(self, index) -> bytes:
        if type(index) is not int or not 0 <= index < len(self.buffers):
            raise WireError("a reference to a buffer that does not exist")
        return self.buffers[index]

    def shape(self, shape) -> list[int]:
        if type(shape) is not list or len(shape) > MAX_DIMS or not all(type(d) is int and d >= 0 for d in shape):
            raise WireError("a malformed shape")
        return shape

    def decode(self, node, depth: int = 0):
        if depth > MAX_DEPTH:
            raise WireError("the message is nested too deeply")
        self.count()
        if node is None or isinstance(node, (bool, int, float)):
            return node
        if isinstance(node, str):
            if len(node) > MAX_STRING:
                raise WireError("a string longer than the limit")
            return node
        if isinstance(node, list):
            return [self.decode(n, depth + 1) for n in node]
        if not isinstance(node, dict) or not isinstance(node.get("$"), str):
            raise WireError("a malformed value")
        kind = node["$"]
        if kind == "tuple":
            return tuple(self.decode(n, depth + 1) for n in _list(node.get("v")))
        if kind == "dict":
            out = {}
            for pair in _list(node.get("v")):
                if not isinstance(pair, list) or len(pair) != 2:
                    raise WireError("a malformed dict entry")
                key = self.decode(pair[0], depth + 1)
                try:
                    out[key] = self.decode(pair[1], depth + 1)
                except TypeError:
                    raise WireError("a dict key that cannot be hashed") from None
            return out
        if kind == "float":
            text = node.get("v")
            if text not in ("nan", "inf", "-inf"):
                raise WireError("a malformed float")
            return float(text)
        if kind == "complex":
            real, imag = (self.decode(v, depth + 1) for v in _list(node.get("v"), 2))
            if not all(isinstance(v, (int, float)) for v in (real, imag)):
                raise WireError("a malformed complex number")
            return complex(real, imag)
        if kind == "bytes":
            return bytes(self.buffer(node.get("b")))
        if kind == "tensor":
            return self._tensor(node)
        if kind == "ndarray":
            return self._ndarray(node)
        if kind == "npscalar":
            np = _numpy()
            dtype = node.get("d")
            if dtype not in NUMPY_DTYPES:
                raise WireError("a numpy scalar of an unknown dtype")
            value = self.decode(node.get("v"), depth + 1)
            if not isinstance(value, (bool, int, float, complex)):
                raise WireError("a malformed numpy scalar")
            try:
                return np.array(value, dtype=dtype)[()]
            except (OverflowError, ValueError, TypeError):
                raise WireError("a numpy scalar out of range") from None
        if kind == "dtype":
            if node.get("v") not in TENSOR_DTYPES:
                raise WireError("an unknown torch dtype")
            return getattr(_torch(), node["v"])
        if kind == "handle":
            if type(node.get("n")) is not int:
                raise WireError("a malformed handle")
            return Handle(node["n"], _short(node.get("d"), "a function"))
        if kind == "error":
            return RemoteError(_short(node.get("t"), "Exception", 200), _short(node.get("m"), "", 20000),
                               _short(node.get("l"), "", 2000), _short(node.get("c"), "", 200))
        if kind == "opaque":
            return Opaque(_short(node.get("t"), "object", 200))
        raise WireError(f"an unknown kind of value {kind[:40]!r}")

    def _tensor(self, node):
        torch = _torch()
        dtype, shape = node.get("d"), self.shape(node.get("s"))
        if dtype not in TENSOR_DTYPES:
            raise WireError("a tensor of an unknown dtype")
        data = self.buffer(node.get("b"))
        torch_dtype = getattr(torch, dtype)
        numel = math.prod(shape)
        itemsize = torch.empty((), dtype=torch_dtype).element_size()
        if numel * itemsize != len(data):
            raise WireError("a tensor whose bytes do not match its shape")
        if numel == 0:
            return torch.empty(shape, dtype=torch_dtype)
        return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(torch_dtype).reshape(shape).clone()

    def _ndarray(self, node):
        np = _numpy()
        dtype, shape = node.get("d"), self.shape(node.get("s"))
        if dtype not in NUMPY_DTYPES:
            raise WireError("an array of an unknown dtype")
        data = self.buffer(node.get("b"))
        if math.prod(shape) * np.dtype(dtype).itemsize != len(data):
            raise WireError("an array whose bytes do not match its shape")
        return np.frombuffer(data, dtype=dtype).reshape(shape).copy()


def map_leaves(obj, fn):
    """``obj`` with every leaf passed through ``fn``: lists, tuples and dict values are walked."""
    if isinstance(obj, list):
        return [map_leaves(o, fn) for o in obj]
    if isinstance(obj, tuple):
        return tuple(map_leaves(o, fn) for o in obj)
    if isinstance(obj, dict):
        return {k: map_leaves(v, fn) for k, v in obj.items()}
    return fn(obj)


def _list(value, length: int | None = None) -> list:
    if not isinstance(value, list) or (length is not None and len(value) != length):
        raise WireError("a malformed list")
    return value


def _short(value, default: str, limit: int = 200) -> str:
    return value[:limit] if isinstance(value, str) else default


def decode(body: bytes):
    """The value of one message body (the bytes after the u64 length). Raises `WireError` on anything
    malformed or over the limits; never runs code from the message."""
    if len(body) < 4:
        raise WireError("a truncated message")
    (meta_length,) = struct.unpack("<I", body[:4])
    if meta_length > len(body) - 4:
        raise WireError("a truncated message header")
    try:
        tree, lengths = json.loads(body[4:4 + meta_length].decode("utf-8"))
    except (ValueError, TypeError, RecursionError):
        raise WireError("a message header that is not valid JSON") from None
    if not isinstance(lengths, list) or not all(type(n) is int and n >= 0 for n in lengths):
        raise WireError("malformed buffer lengths")
    buffers, offset = [], 4 + meta_length
    for n in lengths:
        if offset + n > len(body):
            raise WireError("a buffer runs past the end of the message")
        buffers.append(body[offset:offset + n])
        offset += n
    if offset != len(body):
        raise WireError("bytes left over after the last buffer")
    try:
        return _Decoder(buffers).decode(tree)
    except RecursionError:
        raise WireError("the message is nested too deeply") from None


def read_message(read_exactly) -> object:
    """Read one framed message with ``read_exactly(n) -> bytes`` and decode it."""
    (length,) = struct.unpack("<Q", read_exactly(8))
    if length > MAX_MESSAGE_BYTES + 2**20:
        raise WireError(f"a message of {length} bytes, over the limit")
    return decode(read_exactly(length))
