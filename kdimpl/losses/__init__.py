"""One module per paper; each exports a loss function and its ``nn.Module`` twin."""

import importlib as _importlib
import pkgutil as _pkgutil

# Discovered while the package grows; replaced by explicit imports once the set is stable.
__all__: list[str] = []
for _info in sorted(_pkgutil.iter_modules(__path__), key=lambda i: i.name):
    _module = _importlib.import_module(f"{__name__}.{_info.name}")
    __all__ += _module.__all__
    globals().update({_name: getattr(_module, _name) for _name in _module.__all__})
