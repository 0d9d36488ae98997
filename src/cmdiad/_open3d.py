"""Import open3d after making its libusb dependency loadable without root."""

from __future__ import annotations

import ctypes
import functools
from types import ModuleType


@functools.cache
def open3d() -> ModuleType:
    """The ``open3d`` module, with ``libusb-1.0.so.0`` preloaded from ``libusb-package``."""
    try:
        import libusb_package

        path = libusb_package.get_library_path()
        if path is not None:
            ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    except (ImportError, OSError):  # system libusb may still be there
        pass
    import open3d as o3d

    o3d.utility.set_verbosity_level(o3d.utility.VerbosityLevel.Error)
    return o3d
