"""Child processes: stopping one, and tying one's life to ours."""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
from typing import Optional

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """A `preexec_fn`: the child gets SIGKILL when the thread that started it ends, however this
    process dies. Runs between fork and exec, so only where no other thread runs yet."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def terminate(proc: Optional[subprocess.Popen], grace: float = 5.0, name: str = "") -> Optional[int]:
    """SIGTERM, then SIGKILL after `grace` seconds (said on stderr when `name` is given); the
    exit status (None: nothing to stop)."""
    if proc is None:
        return None
    if proc.poll() is None:
        try:
            proc.terminate()
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            if name:
                print(f"{name} did not stop in {grace:.0f} s: killing it", file=sys.stderr)
            proc.kill()
            proc.wait(timeout=5)
        except ProcessLookupError:
            pass
    return proc.returncode
