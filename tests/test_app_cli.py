"""``longalign app``: the address it binds, the URL it prints, and a server that stops with the command.

The server tests start the real command (Streamlit included) on a free port, read the bound address from the
kernel's socket table (/proc/net/tcp and tcp6), send the command SIGTERM or SIGHUP, and check that nothing
listens on the port afterwards.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from longalign.cli import app as app_cli
from longalign.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
LINUX = sys.platform.startswith("linux") and Path("/proc/net/tcp").is_file()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _hex_ip(text: str) -> str:
    raw = bytes.fromhex(text)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))  # four little-endian 32-bit words
    return socket.inet_ntop(socket.AF_INET6, words)


def listening(port: int) -> set[str]:
    """Local addresses of the TCP sockets in LISTEN state on ``port``, from /proc/net/tcp{,6}."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            addr, hex_port = fields[1].split(":")
            if fields[3] == "0A" and int(hex_port, 16) == port:
                found.add(_hex_ip(addr))
    return found


def children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def other_ipv4() -> str | None:
    """An IPv4 address of this machine that is not loopback, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            ip = s.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") or ip == "0.0.0.0" else ip


# ---------------------------------------------------------------------------------------------- command line


def test_default_address_is_loopback():
    from longalign.config import build_config

    assert build_config(app_cli.AppConfig, build_parser().parse_args(["app", "--runs", "r"])).address == "127.0.0.1"
    cmd = app_cli.build_command("r", 8600)
    assert cmd[cmd.index("--server.address") + 1] == "127.0.0.1"
    cmd = app_cli.build_command("r", 8600, address="0.0.0.0")
    assert cmd[cmd.index("--server.address") + 1] == "0.0.0.0"


def test_url_and_all_interfaces():
    assert app_cli.url_for("127.0.0.1", 8501) == "http://127.0.0.1:8501"
    assert app_cli.url_for("::1", 8501) == "http://[::1]:8501"
    assert app_cli.url_for("0.0.0.0", 9000) == f"http://{socket.gethostname()}:9000"
    assert app_cli.binds_all_interfaces("0.0.0.0") and app_cli.binds_all_interfaces("::")
    assert app_cli.binds_all_interfaces("[::]") and not app_cli.binds_all_interfaces("127.0.0.1")


@pytest.mark.parametrize("address, warned", [("127.0.0.1", False), ("0.0.0.0", True), ("::", True)])
def test_the_printed_url_and_the_warning(monkeypatch, tmp_path, capsys, address, warned):
    if address == "::" and not socket.has_ipv6:
        pytest.skip("no IPv6")
    seen = {}
    monkeypatch.setattr(app_cli, "serve", lambda cmd, env: seen.update(cmd=cmd, env=env) or 0)
    port = free_port()
    args = build_parser().parse_args(["app", "--runs", str(tmp_path), "--port", str(port), "--address", address])
    assert args.func(args) == 0
    out, err = capsys.readouterr()
    assert app_cli.url_for(address, port) in out
    assert seen["cmd"][seen["cmd"].index("--server.address") + 1] == address
    assert ("every network interface" in err) is warned


def test_a_port_in_use_is_refused(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ValueError, match=f"cannot serve on 127.0.0.1:{port}.*another --port"):
            app_cli.check_port_free("127.0.0.1", port)


# ---------------------------------------------------------------------------------------------- real server


def start_app(tmp_path: Path, *extra: str):
    port = free_port()
    (tmp_path / "runs").mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log = open(tmp_path / "app.log", "w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "longalign.cli", "app", "--runs", str(tmp_path / "runs"), "--port", str(port)]
        + ["--headless", *extra],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    deadline = time.time() + 90
    while not listening(port):
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            log.seek(0)
            pytest.fail(f"the dashboard did not start: {log.read()[-2000:]}")
        time.sleep(0.3)
    return proc, port, log


@pytest.mark.skipif(not LINUX, reason="reads the Linux socket table")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_server_binds_loopback_and_stops_with_the_command(tmp_path, sig):
    proc, port, log = start_app(tmp_path)
    try:
        assert listening(port) == {"127.0.0.1"}
        servers = children(proc.pid)
        assert servers and all(alive(p) for p in servers)
        ip = other_ipv4()
        if ip is not None:  # the machine's own network address does not reach the server
            with pytest.raises(ConnectionRefusedError), socket.create_connection((ip, port), timeout=5):
                pass
        proc.send_signal(sig)
        assert proc.wait(timeout=30) is not None
        assert not listening(port)
        assert not any(alive(p) for p in servers)
        log.seek(0)
        assert f"http://127.0.0.1:{port}" in log.read()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
