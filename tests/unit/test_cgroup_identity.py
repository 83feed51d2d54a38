"""Kubernetes identity of a GPU process from /proc/<pid>/cgroup (tests/fixtures/cgroup: v1 and v2,
cgroupfs and systemd drivers, containerd, CRI-O and Docker shapes)."""

import pytest

from exporter.procinfo import container_identity, parse_cgroup
from tests.conftest import FIXTURES

CGROUP = FIXTURES / "cgroup"


@pytest.mark.parametrize(
    ("fixture", "pod_uid", "container"),
    [
        ("v1-cgroupfs-besteffort", "74c13223-5a00-11e9-b385-42010a80018d", "34dc0b5e626f2c5c"),
        ("v1-cgroupfs-guaranteed-gke", "8dbc5577-d0e2-4706-8787-57d52c03ddf2", "14011c7d92a9e513"),
        ("v2-systemd-containerd-burstable", "12345678-1234-1234-1234-123456789abc", "a7638fe3934b3741"),
        ("v2-systemd-crio-besteffort", "01234567-cccc-dddd-eeee-ffff00001111", "a7638fe3934b3741"),
        ("v2-crio-conmon", "01234567-cccc-dddd-eeee-ffff00001111", ""),  # the monitor: a pod, no container
        ("v1-systemd-docker-centos", "", "9ec39b91f3d70e1b"),
        ("v1-docker-debian", "", "4f797c539e6c745d"),
    ],
)
def test_pod_uid_and_container_id_from_every_shape(fixture, pod_uid, container):
    found = parse_cgroup((CGROUP / f"{fixture}.txt").read_text())
    assert found is not None
    assert found[0] == pod_uid
    assert found[1][:16] == container and len(found[1]) in (0, 64)


def test_a_process_in_no_container_has_no_identity_and_garbage_is_harmless():
    assert parse_cgroup((CGROUP / "v2-host-process.txt").read_text()) is None
    assert parse_cgroup("") is None
    assert parse_cgroup("garbage\n::\n0::/kubepods/podnot-a-uid/xyz\n" + "x" * 100_000) is None


def test_read_from_a_proc_tree(tmp_path):
    (tmp_path / "4242").mkdir()
    (tmp_path / "4242" / "cgroup").write_text((CGROUP / "v2-systemd-containerd-burstable.txt").read_text())
    assert container_identity(4242, proc_root=str(tmp_path))[0] == "12345678-1234-1234-1234-123456789abc"
    assert container_identity(4243, proc_root=str(tmp_path)) is None
