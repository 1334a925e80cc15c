"""Space is reserved when it is handed out: a fabric on a filesystem too small
for it refuses topics past the space with NoSpace, and producers on the
topics that fit never fault (no SIGBUS).

Each scenario runs in a child process inside its own mount namespace with a
small tmpfs mounted there (as root ``unshare -m``, otherwise ``unshare -rm``),
so the machine's own mounts and /dev/shm are untouched. The producer runs in
a further child whose exit code the test checks."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

PRODUCER = textwrap.dedent("""
    import sys
    from grafos.mq.producer import Producer
    from grafos.mq.topic import TopicManager
    where, topics = sys.argv[1], sys.argv[2:]
    mgr = TopicManager.open(path=where, create=False) if "/" in where else TopicManager.open(where, create=False)
    value = b"v" * 400
    for t in topics:
        prod = Producer(t)
        cap = mgr.topic(t).config.partition_capacity * mgr.topic(t).n
        for _ in range(3 * cap):          # three laps of every ring: every page written
            prod.send(mgr, value)
    mgr.close()
""")

FILE_FABRIC = textwrap.dedent("""
    import json, subprocess, sys
    from grafos.errors import NoSpace
    from grafos.mq.topic import TopicConfig, TopicManager
    d, producer = sys.argv[1], sys.argv[2]
    path = d + "/bus.grafos"
    mgr = TopicManager.open(path=path, size=64 << 20)        # 64 MiB, sparse, on an 8 MiB tmpfs
    cfg = TopicConfig(num_partitions=1, partition_capacity=2048, partition_stride=512)
    made, errors = [], []
    for i in range(60):
        try:
            mgr.create(f"t{i}", cfg)
            made.append(f"t{i}")
        except NoSpace as e:
            errors.append({"errno": e.errno, "msg": str(e), "oserror": isinstance(e, OSError)})
            if len(errors) == 3:
                break
    child = subprocess.run([sys.executable, "-c", producer, path, *made])
    desc = [mgr.describe(t).produced for t in made]
    print(json.dumps({"made": made, "errors": errors, "rc": child.returncode, "produced": desc}))
""")

SHM_FABRIC = textwrap.dedent("""
    import json, subprocess, sys, uuid, warnings
    from grafos.errors import NoSpace, SpaceWarning
    from grafos.mq.topic import TopicManager
    producer = sys.argv[1]
    name = "space-" + uuid.uuid4().hex
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        mgr = TopicManager.open(name)                        # the default 256 MiB
    warned = [str(x.message) for x in w if issubclass(x.category, SpaceWarning)]
    made, errors = [], []
    for i in range(40):
        try:
            mgr.create(f"t{i}")                               # default config: 4 x 2 MiB
            made.append(f"t{i}")
        except NoSpace as e:
            errors.append({"errno": e.errno, "msg": str(e), "oserror": isinstance(e, OSError)})
            break
    child = subprocess.run([sys.executable, "-c", producer, name, *made])
    produced = [mgr.describe(t).produced for t in made]
    mgr.close()
    TopicManager.unlink(name)
    print(json.dumps({"made": made, "errors": errors, "rc": child.returncode,
                      "produced": produced, "warned": warned}))
""")


def _unshare() -> list[str]:
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1): cannot make a mount namespace")
    base = ["unshare", "-m", "--propagation", "private"]
    return base if os.geteuid() == 0 else base[:1] + ["-r"] + base[1:]


def _run_in_mount_ns(mountpoint: str, size: str, script: str, *args: str) -> dict:
    """Run ``script`` with a ``size`` tmpfs on ``mountpoint`` in a new mount namespace."""
    cmd = _unshare() + ["sh", "-c", f'mount -t tmpfs -o size={size} tmpfs "$0" && exec "$@"',
                        mountpoint, sys.executable, "-c", script, *args]
    probe = subprocess.run(_unshare() + ["sh", "-c", f'mount -t tmpfs -o size=1m tmpfs "$0"', mountpoint],
                           capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a mount namespace: {probe.stderr.decode().strip()}")
    res = subprocess.run(cmd, capture_output=True, timeout=300)
    assert res.returncode == 0, f"scenario died with {res.returncode}: {res.stderr.decode()[-2000:]}"
    return json.loads(res.stdout.decode().strip().splitlines()[-1])


def _check_errors(out: dict) -> None:
    assert out["errors"], f"every topic was created ({len(out['made'])}): nothing refused past the space"
    for e in out["errors"]:
        assert e["errno"] == 28 and e["oserror"]
        assert "needs" in e["msg"] and "bytes free" in e["msg"], e["msg"]


def test_should_refuse_topics_past_the_space_when_file_fabric_is_on_a_small_tmpfs(tmp_path):
    out = _run_in_mount_ns(str(tmp_path), "8m", FILE_FABRIC, str(tmp_path), PRODUCER)
    _check_errors(out)
    assert 3 <= len(out["made"]) <= 8, out["made"]          # ~1 MiB each on 8 MiB
    assert out["rc"] == 0, f"producer exited with {out['rc']} (negative: killed by signal {-out['rc']})"
    assert out["produced"] == [3 * 2048] * len(out["made"])


def test_should_warn_and_refuse_past_64mib_when_dev_shm_is_dockers_default():
    out = _run_in_mount_ns("/dev/shm", "64m", SHM_FABRIC, PRODUCER)
    assert out["warned"] and "--shm-size" in out["warned"][0] and "--ipc=host" in out["warned"][0]
    _check_errors(out)
    msg = out["errors"][0]["msg"]
    assert "--shm-size" in msg and "--ipc=host" in msg and "path=" in msg
    assert 4 <= len(out["made"]) <= 8, out["made"]          # 8 MiB topics on 64 MiB
    assert out["rc"] == 0, f"producer exited with {out['rc']} (negative: killed by signal {-out['rc']})"
    assert out["produced"] == [3 * 4 * 4096] * len(out["made"])
