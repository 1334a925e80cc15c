"""``grafos top``: one frame (``--once``) of a bus another process is writing
to, and the live view in a real terminal (tmux): keys sort, filter and quit."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

HELPERS = Path(__file__).parents[1] / "helpers"
GRAFOS = [sys.executable, "-c", "from grafos.cli import main; main()"]


@pytest.fixture
def live_bus(shm_name):
    """A named bus owned and written to by another process (tests/helpers/top_procs.py)."""
    proc = subprocess.Popen([sys.executable, str(HELPERS / "top_procs.py"), shm_name],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield shm_name
    finally:
        proc.kill()
        proc.wait(10)


def test_top_once_should_show_rates_groups_and_dlq_depth_of_a_bus_another_process_writes(live_bus):
    r = subprocess.run([*GRAFOS, "top", live_bus, "--once", "--json", "--interval", "0.5"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    frame = json.loads(r.stdout)
    topics = {t["topic"]: t for t in frame["topics"]}
    assert sorted(topics) == ["audit", "orders", "orders-dlq"]
    assert topics["orders"]["rate"] > 0 and all(p["rate"] > 0 for p in topics["orders"]["partitions"])
    assert topics["audit"]["rate"] == 0 and topics["audit"]["produced"] == 0
    assert topics["orders-dlq"]["dlq_depth"] == 1
    assert topics["orders"]["dlq_depth"] is None and topics["audit"]["dlq_depth"] is None
    assert all(0 < p["ttl"] <= 600 for p in topics["orders"]["partitions"])
    billing = {g["group"]: g for g in frame["groups"]}["billing"]
    parts = {p["partition"]: p for p in billing["partitions"]}
    assert parts[0]["owner"] == parts[1]["owner"] == "w1"
    assert parts[0]["committed"] == 5 and parts[0]["lag"] >= 10 - 5

    text = subprocess.run([*GRAFOS, "top", live_bus, "--once", "--interval", "0.2"],
                          capture_output=True, text=True, timeout=60)
    assert text.returncode == 0, text.stderr
    for word in ("orders-dlq", "audit", "billing", "w1", "lease TTL", "msg/s"):
        assert word in text.stdout, word


def test_top_once_should_filter_by_topic(live_bus):
    text = subprocess.run([*GRAFOS, "top", live_bus, "--once", "--topic", "aud", "--interval", "0.1"],
                          capture_output=True, text=True, timeout=60)
    assert text.returncode == 0, text.stderr
    assert "audit" in text.stdout and "orders" not in text.stdout and "billing" not in text.stdout


def test_top_should_refuse_json_without_once(live_bus):
    r = subprocess.run([*GRAFOS, "top", live_bus, "--json"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--once" in r.stderr


def _tmux() -> str:
    tmux = shutil.which("tmux")
    if tmux is None and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-q", "tmux"], capture_output=True, timeout=300)
        tmux = shutil.which("tmux")
    if tmux is None:
        pytest.skip("tmux is not installed and could not be installed")
    return tmux


def test_top_should_sort_filter_and_quit_on_keys_in_a_real_terminal(live_bus):
    tmux = _tmux()
    sock = f"grafos-top-{uuid.uuid4().hex[:8]}"

    def t(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([tmux, "-L", sock, "-f", os.devnull, *args], capture_output=True, text=True, timeout=30)

    def pane() -> str:
        return t("capture-pane", "-p", "-t", "top").stdout

    def wait_for(pred, what: str) -> str:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            screen = pane()
            if pred(screen):
                return screen
            time.sleep(0.1)
        raise AssertionError(f"the pane never showed {what}:\n{screen}")

    # the pane's own size, not the one this process may have in its environment
    cmd = " ".join(["env", "-u", "COLUMNS", "-u", "LINES", sys.executable, "-c", "'from grafos.cli import main; main()'",
                    "top", live_bus, "--interval", "0.2"])
    assert t("new-session", "-d", "-s", "top", "-x", "160", "-y", "50", cmd).returncode == 0
    try:
        wait_for(lambda s: "orders-dlq" in s and "billing" in s and "sort: name" in s, "the first frame")
        t("send-keys", "-t", "top", "s")
        # sorted by rate, the topic being written to comes first (by name it comes after audit)
        wait_for(lambda s: "sort: rate" in s and s.index("orders") < s.index("audit"), "the rate sort")
        t("send-keys", "-t", "top", "/")
        t("send-keys", "-t", "top", "-l", "aud")
        wait_for(lambda s: "filter: aud_" in s, "the filter being typed")
        t("send-keys", "-t", "top", "Enter")
        screen = wait_for(lambda s: "filter: aud " in s or s.rstrip().endswith("filter: aud"), "the filter")
        screen = wait_for(lambda s: "topics 1/3" in s, "one topic of three")
        assert "audit" in screen and "orders" not in screen and "billing" not in screen
        t("send-keys", "-t", "top", "q")
        deadline = time.monotonic() + 10
        while t("has-session", "-t", "top").returncode == 0:
            assert time.monotonic() < deadline, f"q did not quit:\n{pane()}"
            time.sleep(0.1)
    finally:
        t("kill-server")


def test_top_once_should_read_a_jetstream_bus_by_its_url(nats_url):
    from grafos.mq.producer import Producer
    from grafos.mq.topic import TopicConfig, TopicManager
    mgr = TopicManager.connect(nats_url)
    try:
        mgr.create("js-top", TopicConfig(2, 64, 256))
        prod = Producer("js-top")
        for i in range(6):
            prod.send_keyed(mgr, b"k%d" % i, b"v")
        r = subprocess.run([*GRAFOS, "top", nats_url, "--once", "--json", "--interval", "0.1"],
                           capture_output=True, text=True, timeout=60)
    finally:
        mgr.close()
    assert r.returncode == 0, r.stderr
    topics = {t["topic"]: t for t in json.loads(r.stdout)["topics"]}
    assert topics["js-top"]["produced"] == 6 and len(topics["js-top"]["partitions"]) == 2
