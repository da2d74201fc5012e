"""The accelerator catalog: the packaged data validates, every figure is sourced, names resolve
as docs/catalog.md says, ``X+`` and the closest-entry helper give sensible answers, and a
malformed catalog is rejected with a message that names the entry and the field."""

from __future__ import annotations

import copy
import math
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
import yaml

from computenet.catalog import DATA_FILE, CatalogError, data_path, load, parse, read
from computenet.model.catalog import (
    PRECISIONS,
    RUNTIME_ENV,
    Catalog,
    CatalogEntry,
    Requirement,
    Runtime,
    squash_name,
)
from computenet.model.resources import DeviceKind

GiB = 2**30


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load()


def ids(entries: list[CatalogEntry]) -> list[str]:
    return [e.id for e in entries]


def raw() -> dict[str, Any]:
    """The packaged data as plain YAML, to break in the malformed-catalog tests."""
    data = yaml.safe_load(data_path().read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def entry_of(data: dict[str, Any], entry_id: str) -> dict[str, Any]:
    return next(e for e in data["entries"] if e["id"] == entry_id)


# --------------------------------------------------------------------------- the data file


def test_packaged_file_is_package_data() -> None:
    # hatchling ships every file under src/computenet in the wheel; resources must find it
    # there and in the source tree alike, without a path relative to the checkout.
    path = files("computenet.catalog") / DATA_FILE
    assert path.is_file()
    assert "entries:" in path.read_text(encoding="utf-8")


def test_loads_validates_and_is_cached(catalog: Catalog) -> None:
    assert catalog.version >= 1
    assert len(catalog.entries) >= 35
    assert load() is catalog


def test_ids_and_names_unique(catalog: Catalog) -> None:
    assert len({e.id for e in catalog.entries}) == len(catalog.entries)
    owner: dict[str, str] = {}
    for e in catalog.entries:
        for name in e.names():
            key = squash_name(name)
            assert owner.setdefault(key, e.id) == e.id, f"{name!r} names two entries"


def test_every_figure_has_a_source(catalog: Catalog) -> None:
    for e in catalog.entries:
        figures = list(e.figures())
        assert figures, e.id
        for figure in figures:
            sources = e.sources_for(figure)
            assert sources, f"{e.id}: {figure} has no source"
            assert all(s.ref for s in sources)
        for s in e.sources:
            if s.approximate:
                assert s.note, f"{e.id}: an approximate source must say how it was obtained"


def test_coverage_of_the_issue(catalog: Catalog) -> None:
    wanted = {
        "nvidia": ["H200", "H100 SXM", "H100 PCIe", "H20", "L40S", "L20", "A100 80GB",
                   "A100 40GB", "A800", "A10", "V100", "T4", "RTX 4090", "B200"],
        "amd": ["MI300X", "MI250X", "MI210", "EPYC 9654"],
        "intel": ["Gaudi 2", "Gaudi 3", "Max 1550", "Xeon Platinum 8480+"],
        "huawei": ["Ascend 910B", "Ascend 910", "Ascend 310P", "Kunpeng 920"],
        "cambricon": ["MLU370-X8"],
        "hygon": ["DCU Z100", "C86 7285"],
        "kunlunxin": ["R200"],
        "ampere": ["Altra"],
    }  # fmt: skip
    for vendor, names in wanted.items():
        for name in names:
            found = catalog.find(name)
            assert found and all(e.vendor == vendor for e in found), name
    kinds = {e.kind for e in catalog.entries}
    assert {DeviceKind.gpu, DeviceKind.npu, DeviceKind.cpu} <= kinds
    cpus = [e for e in catalog.entries if e.kind is DeviceKind.cpu]
    assert all({"fp64", "fp32"} <= set(e.peak_tflops) for e in cpus)
    assert all(e.memory_bytes is None for e in cpus)


def test_figures_are_plausible(catalog: Catalog) -> None:
    """Catches typos such as a sparse figure left unhalved in one column: within a device,
    narrower formats never run slower than wider ones on the datasheets used here."""
    for e in catalog.entries:
        p = e.peak_tflops
        chain = [
            p.get("fp64"),
            p.get("fp32"),
            max(p.get("fp16", 0), p.get("bf16", 0)) or None,
            max(p.get("fp8", 0), p.get("int8", 0)) or None,
        ]
        present = [x for x in chain if x is not None]
        assert present == sorted(present), f"{e.id}: {p}"
        if "tf32" in p:
            assert p.get("fp32", 0) <= p["tf32"] <= max(p.get("fp16", 0), p.get("bf16", 0))
        if e.memory_bandwidth_gbps is not None:
            assert 50 <= e.memory_bandwidth_gbps <= 20_000, e.id
        if e.tdp_watts is not None:
            assert 10 <= e.tdp_watts <= 2000, e.id
        if e.memory_bytes is not None:
            assert 4 * GiB <= e.memory_bytes <= 1024 * GiB, e.id


def test_runtime_env(catalog: Catalog) -> None:
    assert set(RUNTIME_ENV) == set(Runtime)
    expected_first = {
        Runtime.cuda: "CUDA_VISIBLE_DEVICES",
        Runtime.cann: "ASCEND_RT_VISIBLE_DEVICES",
        Runtime.oneapi: "ZE_AFFINITY_MASK",
        Runtime.habana: "HABANA_VISIBLE_MODULES",
        Runtime.bang: "MLU_VISIBLE_DEVICES",
        Runtime.xpu: "XPU_VISIBLE_DEVICES",
        Runtime.musa: "MUSA_VISIBLE_DEVICES",
    }
    for e in catalog.entries:
        if e.runtime is Runtime.cpu:
            assert e.env == () and e.kind is DeviceKind.cpu
        elif e.runtime is Runtime.rocm:
            first = "HIP_VISIBLE_DEVICES" if e.vendor == "hygon" else "ROCR_VISIBLE_DEVICES"
            assert e.env[0] == first, e.id
        else:
            assert e.env[0] == expected_first[e.runtime], e.id


# ---------------------------------------------------------------------------- name lookup


def test_find_family_and_exact_names(catalog: Catalog) -> None:
    h100 = ids(catalog.find("H100"))
    assert {"nvidia-h100-sxm5-80gb", "nvidia-h100-pcie-80gb"} <= set(h100)
    assert all("h100" in i for i in h100)
    # NVML names pick one card; case, punctuation and the vendor prefix do not matter.
    assert ids(catalog.find("NVIDIA H100 80GB HBM3")) == ["nvidia-h100-sxm5-80gb"]
    assert ids(catalog.find("nvidia h100 pcie")) == ["nvidia-h100-pcie-80gb"]
    assert ids(catalog.find("NVIDIA A100-SXM4-80GB")) == ["nvidia-a100-sxm4-80gb"]
    assert ids(catalog.find("h100-sxm5-80gb")) == ["nvidia-h100-sxm5-80gb"]
    assert ids(catalog.find("nvidia-h100-sxm5-80gb")) == ["nvidia-h100-sxm5-80gb"]
    assert ids(catalog.find("MI300X")) == ["amd-instinct-mi300x"]
    assert ids(catalog.find("AMD Instinct MI300X")) == ["amd-instinct-mi300x"]
    assert ids(catalog.find("Ascend 910B")) == ["huawei-ascend-910b"]
    assert ids(catalog.find("Ascend910B")) == ["huawei-ascend-910b"]


def test_find_whole_words_before_prefixes(catalog: Catalog) -> None:
    assert ids(catalog.find("A10")) == ["nvidia-a10"]  # never an A100
    assert ids(catalog.find("a100 80gb")) == ["nvidia-a100-sxm4-80gb", "nvidia-a100-pcie-80gb"]
    assert len(catalog.find("A100")) == 4
    assert ids(catalog.find("910")) == ["huawei-ascend-910"]  # not the 910B
    assert ids(catalog.find("910B3")) == ["huawei-ascend-910b"]  # what npu-smi reports
    assert ids(catalog.find("MI300")) == ["amd-instinct-mi300x"]  # prefix, last resort
    assert ids(catalog.find("Kunpeng-920")) == ["huawei-kunpeng-920-7260"]  # lscpu
    assert ids(catalog.find("Intel(R) Xeon(R) Platinum 8480+")) == ["intel-xeon-platinum-8480-plus"]
    assert ids(catalog.find("AMD EPYC 9654 96-Core Processor")) == ["amd-epyc-9654"]


def test_find_unknown(catalog: Catalog) -> None:
    assert catalog.find("") == []
    assert catalog.find("  +  ") == []
    assert catalog.find("TPU v5p") == []


def test_identify_probed_devices(catalog: Catalog) -> None:
    def identified(vendor: str, model: str, memory: int | None = None) -> str | None:
        entry = catalog.identify(vendor, model, memory)
        return None if entry is None else entry.id

    # Usable memory is a little under the datasheet's; it settles A100 40GB vs 80GB.
    assert identified("nvidia", "A100-SXM4", 79 * GiB) == "nvidia-a100-sxm4-80gb"
    assert identified("nvidia", "A100-SXM4", 39 * GiB) == "nvidia-a100-sxm4-40gb"
    assert identified("nvidia", "Tesla T4", 15 * GiB) == "nvidia-t4"
    assert identified("huawei", "Ascend 910B3") == "huawei-ascend-910b"
    assert identified("nvidia", "A100", 39 * GiB) is None  # SXM4 or PCIe: ambiguous
    assert identified("amd", "NVIDIA H100 PCIe") is None  # vendor disagrees
    assert identified("nvidia", "NVIDIA RTX 9999") is None


# ------------------------------------------------------------------------------------ X+


def test_a100_or_better(catalog: Catalog) -> None:
    better = set(ids(catalog.or_better("A100+")))
    assert {"nvidia-h100-sxm5-80gb", "nvidia-h100-pcie-80gb", "nvidia-h200-sxm-141gb"} <= better
    assert {"nvidia-b200", "nvidia-a800-sxm4-80gb", "nvidia-a100-pcie-40gb"} <= better
    # older, smaller or cut-down parts are not A100-class, whatever one figure says
    for worse in ["nvidia-v100-sxm2-32gb", "nvidia-t4", "nvidia-l40s", "nvidia-h20-96gb"]:
        assert worse not in better
    assert {e.vendor for e in catalog.entries if e.id in better} == {"nvidia"}


def test_better_or_equal_of_one_entry(catalog: Catalog) -> None:
    a100 = catalog.get("nvidia-a100-sxm4-80gb")
    assert a100 is not None
    better = ids(catalog.better_or_equal(a100))
    assert a100.id in better  # reflexive
    assert "nvidia-a100-sxm4-40gb" not in better  # less memory
    assert "nvidia-h100-sxm5-80gb" in better
    assert "amd-instinct-mi300x" not in better  # another runtime: not comparable


def test_figures_narrow_the_comparison(catalog: Catalog) -> None:
    sxm = catalog.get("nvidia-h100-sxm5-80gb")
    assert sxm is not None
    assert "nvidia-b200" not in ids(catalog.better_or_equal(sxm))  # FP64 40 < 67
    assert "nvidia-b200" not in ids(catalog.or_better("H100"))
    ai_only = ids(catalog.better_or_equal(sxm, figures=["bf16", "memory_bytes"]))
    assert "nvidia-b200" in ai_only
    assert "nvidia-h100-pcie-80gb" not in ai_only  # 756 < 989 bf16
    # bandwidth only when asked for: the H100 PCIe has 2.0 TB/s, the A100 SXM4 2.04
    a100 = catalog.get("nvidia-a100-sxm4-80gb")
    assert a100 is not None
    assert "nvidia-h100-pcie-80gb" in ids(catalog.better_or_equal(a100))
    with_bw = [*a100.peak_tflops, "memory_bytes", "memory_bandwidth_gbps"]
    assert "nvidia-h100-pcie-80gb" not in ids(catalog.better_or_equal(a100, figures=with_bw))


def test_other_lines(catalog: Catalog) -> None:
    assert set(ids(catalog.or_better("MI210"))) == {
        "amd-instinct-mi210",
        "amd-instinct-mi250x",  # per GCD: 64 GB, 191.5 bf16 >= 181
        "amd-instinct-mi300x",
        "amd-instinct-mi325x",
    }
    assert "huawei-ascend-910b" in ids(catalog.or_better("Ascend 910+"))
    assert ids(catalog.or_better("EPYC 9654+")) == ["amd-epyc-9654"]
    assert catalog.or_better("no such device+") == []


def test_per_device_figures(catalog: Catalog) -> None:
    mi250x = catalog.get("amd-instinct-mi250x")
    assert mi250x is not None and mi250x.devices_per_package == 2
    assert mi250x.device_memory_bytes == 64 * GiB
    assert mi250x.device_tflops("bf16") == pytest.approx(191.5)
    assert mi250x.device_tflops("fp8") is None
    with pytest.raises(ValueError, match="not a comparable figure"):
        mi250x.device_figure("tdp_watts")


# ------------------------------------------------------------------- requirements, closest


def test_matching(catalog: Catalog) -> None:
    req = Requirement(peak_tflops={"bf16": 300}, memory_bytes="64G")
    found = set(ids(catalog.matching(req)))
    assert {"nvidia-h100-sxm5-80gb", "amd-instinct-mi300x", "huawei-ascend-910b"} <= found
    assert "nvidia-l40s" not in found  # 48 GB
    assert "intel-data-center-gpu-max-1550" in found  # per stack: 64 GB, 419.5 bf16
    assert "amd-instinct-mi250x" not in found  # per GCD: 191.5 bf16
    nvidia = Requirement(peak_tflops={"bf16": 300}, memory_bytes="64G", runtime="cuda")
    assert all(e.runtime is Runtime.cuda for e in catalog.matching(nvidia))
    # closest puts the tightest fit first among those that meet it
    assert catalog.closest(req, limit=1)[0].id == "huawei-ascend-910b"


def test_closest_for_an_impossible_request(catalog: Catalog) -> None:
    req = Requirement(peak_tflops={"bf16": 5000})
    assert catalog.matching(req) == []
    near = catalog.closest(req, limit=3)
    assert ids(near)[0] == "nvidia-b200"
    assert len(near) == 3
    assert all(e.kind is not DeviceKind.cpu and "bf16" in e.peak_tflops for e in near)
    gaps = [req.shortfall(e) for e in near]
    assert gaps == sorted(gaps) and all(g > 0 and math.isfinite(g) for g in gaps)

    big = catalog.closest(Requirement(memory_bytes="300G"), limit=2)
    assert ids(big) == ["amd-instinct-mi325x", "amd-instinct-mi300x"]
    assert catalog.closest(Requirement(vendor="nosuchvendor")) == []
    assert catalog.closest(req, limit=0) == []


def test_shortfall(catalog: Catalog) -> None:
    h100 = catalog.get("nvidia-h100-sxm5-80gb")
    t4 = catalog.get("nvidia-t4")
    assert h100 is not None and t4 is not None
    assert Requirement(peak_tflops={"bf16": 900}).shortfall(h100) == 0
    assert Requirement(peak_tflops={"bf16": 1978.8}).shortfall(h100) == pytest.approx(
        math.log(2), rel=1e-3
    )
    assert Requirement(peak_tflops={"bf16": 1}).shortfall(t4) == math.inf  # no bf16 on T4
    assert Requirement(kind="npu").shortfall(h100) == math.inf


# --------------------------------------------------------------------- malformed catalogs


def reject(data: Any, *fragments: str) -> str:
    with pytest.raises(CatalogError) as info:
        parse(data, "test.yaml")
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_unknown_field_names_entry_and_field() -> None:
    data = raw()
    entry_of(data, "nvidia-t4")["colour"] = "green"
    reject(data, "test.yaml", "entry 'nvidia-t4'", "colour", "Extra inputs are not permitted")


def test_negative_figure_names_entry_and_field() -> None:
    data = raw()
    entry_of(data, "amd-instinct-mi300x")["peak_tflops"]["bf16"] = -1
    message = reject(data, "entry 'amd-instinct-mi300x'", "peak_tflops.bf16", "greater than 0")
    assert message.count("\n") == 0, message  # one problem, one line: no follow-on noise
    data = raw()
    entry_of(data, "nvidia-l4")["memory_bytes"] = "-24G"
    reject(data, "entry 'nvidia-l4'", "memory_bytes")
    data = raw()
    entry_of(data, "nvidia-l4")["tdp_watts"] = 0
    reject(data, "entry 'nvidia-l4'", "tdp_watts")


def test_unsourced_figure_rejected() -> None:
    data = raw()
    entry_of(data, "nvidia-h100-sxm5-80gb")["sources"][0]["fields"].remove("tdp_watts")
    reject(data, "entry 'nvidia-h100-sxm5-80gb'", "tdp_watts has no source")
    data = raw()
    entry_of(data, "nvidia-t4")["sources"][0]["fields"].append("peak_tflops.fp4")
    reject(data, "entry 'nvidia-t4'", "unknown figure 'peak_tflops.fp4'")
    data = raw()
    entry_of(data, "nvidia-t4")["sources"][0]["fields"].append("peak_tflops.bf16")
    reject(data, "entry 'nvidia-t4'", "peak_tflops.bf16, which the entry does not give")


def test_unknown_precision_rejected() -> None:
    data = raw()
    entry_of(data, "nvidia-b200")["peak_tflops"]["fp4"] = 9000
    reject(data, "entry 'nvidia-b200'", "peak_tflops.fp4")


def test_duplicate_names_rejected() -> None:
    data = raw()
    entry_of(data, "nvidia-h100-pcie-80gb")["aliases"].append("nvidia h100 80gb hbm3")
    reject(data, "'nvidia h100 80gb hbm3'", "nvidia-h100-pcie-80gb", "nvidia-h100-sxm5-80gb")
    data = raw()
    clone = copy.deepcopy(entry_of(data, "nvidia-t4"))
    clone["aliases"] = []
    clone["model"] = "T4 again"
    data["entries"].append(clone)
    reject(data, "duplicate id", "'nvidia-t4'")
    data = raw()
    entry_of(data, "nvidia-t4")["aliases"].append("t-4")
    reject(data, "entry 'nvidia-t4'", "'t-4' is the same name as 'T4'")


def test_inconsistent_entry_rejected() -> None:
    data = raw()
    entry_of(data, "amd-epyc-9654")["runtime"] = "rocm"
    reject(data, "entry 'amd-epyc-9654'", "kind cpu does not go with runtime rocm")
    data = raw()
    entry_of(data, "nvidia-t4")["runtime"] = "opencl"
    reject(data, "entry 'nvidia-t4'", "runtime")
    data = raw()
    entry_of(data, "nvidia-t4")["id"] = "Nvidia T4"
    reject(data, "entry 'Nvidia T4'", "id", "pattern")
    data = raw()
    del data["entries"][0]["id"]
    reject(data, "entry #1", "id", "Field required")


def test_whole_file_problems(tmp_path: Path) -> None:
    reject({"entries": []}, "version: Field required")
    reject({"version": 1, "entries": []}, "the catalog lists no entries")
    reject([1, 2], "Input should be")
    dup = tmp_path / "dup.yaml"
    dup.write_text("version: 1\nversion: 2\nentries: []\n", encoding="utf-8")
    with pytest.raises(CatalogError, match=r"dup\.yaml: not valid YAML: .*duplicate key"):
        read(dup)
    with pytest.raises(CatalogError, match="cannot read"):
        read(tmp_path / "missing.yaml")


def test_read_a_site_copy(tmp_path: Path) -> None:
    data = raw()
    data["entries"] = [e for e in data["entries"] if e["vendor"] == "amd"]
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    site = read(path)
    assert {e.vendor for e in site.entries} == {"amd"}
    assert ids(site.find("MI300X")) == ["amd-instinct-mi300x"]
    assert PRECISIONS[0] == "fp64"
