"""`dmalab bench device`: the report's schema, ratios, targets and table, and one tiny real run."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from dmalab.artifacts.qemu import QemuBuild
from dmalab.bench import KiB, MiB, Stat, mbps, parse_size, ratio, size_label
from dmalab.bench import device as bench
from dmalab.bench import memcpy as host_memcpy
from dmalab.cli import main

SIZES = [4 * KiB, 16 * MiB]


def stat(value: float) -> Stat:
    return Stat.of([value * 0.9, value, value * 1.1])


def fake_report(coherent: float = 6000, cache: float = 900, iotlb: float = 500) -> dict:
    device = {
        name: {s: bench.Measurement(s, 4, stat(v), {"cache_misses": 1}) for s in SIZES}
        for name, v in (("coherent", coherent), ("cache", cache), ("iommu-iotlb", iotlb),
                        ("iommu-no-iotlb", iotlb / 2), ("virt-cache", cache),
                        ("smmuv3-iotlb", iotlb), ("smmuv3-no-iotlb", iotlb / 2))
    }  # fmt: skip
    return bench.build_report(
        sizes=SIZES,
        memcpy={s: stat(10000) for s in SIZES},
        memcpy_counts={s: 4 for s in SIZES},
        device=device,
        meta={"date": "2025-01-01T00:00:00+00:00", "machine": {}, "qemu": {}},
    )


def test_stat_median_min_max() -> None:
    s = Stat.of([3.0, 1.0, 2.0, 10.0, 2.5])
    assert (s.median, s.min, s.max) == (2.5, 1.0, 10.0)
    assert s.to_json()["samples_mbps"] == [3.0, 1.0, 2.0, 10.0, 2.5]
    with pytest.raises(ValueError):
        Stat.of([])


def test_units_and_ratios() -> None:
    assert mbps(64 * 10**6, 2.0) == 32.0
    assert ratio(5.0, 10.0) == 0.5
    assert ratio(None, 10.0) is None
    assert ratio(5.0, 0.0) is None
    assert size_label(4096) == "4 KiB" and size_label(16 * MiB) == "16 MiB"
    assert [parse_size(t) for t in ("4K", "64KiB", "1M", "16MiB", "8192")] == [
        4 * KiB, 64 * KiB, MiB, 16 * MiB, 8192,
    ]  # fmt: skip
    for bad in ("", "x", "-4K", "0"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_batch_count() -> None:
    assert host_memcpy.batch_count(4 * KiB, 64 * MiB) == 16384
    assert host_memcpy.batch_count(16 * MiB, 64 * MiB) == 4
    assert host_memcpy.batch_count(48 * MiB, 64 * MiB) == 2  # at least the batch size
    assert host_memcpy.batch_count(4 * KiB, 64 * MiB, 1000) == 1000  # the ring is full first


def test_baselines_compare_like_for_like() -> None:
    by_name = {c.name: c for c in bench.CONFIGS}
    assert not by_name["coherent"].cached and by_name["cache"].cached
    assert bench.baseline_of(by_name["cache"], bench.CONFIGS) is None
    assert bench.baseline_of(by_name["iommu-iotlb"], bench.CONFIGS) is by_name["cache"]
    assert bench.baseline_of(by_name["iommu-no-iotlb"], bench.CONFIGS) is by_name["cache"]
    coherent_iommu = bench.DeviceConfig("x", "x", "coherent=on", iommu=bench.IOMMU)
    assert bench.baseline_of(coherent_iommu, bench.CONFIGS) is by_name["coherent"]
    # SMMUv3 is compared with the same device on the same (virt) machine, not with q35's
    assert bench.baseline_of(by_name["smmuv3-iotlb"], bench.CONFIGS) is by_name["virt-cache"]
    assert bench.baseline_of(by_name["smmuv3-no-iotlb"], bench.CONFIGS) is by_name["virt-cache"]


def test_report_schema_and_ratios() -> None:
    report = fake_report()
    assert report["schema"] == bench.SCHEMA
    assert json.loads(json.dumps(report)) == report  # plain JSON all the way down
    assert {c["name"] for c in report["configs"]} == {c.name for c in bench.CONFIGS}
    iotlb = next(c for c in report["configs"] if c["name"] == "iommu-iotlb")
    assert iotlb["baseline"] == "cache" and iotlb["iommu"] == bench.IOMMU
    result = iotlb["results"][1]
    assert result["size"] == 16 * MiB and result["batch_bytes"] == 4 * 16 * MiB
    assert result["median_mbps"] == 500 and result["min_mbps"] == 450
    assert result["vs_memcpy"] == pytest.approx(0.05)
    assert result["vs_baseline"] == pytest.approx(500 / 900, abs=1e-4)
    cache = next(c for c in report["configs"] if c["name"] == "cache")
    assert cache["baseline"] is None and cache["results"][0]["vs_baseline"] is None


def test_targets_pass_and_fail() -> None:
    passing = fake_report(coherent=3000, cache=500, iotlb=450)
    assert [t["pass"] for t in passing["targets"]] == [True, True, True, True]
    assert passing["all_targets_pass"]
    failing = fake_report(coherent=2999, cache=499, iotlb=200)
    assert [t["pass"] for t in failing["targets"]] == [False, False, False, False]
    assert not failing["all_targets_pass"]
    assert failing["targets"][2]["value"] == pytest.approx(200 / 499, abs=1e-4)


def test_unmeasured_target_is_not_a_pass() -> None:
    report = bench.build_report(
        sizes=[4 * KiB],
        memcpy={4 * KiB: stat(100)},
        memcpy_counts={4 * KiB: 1},
        device={"coherent": {4 * KiB: bench.Measurement(4 * KiB, 1, stat(50))}},
    )
    assert all(t["pass"] is None for t in report["targets"])
    assert not report["all_targets_pass"]


def test_table() -> None:
    table = bench.render_table(fake_report(coherent=6000, cache=400, iotlb=300))
    lines = table.splitlines()
    assert lines[2].startswith("| size") and "host memcpy" in lines[2]
    assert "| 16 MiB |" in table and "10000 [9000-11000]" in table
    assert "60.0%" in table  # coherent / memcpy
    assert "75.0%" in table  # iotlb / cache on
    assert table.count("PASS") == 3 and table.count("FAIL") == 1  # cache on: 4% < 5% of memcpy
    assert len({len(line) for line in lines[2:6]}) == 1  # aligned columns


def test_bad_sizes_are_bad_input() -> None:
    result = CliRunner().invoke(main, ["bench", "device", "--size", "3000"])
    assert result.exit_code == 2
    result = CliRunner().invoke(main, ["bench", "device", "--size", "lots"])
    assert result.exit_code == 2 and "--size" in result.output


def test_tiny_real_run(qemu_build: QemuBuild, tmp_path) -> None:
    """Every configuration on a real QEMU with small sizes: the JSON is complete (no timings)."""
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(
        main,
        [
            "bench",
            "device",
            "--size",
            "4K,8K",
            "--repeats",
            "1",
            "--batch-mib",
            "1",
            "--json",
            "--output",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert result.stdout == ""  # the result went to the file
    assert report["sizes"] == [4 * KiB, 8 * KiB]
    assert report["machine"]["cores"] >= 1 and report["machine"]["cpu_model"]
    assert report["qemu"]["binary"] and "manifest" in report["qemu"]
    assert [m["size"] for m in report["memcpy"]] == report["sizes"]
    assert [c["name"] for c in report["configs"]] == [c.name for c in bench.CONFIGS]
    for config in report["configs"]:
        assert [r["size"] for r in config["results"]] == report["sizes"]
        for r in config["results"]:
            assert r["median_mbps"] > 0 and r["vs_memcpy"] > 0
            assert r["descriptors"] * r["size"] >= 1 * MiB
            assert r["counters"]["bytes_written"] == r["batch_bytes"]
            if config["baseline"]:
                assert r["vs_baseline"] > 0
    iommu = next(c for c in report["configs"] if c["name"] == "iommu-iotlb")
    assert iommu["results"][0]["counters"]["iotlb_hits"] > 0
    assert len(report["targets"]) == len(bench.TARGETS)
    assert "host memcpy" in bench.render_table(report)
