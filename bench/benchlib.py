"""What the bench scripts share: the name of the machine they ran on."""
from __future__ import annotations

import os
import platform


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(*versions: str) -> str:
    """'<cpu>, N cores, Python x.y.z, <versions...>' for a bench table's header."""
    return ", ".join([cpu_name(), f"{os.cpu_count()} cores",
                      f"Python {platform.python_version()}", *versions])
