"""``longalign app``: open the Streamlit dashboard on a folder of run directories.

The dashboard (``app/Home.py`` and ``app/pages/``) only reads run directories through
:mod:`longalign.views`; this command starts ``streamlit run`` with the runs folder passed after ``--`` (and
in ``$LONGALIGN_RUNS``, which the pages read when no ``--runs`` is given).

The server binds 127.0.0.1 (this machine only) unless ``--address`` names another address; binding every
interface (``0.0.0.0`` or ``::``) serves the run folders (documents, prompts, predictions) to the network and
prints a warning. The server runs as a child process that stops with the command: SIGTERM and SIGHUP (what a
process manager, ``docker stop`` or a closed terminal send) are passed on to it and the command waits for it
to exit, as it does on Ctrl-C; on Linux the child also gets SIGTERM should the command die without a chance
to pass anything on.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from longalign.config import Options, add_config_args, build_config, option

RUNS_ENV = "LONGALIGN_RUNS"
DEFAULT_ADDRESS = "127.0.0.1"
ALL_INTERFACES = ("0.0.0.0", "::", "")
STOP_WAIT_S = 15.0  # how long the command waits for the server after passing a signal on, before killing it


@dataclass
class AppConfig(Options):
    """Options of ``longalign app``."""

    runs: str = option("runs", help="folder holding run directories")
    port: int = option(8501, minimum=1, maximum=65535, help="port to serve on")
    address: str = option(
        DEFAULT_ADDRESS,
        help="address to bind: 127.0.0.1 serves this machine only; 0.0.0.0 or :: serves every interface, "
        "so anyone who reaches the machine can read the runs",
    )
    headless: bool = option(False, help="do not open a browser window")


def app_script() -> Path:
    """``app/Home.py`` next to the package (the app ships with the source tree)."""
    return Path(__file__).resolve().parents[2] / "app" / "Home.py"


def build_command(
    runs: str | Path, port: int, headless: bool = False, address: str | None = DEFAULT_ADDRESS
) -> list[str]:
    """The ``streamlit run`` command line for the dashboard."""
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(app_script()),
        "--server.port",
        str(int(port)),
        "--browser.gatherUsageStats",
        "false",
    ]
    if headless:
        cmd += ["--server.headless", "true"]
    cmd += ["--server.address", address if address is not None else DEFAULT_ADDRESS]
    return cmd + ["--", "--runs", str(runs)]  # relative paths resolve against the working directory


def binds_all_interfaces(address: str) -> bool:
    """Whether binding ``address`` serves every network interface."""
    return address.strip("[]") in ALL_INTERFACES


def url_for(address: str, port: int) -> str:
    """The URL a browser opens for a server bound to ``address``: the host's name for all interfaces, an IPv6
    literal in brackets."""
    host = address.strip("[]")
    if binds_all_interfaces(host):
        host = socket.gethostname()
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass
    return f"http://{host}:{int(port)}"


def check_port_free(address: str, port: int) -> None:
    """Refuse a port another program already listens on (Streamlit would fail later, less clearly)."""
    host = address.strip("[]") or "0.0.0.0"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ValueError(f"--address {address!r} is not an address of this machine ({exc.strerror})") from None
    family, _, _, _, sockaddr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(sockaddr)
        except OSError as exc:
            raise ValueError(
                f"cannot serve on {address}:{port} ({exc.strerror}); another program holds the port or the "
                "address is not on this machine: pass another --port or --address"
            ) from None


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def serve(cmd: list[str], env: dict[str, str], *, poll_s: float = 0.2) -> int:
    """Run the server until it exits and return its exit status (0 after Ctrl-C).

    SIGTERM or SIGHUP to this process is passed on to the server as SIGTERM. Ctrl-C reaches the server from
    the terminal already; a SIGINT from elsewhere is passed on when the server is still up a moment later.
    After passing a signal on, the command waits up to ``STOP_WAIT_S`` seconds, then kills the server."""
    proc = subprocess.Popen(cmd, env=env, preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    deadline: list[float] = []  # set once the server was asked to stop
    interrupted_at: list[float] = []

    def pass_on(signum: int, frame: object) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        if not deadline:
            deadline.append(time.monotonic() + STOP_WAIT_S)

    handled = [s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None]
    previous = {s: signal.signal(s, pass_on) for s in handled}
    try:
        while True:
            try:
                code = proc.wait(timeout=poll_s)
                return 0 if interrupted_at else code
            except subprocess.TimeoutExpired:
                now = time.monotonic()
                if interrupted_at and not deadline and now - interrupted_at[0] > 3.0:
                    proc.send_signal(signal.SIGINT)
                    deadline.append(now + STOP_WAIT_S)
                if deadline and now > deadline[0]:
                    print(f"the dashboard did not stop within {STOP_WAIT_S:.0f} s; killing it", file=sys.stderr)
                    proc.kill()
                    return proc.wait()
            except KeyboardInterrupt:
                if not interrupted_at:
                    interrupted_at.append(time.monotonic())
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _handler(args: argparse.Namespace) -> int:
    cfg = build_config(AppConfig, args)
    script = app_script()
    if not script.is_file():
        raise FileNotFoundError(
            f"{script} not found: the dashboard ships with the source tree; run "
            f"`longalign app` from a clone of the project (pip install -e .)"
        )
    runs = Path(cfg.runs)
    address = cfg.address.strip() or "0.0.0.0"
    check_port_free(address, cfg.port)
    if not runs.is_dir():
        print(
            f"note: {runs} does not exist yet; the dashboard will say so until a stage writes a run there",
            file=sys.stderr,
        )
    env = dict(os.environ, **{RUNS_ENV: str(runs)})
    cmd = build_command(runs, cfg.port, headless=cfg.headless, address=address)
    if binds_all_interfaces(address):
        print(
            f"warning: --address {address} serves the dashboard on every network interface: anyone who can reach "
            f"this machine on port {cfg.port} can read the runs in {runs} (documents, prompts, predictions); "
            f"use --address {DEFAULT_ADDRESS} (the default) and an SSH tunnel to keep them private",
            file=sys.stderr,
        )
    print(f"LongAlign Workbench dashboard on {url_for(address, cfg.port)} (runs folder {runs})", flush=True)
    return serve(cmd, env)


def register(subparsers) -> None:
    """Add ``longalign app``."""
    p = subparsers.add_parser(
        "app",
        help="open the dashboard (Streamlit) on a folder of runs",
        description="Start the Streamlit dashboard: lengths, packing, simulator, training curves, LongBench-Chat "
        "and needle results, all read from run directories.",
    )
    add_config_args(p, AppConfig, with_config_file=False)
    p.set_defaults(func=_handler)
