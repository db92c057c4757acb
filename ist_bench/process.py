"""What every ist-bench process sets before it imports a third-party library.

ist-bench never downloads, so it never touches the network, and a command's stderr holds only what
ist-bench itself says. Two third-party habits break that, and `entry()` (the CLI's `main`, a suite
worker's and a rank's `main` run inside it) prevents both:

- The Hugging Face libraries look things up on the Hub (kernels, telemetry, model files). Their own
  offline switches are set before any of them is imported. They are defaults: a user who exports
  `HF_HUB_OFFLINE=0` (or any of `OFFLINE`) keeps that value.
- bitsandbytes, once installed, is imported by `import peft` (peft.helpers), and on import it looks
  for CPU kernels on the Hub through the `kernels` package and logs "Failed to load CPU
  gemm_4bit_forward from kernels-community" on stderr, depending on the CPU (AVX-512 BF16). So it is
  hidden (`sys.modules["bitsandbytes"] = None`: an import fails as if it were not installed) until a
  quantized case or a bitsandbytes optimizer asks for it through `use_bitsandbytes()`, which reveals it
  and makes peft, transformers and accelerate look again.

Importing `ist_bench` as a library (`from ist_bench.selection import IST`) changes nothing of this.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
           # transformers' own advice (a fallback kernel, an unused config key) would be lines on our stderr
           "TRANSFORMERS_VERBOSITY": "error"}
BNB = "bitsandbytes"

# Availability probes the libraries cache (functools.lru_cache) once asked: (module, function).
_PROBES = (("peft.import_utils", "is_bnb_available"), ("peft.import_utils", "is_bnb_4bit_available"),
           ("transformers.utils.import_utils", "is_bitsandbytes_available"),
           ("accelerate.utils.imports", "_is_package_available"))
# Modules that import bitsandbytes at their own import time, if available then.
_BOUND = ("peft.helpers", "transformers.integrations.bitsandbytes")


def go_offline() -> None:
    for key, value in OFFLINE.items():
        os.environ.setdefault(key, value)


def hide_bitsandbytes() -> bool:
    """Hide bitsandbytes from imports until `use_bitsandbytes()`; False if it is already imported (or
    hidden)."""
    if BNB in sys.modules:
        return False
    sys.modules[BNB] = None
    return True


def bitsandbytes_hidden() -> bool:
    return BNB in sys.modules and sys.modules[BNB] is None


def reveal_bitsandbytes() -> None:
    """Undo `hide_bitsandbytes`: the probes peft, transformers and accelerate cached while it was hidden
    are asked again. Nothing is imported here (importing bitsandbytes is what prints)."""
    if not bitsandbytes_hidden():
        return
    del sys.modules[BNB]
    for module, name in _PROBES:
        probe = getattr(sys.modules.get(module), name, None)
        if hasattr(probe, "cache_clear"):
            probe.cache_clear()


def use_bitsandbytes():
    """bitsandbytes for a quantized case (ImportError if it is not installed); modules that were
    imported while it was hidden and bound it then get it now."""
    import logging

    reveal_bitsandbytes()
    # on a CPU with AVX-512 BF16 it looks for Hub kernels and logs the failure (offline: always)
    logging.getLogger(f"{BNB}.backends.cpu.ops").setLevel(logging.ERROR)
    bnb = importlib.import_module(BNB)
    for module in _BOUND:
        if module in sys.modules and getattr(sys.modules[module], "bnb", None) is None:
            if module == "peft.helpers":
                sys.modules[module].bnb = bnb
            else:
                importlib.reload(sys.modules[module])
    return bnb


def prepare() -> bool:
    """A worker's or a rank's first step: offline, bitsandbytes hidden, third-party warnings filtered.
    True if this call hid bitsandbytes."""
    from ist_bench import filter_third_party_warnings

    go_offline()
    filter_third_party_warnings()
    return hide_bitsandbytes()


@contextlib.contextmanager
def entry():
    """`prepare()` around a command, and bitsandbytes revealed again on the way out (a test or a
    notebook may call the CLI's `main`, then use it)."""
    hid = prepare()
    try:
        yield
    finally:
        if hid:
            reveal_bitsandbytes()
