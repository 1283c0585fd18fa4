"""A sandbox for one submission's kernel: bubblewrap on Linux, resource limits everywhere.

The kernel of a submission runs student code, so it must not be able to reach anything but its
own empty folder. With Debian's ``bubblewrap`` (``bwrap``) the kernel sees:

- the system (``/usr``, the dynamic loader's files) and the Python environment, **read-only**;
- the ``cnnlib`` package folder read-only — not the repository around it, so ``solutions/``, the
  grader's output folder and other submissions do not exist for it;
- its own empty working folder (read-write), a private ``/tmp`` and ``HOME``, a private ``/proc``;
- no network (its own network namespace; the grader talks to it over Unix sockets in a folder only
  this kernel and the grader share) and its own PID namespace: it cannot see or signal the grader or
  other kernels, and when it ends, every process it started ends with it.

Inside, before the kernel starts, resource limits are set (``setrlimit``): address space, file
size, open files, CPU time and (when the grader does not run as root, which the kernel ignores)
processes. Without ``bwrap`` (macOS, or a system that forbids namespaces) only the limits apply:
``sandbox_problem()`` says why, and the grader prints it once as a warning.
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

GIB = 1 << 30


@dataclass(frozen=True)
class Limits:
    """Per-kernel resource limits (``setrlimit``; each applies to every process of the kernel)."""
    memory: int = 8 * GIB          # address space per process (torch alone maps ~1.5 GiB)
    file_size: int = 256 << 20     # the largest file it may write
    open_files: int = 1024
    cpu_seconds: int = 3600        # CPU time per process, all threads together
    processes: int = 256           # only enforced for a non-root grader (root ignores RLIMIT_NPROC)

    def rlimits(self) -> list[tuple[str, int]]:
        pairs = [("RLIMIT_AS", self.memory), ("RLIMIT_FSIZE", self.file_size),
                 ("RLIMIT_NOFILE", self.open_files), ("RLIMIT_CPU", self.cpu_seconds),
                 ("RLIMIT_CORE", 0)]
        if os.geteuid() != 0:
            pairs.append(("RLIMIT_NPROC", self.processes))
        return pairs


# Runs inside the sandbox: set the limits, ignore SIGXFSZ (a too-large write then fails with an
# OSError instead of killing the kernel), then become the kernel.
_LAUNCHER = (
    "import os, resource, signal, sys\n"
    "for name, value in {limits!r}:\n"
    "    soft, hard = resource.getrlimit(getattr(resource, name))\n"
    "    value = value if hard == resource.RLIM_INFINITY else min(value, hard)\n"
    "    resource.setrlimit(getattr(resource, name), (value, value))\n"
    "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'ipykernel_launcher', *sys.argv[1:]])\n"
)


@functools.cache
def sandbox_problem() -> str:
    """"" when ``bwrap`` can sandbox a process here, else why not (one line)."""
    if not sys.platform.startswith("linux"):
        return f"bubblewrap sandboxing needs Linux (this is {sys.platform})"
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return "bubblewrap is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
    try:
        probe = subprocess.run([bwrap, *_system_binds(), "--unshare-all", "--die-with-parent",
                                "--proc", "/proc", "--dev", "/dev", sys.executable, "-c", "pass"],
                               capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"bwrap could not run: {err}"
    if probe.returncode != 0:
        why = probe.stderr.decode(errors="replace").strip().splitlines()
        return f"bwrap cannot create namespaces here: {why[-1] if why else probe.returncode}"
    return ""


def _system_binds() -> list[str]:
    """Read-only binds of the system and the Python environment (the interpreter, its standard
    library, the virtual environment's site-packages)."""
    paths = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
             "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/alternatives",
             "/etc/localtime", "/etc/passwd", "/etc/group", "/etc/nsswitch.conf", "/etc/fonts",
             sys.base_prefix, sys.prefix, str(Path(sys.executable).resolve().parent)]
    args, seen = [], set()
    for p in paths:
        if p not in seen:
            seen.add(p)
            args += ["--ro-bind-try", p, p]
    return args


def _package_folder() -> str:
    """The installed ``cnnlib`` package (an editable install lives in the repository: bind only
    the package, never the folder around it)."""
    return str(Path(__file__).resolve().parents[1])


def kernel_command(box: Path, limits: Limits, *, sandbox: bool) -> list[str]:
    """The command line of a kernel whose working folder is ``box/work`` and whose connection
    file and sockets live in ``box/run`` (``{connection_file}`` is filled in by jupyter_client)."""
    launch = [sys.executable, "-c", _LAUNCHER.format(limits=limits.rlimits()), "-f", "{connection_file}",
              "--HistoryManager.hist_file=:memory:"]
    if not sandbox:
        return launch
    # In its own PID namespace the kernel cannot see the grader's PID and would take it for dead;
    # bwrap's --die-with-parent does that watching instead.
    launch.append("--IPKernelApp.parent_handle=1")
    work, run = str(box / "work"), str(box / "run")
    # the private /tmp first: binds applied after it stay visible even when the course, its virtual
    # environment or the grading folders live under /tmp (a clone in /tmp, pytest's tmp_path)
    return [shutil.which("bwrap"), "--tmpfs", "/tmp", *_system_binds(),
            "--ro-bind", _package_folder(), _package_folder(),
            "--proc", "/proc", "--dev", "/dev",
            "--dir", "/tmp/home", "--bind", work, work, "--bind", run, run,
            "--chdir", work, "--unshare-all", "--die-with-parent", "--new-session",
            "--hostname", "sandbox", "--", *launch]


def kernel_env(home: str, tmp: str, *, threads: int) -> dict:
    """A minimal environment for the kernel: of the grader's own only PATH, the locale and
    OMP_NUM_THREADS; the quick profile; every cache and configuration folder under ``home``."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home, "TMPDIR": tmp,
           "LANG": os.environ.get("LANG", "C.UTF-8"), "CNNLIB_PROFILE": "quick",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads)),
           "MPLBACKEND": "Agg", "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    for name, sub in (("CNNLIB_CACHE", "cnnlib-cache"), ("MPLCONFIGDIR", "matplotlib"), ("IPYTHONDIR", "ipython"),
                      ("JUPYTER_CONFIG_DIR", "jupyter"), ("JUPYTER_DATA_DIR", "jupyter"),
                      ("JUPYTER_RUNTIME_DIR", "jupyter/runtime")):
        env[name] = os.path.join(home, sub)
    return env
