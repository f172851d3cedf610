"""Reading torch.save files without running code, the same on every torch.

torch.load(weights_only=True) is not that: torch 1.10 has no such argument, and the
safe unpickler of torch 1.13 refuses lists of Python floats (bias_corr.pth). So the
pickle is read here with a pickle.Unpickler whose find_class knows only
collections.OrderedDict, the tensor rebuild functions and the storage types; the
storages are read from the file by persistent_load. Any other global (os.system,
a class to construct, ...) is refused before it is looked up, so nothing runs.

Both formats of torch.save are read:
- zip (torch >= 1.6): NAME/data.pkl holds the object, NAME/data/KEY the raw bytes of
  storage KEY, NAME/byteorder (torch >= 2.1, else little) their byte order;
- legacy (torch < 1.6, or _use_new_zipfile_serialization=False): pickles of a magic
  number, the protocol version, the system info and the object, a pickled list of
  storage keys, then per key an int64 element count and the raw bytes.
"""
import collections
import io
import pickle
import struct
import zipfile

import numpy as np

LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
LEGACY_PROTOCOL = 1001

# storage type name -> numpy dtype of its elements (little-endian)
STORAGE_DTYPES = {
    "DoubleStorage": "<f8", "FloatStorage": "<f4", "HalfStorage": "<f2",
    "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2",
    "CharStorage": "i1", "ByteStorage": "u1", "BoolStorage": "?",
}


class UnsafeError(pickle.UnpicklingError):
    """The file refers to a Python object other than tensors and plain containers."""


class _StorageType(object):
    """Stands for torch.FloatStorage & co. in the pickle: only its name is used."""

    def __init__(self, name):
        self.name = name


def _rebuild_tensor(storage, storage_offset, size, stride, *ignored):
    # _rebuild_tensor_v2 also passes requires_grad, backward_hooks (an empty
    # OrderedDict) and, from torch 1.13 on, metadata: a loaded tensor needs none of them.
    import torch

    if not isinstance(storage, torch.Tensor):
        raise pickle.UnpicklingError("a tensor without a storage")
    if not (isinstance(storage_offset, int) and isinstance(size, tuple) and isinstance(stride, tuple)):
        raise pickle.UnpicklingError("a tensor with a malformed shape")
    needed = storage_offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1 if all(size) else 0
    if storage_offset < 0 or needed > storage.numel():
        raise pickle.UnpicklingError("a tensor larger than its storage (truncated?)")
    return torch.as_strided(storage, size, stride, storage_offset)


def _rebuild_parameter(data, requires_grad, backward_hooks, *ignored):
    import torch

    return torch.nn.Parameter(data, requires_grad)


def _nothing(*args):
    return None


ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}
ALLOWED.update((("torch", name), _StorageType(name)) for name in STORAGE_DTYPES)


def _tensor_from_bytes(data, storage_type, what):
    import torch

    if not isinstance(storage_type, _StorageType):
        raise pickle.UnpicklingError("{}: not a storage type".format(what))
    dtype = np.dtype(STORAGE_DTYPES[storage_type.name])
    if len(data) % dtype.itemsize:
        raise pickle.UnpicklingError("{}: {} bytes, not a whole number of {}".format(what, len(data), storage_type.name))
    # a copy: the tensor owns writable memory, as after torch.load
    return torch.from_numpy(np.frombuffer(data, dtype=dtype).copy())


class _Unpickler(pickle.Unpickler):
    """read_storage(key, storage type) gives storage `key`; with build=False nothing
    is built (the rebuild functions return None), only the storages are named."""

    def __init__(self, file, read_storage, build=True):
        super(_Unpickler, self).__init__(file)
        self.read_storage = read_storage
        self.build = build
        self.storages = {}

    def find_class(self, module, name):
        try:
            found = ALLOWED[(module, name)]
        except KeyError:
            raise UnsafeError("{}.{}".format(module, name))
        if not self.build and found in (_rebuild_tensor, _rebuild_parameter):
            return _nothing
        return found

    def persistent_load(self, pid):
        if self.read_storage is None:
            raise pickle.UnpicklingError("a storage where none is expected")
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError("an unknown persistent id")
        storage_type, key = pid[1], str(pid[2])
        if key not in self.storages:
            self.storages[key] = self.read_storage(key, storage_type)
        storage = self.storages[key]
        if not self.build:
            return None
        view = pid[5] if len(pid) > 5 else None
        if view is not None:  # legacy format: (view key, offset, size) into the storage
            view_key, offset, view_size = view
            if view_key not in self.storages:
                self.storages[view_key] = storage[offset:offset + view_size]
            storage = self.storages[view_key]
        return storage


def _load_zip(path):
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise pickle.UnpicklingError("no data.pkl in the archive")
        prefix = pickles[0][:-len("data.pkl")]
        if prefix + "byteorder" in names and archive.read(prefix + "byteorder") != b"little":
            raise pickle.UnpicklingError("big-endian tensors")

        def read_storage(key, storage_type):
            record = prefix + "data/" + key
            if record not in names:
                raise pickle.UnpicklingError("storage {} missing from the archive".format(key))
            return _tensor_from_bytes(archive.read(record), storage_type, "storage " + key)

        return _Unpickler(io.BytesIO(archive.read(pickles[0])), read_storage).load()


def _load_legacy(path):
    with open(path, "rb") as f:
        if _Unpickler(f, None).load() != LEGACY_MAGIC:
            raise pickle.UnpicklingError("not a torch.save file (wrong magic number)")
        if _Unpickler(f, None).load() != LEGACY_PROTOCOL:
            raise pickle.UnpicklingError("an unknown torch.save protocol")
        info = _Unpickler(f, None).load()
        if not (isinstance(info, dict) and info.get("little_endian", True)):
            raise pickle.UnpicklingError("big-endian tensors")
        # The storages follow the object, whose pickle alone gives their types: a first
        # pass over it, with the same refusals but no tensors built, finds them.
        start = f.tell()
        types = {}

        def note_type(key, storage_type):
            types[key] = storage_type

        _Unpickler(f, note_type, build=False).load()
        keys = _Unpickler(f, None).load()
        if not (isinstance(keys, list) and set(keys) <= set(types)):
            raise pickle.UnpicklingError("a storage list that does not match the object")
        storages = {}
        for key in keys:
            count = struct.unpack("<q", _read_exactly(f, 8))[0]
            itemsize = np.dtype(STORAGE_DTYPES[types[key].name]).itemsize
            if count < 0:
                raise pickle.UnpicklingError("storage {}: negative size".format(key))
            storages[key] = _tensor_from_bytes(_read_exactly(f, count * itemsize), types[key], "storage " + key)
        f.seek(start)

        def stored(key, storage_type):
            if key not in storages:
                raise pickle.UnpicklingError("storage {} missing from the file".format(key))
            return storages[key]

        return _Unpickler(f, stored).load()


def _read_exactly(f, n):
    here = f.tell()
    f.seek(0, io.SEEK_END)
    if f.tell() - here < n:  # checked before reading: a damaged size could be huge
        raise EOFError
    f.seek(here)
    data = f.read(n)
    if len(data) != n:
        raise EOFError
    return data


def is_legacy(path):
    """The legacy format is a pickle (first byte 0x80, the PROTO opcode)."""
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"


def load(path):
    """The object in torch.save file `path`, tensors on the CPU.

    Raises UnsafeError (its text: the refused global) for anything but tensors,
    state dicts and plain containers of numbers and strings; pickle.UnpicklingError,
    zipfile.BadZipFile, EOFError or ValueError for a damaged file."""
    return _load_legacy(path) if is_legacy(path) else _load_zip(path)
