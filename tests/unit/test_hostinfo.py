"""llm_host_cpu_info: py-cpuinfo in a child process, cache sizes from the kernel."""

import pytest

from exporter.hostinfo import cpu_info_labels, read_host_cpu, sysfs_cache_bytes


def write_cache(root, index, level, kind, size):
    d = root / f"index{index}"
    d.mkdir(parents=True)
    (d / "level").write_text(f"{level}\n")
    (d / "type").write_text(f"{kind}\n")
    (d / "size").write_text(f"{size}\n")


def test_cache_sizes_come_from_the_kernel(tmp_path):
    write_cache(tmp_path, 0, 1, "Data", "48K")
    write_cache(tmp_path, 2, 2, "Unified", "2048K")
    write_cache(tmp_path, 3, 3, "Unified", "32M")
    assert sysfs_cache_bytes(2, str(tmp_path)) == 2 * 2**20
    assert sysfs_cache_bytes(3, str(tmp_path)) == 32 * 2**20
    assert sysfs_cache_bytes(3, str(tmp_path / "absent")) is None
    # py-cpuinfo said 512 KiB of L3 where the kernel says 32 MiB (seen on a real host): the kernel wins
    labels = dict(cpu_info_labels({"l3_cache_size": 524288, "l2_cache_size": 1}, l2=2 * 2**20, l3=32 * 2**20))
    assert labels["l3_cache_bytes"] == str(32 * 2**20) and labels["l2_cache_bytes"] == str(2 * 2**20)
    # without sysfs, py-cpuinfo's figure; garbage in its dict becomes an empty label, never a crash
    labels = dict(cpu_info_labels({"l3_cache_size": 524288, "count": True, "flags": ["avx512f", 3]}))
    assert labels["l3_cache_bytes"] == "524288" and labels["logical_cores"] == "" and labels["avx512"] == "true"


@pytest.mark.timeout(60)
async def test_read_host_cpu_runs_py_cpuinfo_in_a_child_process():
    import sys

    labels = dict(await read_host_cpu())
    assert labels["brand"] and labels["arch"] and int(labels["logical_cores"]) >= 1
    assert "cpuinfo" not in sys.modules  # never imported into the exporter
    kernel_l3 = sysfs_cache_bytes(3)
    if kernel_l3 is not None:
        assert labels["l3_cache_bytes"] == str(kernel_l3)
