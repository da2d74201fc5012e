"""The accelerator catalog: what each device model promises on its datasheet, and how to name it.

The catalog is the shared vocabulary between people and pools. A user writes ``H100`` or
``A100+``; NVML says ``NVIDIA H100 80GB HBM3``, rocm-smi ``AMD Instinct MI300X`` and npu-smi
``910B3``. All of them have to land on one entry, or a request and a pool that mean the same
device never meet. The figures are nominal (``MetricSource.nominal``): what the vendor
promises, kept beside what calibration measures, never instead of it.

Rules that the lookups rely on, enforced on validation:

- every name of an entry (id, model, aliases) is unique across the whole catalog once case,
  spaces and punctuation are ignored, so an exact name never resolves to two devices;
- every figure names its source, so a wrong number can be traced and fixed;
- peaks are dense (no structured sparsity), per package, as on the datasheet; requests are
  compared per visible device (``devices_per_package``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from enum import StrEnum
from typing import Annotated, Any

from pydantic import ConfigDict, Field, PrivateAttr, model_validator

from computenet.model.common import MemoryBytes, Model
from computenet.model.resources import DeviceKind, Precision

PRECISIONS: tuple[str, ...] = ("fp64", "fp32", "tf32", "fp16", "bf16", "fp8", "int8")
"""In the order they are shown; the same spelling as ``computenet.model.resources.Precision``."""


class Runtime(StrEnum):
    """The software stack a job must be built for; it decides how devices are handed to a job."""

    cuda = "cuda"  # NVIDIA
    rocm = "rocm"  # AMD Instinct; Hygon DCU (DTK is a HIP/ROCm derivative)
    cann = "cann"  # Huawei Ascend
    oneapi = "oneapi"  # Intel Data Center GPU (Level Zero)
    habana = "habana"  # Intel Gaudi (Intel Gaudi software, formerly SynapseAI)
    bang = "bang"  # Cambricon MLU (Neuware / BANG C)
    xpu = "xpu"  # Kunlunxin XPU (XPU runtime)
    musa = "musa"  # Moore Threads MTT
    cpu = "cpu"  # no accelerator runtime


RUNTIME_ENV: dict[Runtime, tuple[str, ...]] = {
    Runtime.cuda: ("CUDA_VISIBLE_DEVICES",),
    Runtime.rocm: ("ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES"),
    Runtime.cann: ("ASCEND_RT_VISIBLE_DEVICES",),
    Runtime.oneapi: ("ZE_AFFINITY_MASK",),
    Runtime.habana: ("HABANA_VISIBLE_MODULES",),
    Runtime.bang: ("MLU_VISIBLE_DEVICES",),
    Runtime.xpu: ("XPU_VISIBLE_DEVICES",),
    Runtime.musa: ("MUSA_VISIBLE_DEVICES",),
    Runtime.cpu: (),
}
"""Default device-visibility variables per runtime, in order of preference.

The agent sets the first and leaves the others unset: the ROCm variables filter one after
the other (HIP indices count only what ROCR left visible), so setting both to the same
indices would hide devices. An entry may override the list (Hygon's DTK documents
``HIP_VISIBLE_DEVICES``)."""

VENDOR_NAMES: dict[str, str] = {
    "nvidia": "NVIDIA",
    "amd": "AMD",
    "intel": "Intel",
    "huawei": "Huawei",
    "cambricon": "Cambricon",
    "hygon": "Hygon",
    "kunlunxin": "Kunlunxin",
    "moorethreads": "Moore Threads",
    "ampere": "Ampere",
}
"""Display spelling of vendor slugs; the slugs match what the agent's probe reports."""

SCALAR_FIGURES: tuple[str, ...] = (
    "memory_bytes",
    "memory_bandwidth_gbps",
    "interconnect",
    "tdp_watts",
)
FIGURES: frozenset[str] = frozenset(
    [*SCALAR_FIGURES, "peak_tflops", *(f"peak_tflops.{p}" for p in PRECISIONS)]
)
"""What a source may vouch for; ``peak_tflops`` covers every precision the entry lists."""

Slug = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]
VendorSlug = Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,31}$")]
ShortText = Annotated[str, Field(min_length=1, max_length=128)]
EnvName = Annotated[str, Field(pattern=r"^[A-Z_][A-Z0-9_]{0,63}$")]
Peak = Annotated[float, Field(gt=0, le=1e6, allow_inf_nan=False)]
Positive = Annotated[float, Field(gt=0, le=1e7, allow_inf_nan=False)]

_MARKS = re.compile(r"\((?:r|tm|c)\)|[®™©]", re.IGNORECASE)
_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def normalize_name(text: str) -> str:
    """The form names are compared in: lower case, trademark marks dropped, every run of
    other characters one space. ``Intel(R) Xeon(R) Platinum 8480+`` and ``xeon platinum
    8480`` differ only in the tokens they have, which is what token matching needs."""
    return _NON_ALNUM.sub(" ", _MARKS.sub(" ", text.lower())).strip()


def squash_name(text: str) -> str:
    """The normalized name without spaces: ``Ascend910B`` and ``Ascend 910B`` are one name."""
    return normalize_name(text).replace(" ", "")


class Source(Model):
    """Where some of an entry's figures come from, so that any number can be checked."""

    model_config = ConfigDict(frozen=True)

    fields: tuple[str, ...] = Field(
        min_length=1,
        max_length=16,
        description="figures vouched for: memory_bytes, memory_bandwidth_gbps, interconnect, "
        "tdp_watts, peak_tflops (all precisions) or peak_tflops.<precision>",
    )
    ref: Annotated[str, Field(min_length=1, max_length=300)] = Field(
        description="document title, e.g. 'NVIDIA H100 Tensor Core GPU datasheet'"
    )
    url: Annotated[str, Field(max_length=500, pattern=r"^(https?://\S+)?$")] = ""
    note: Annotated[str, Field(max_length=1000)] = ""
    approximate: bool = Field(
        default=False, description="derived, reported by third parties or rounded: not exact"
    )

    @model_validator(mode="after")
    def _known_fields(self) -> Source:
        """A misspelt figure name would leave the figure silently unsourced."""
        for name in self.fields:
            if name not in FIGURES:
                raise ValueError(f"unknown figure {name!r} in sources; use one of {_figure_list()}")
        return self


def _figure_list() -> str:
    return ", ".join([*SCALAR_FIGURES, "peak_tflops", "peak_tflops.<precision>"])


class CatalogEntry(Model):
    """One device model as its vendor specifies it.

    ``tier`` orders generations within one vendor's line for ``X+`` requests: NVIDIA uses the
    compute capability times ten (70 Volta, 75 Turing, 80 Ampere A100, 86 Ampere GA10x, 89
    Ada, 90 Hopper, 100 Blackwell), because code built for one runs on every higher one;
    other lines number their generations 1, 2, 3 in release order. Tiers of different
    vendors are never compared.
    """

    model_config = ConfigDict(frozen=True)

    id: Slug = Field(description="stable slug, e.g. nvidia-h100-sxm5-80gb")
    vendor: VendorSlug
    model: ShortText = Field(description="display name without the vendor, e.g. H100 SXM5 80GB")
    aliases: tuple[ShortText, ...] = Field(
        default=(), max_length=32, description="names users, NVML, rocm-smi or npu-smi use"
    )
    kind: DeviceKind
    runtime: Runtime
    arch: ShortText = Field(description="compile target or ISA: sm_90, gfx942, x86_64")
    generation: ShortText = Field(description="the vendor's architecture name: Hopper, CDNA 3")
    tier: int = Field(ge=0, le=10_000)
    form_factor: Annotated[str, Field(max_length=64)] = ""
    devices_per_package: int = Field(
        default=1,
        ge=1,
        le=64,
        description="devices the runtime shows per physical package (MI250X: 2 GCDs)",
    )
    memory_bytes: MemoryBytes | None = Field(
        default=None, description="on-package memory; unset for CPUs (system memory varies)"
    )
    memory_bandwidth_gbps: Positive | None = Field(default=None, description="10^9 bytes/s")
    peak_tflops: dict[Precision, Peak] = Field(
        default_factory=dict,
        description="dense peak per precision, per package; int8 in TOPS",
    )
    interconnect: Annotated[str, Field(max_length=200)] = ""
    tdp_watts: Positive | None = None
    env: tuple[EnvName, ...] = Field(
        default=(), max_length=8, description="device-visibility variables; the first is set"
    )
    notes: Annotated[str, Field(max_length=1000)] = ""
    sources: tuple[Source, ...] = Field(default=(), max_length=32)

    @model_validator(mode="before")
    @classmethod
    def _default_env(cls, data: Any) -> Any:
        """Fill ``env`` from the runtime so the data file states it only where it differs."""
        if isinstance(data, dict) and "env" not in data:
            try:
                runtime = Runtime(str(data.get("runtime")))
            except ValueError:
                return data  # the field validator reports the bad runtime
            return {**data, "env": RUNTIME_ENV[runtime]}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> CatalogEntry:
        """Reject an entry whose parts contradict each other or whose figures have no source:
        the catalog is trusted by the scheduler, so an unexplained number must not enter."""
        if (self.kind is DeviceKind.cpu) != (self.runtime is Runtime.cpu):
            raise ValueError(f"kind {self.kind.value} does not go with runtime {self.runtime}")
        if self.runtime is not Runtime.cpu and not self.env:
            raise ValueError("env: an accelerator needs a device-visibility variable")
        seen: dict[str, str] = {}
        for name in self.names():
            key = squash_name(name)
            if not key:
                raise ValueError(f"aliases: {name!r} has no letters or digits")
            if key in seen:
                raise ValueError(
                    f"aliases: {name!r} is the same name as {seen[key]!r} once case, spaces "
                    "and punctuation are ignored"
                )
            seen[key] = name
        covered = {f for s in self.sources for f in s.fields}
        for figure in self.figures():
            parent = figure.split(".", 1)[0]
            if figure not in covered and parent not in covered:
                raise ValueError(f"{figure} has no source; add it to a sources entry's fields")
        present = set(self.figures())
        for name in covered:
            if name == "peak_tflops":
                if not self.peak_tflops:
                    raise ValueError("sources name peak_tflops but the entry lists no peaks")
            elif name not in present:
                raise ValueError(f"sources name {name}, which the entry does not give")
        return self

    def names(self) -> tuple[str, ...]:
        return (self.id, self.model, *self.aliases)

    def figures(self) -> Iterator[str]:
        """The figures this entry gives, spelled as in ``Source.fields``."""
        for name in SCALAR_FIGURES:
            if getattr(self, name) not in (None, ""):
                yield name
        for p in self.peak_tflops:
            yield f"peak_tflops.{p}"

    def sources_for(self, figure: str) -> list[Source]:
        parent = figure.split(".", 1)[0]
        return [s for s in self.sources if figure in s.fields or parent in s.fields]

    @property
    def display_name(self) -> str:
        return f"{VENDOR_NAMES.get(self.vendor, self.vendor)} {self.model}"

    @property
    def device_memory_bytes(self) -> int | None:
        """Memory of one visible device: what a request's ``mem>=`` is compared with."""
        if self.memory_bytes is None:
            return None
        return self.memory_bytes // self.devices_per_package

    def device_tflops(self, precision: str) -> float | None:
        """Dense peak of one visible device, or None when the datasheet gives none."""
        peak = self.peak_tflops.get(precision)
        return None if peak is None else peak / self.devices_per_package

    def device_figure(self, figure: str) -> float | None:
        """A comparable per-device figure by name: a precision, ``memory_bytes`` or
        ``memory_bandwidth_gbps``."""
        if figure == "memory_bytes":
            mem = self.device_memory_bytes
            return None if mem is None else float(mem)
        if figure == "memory_bandwidth_gbps":
            bw = self.memory_bandwidth_gbps
            return None if bw is None else bw / self.devices_per_package
        if figure in PRECISIONS:
            return self.device_tflops(figure)
        raise ValueError(f"{figure!r} is not a comparable figure")

    def comparable_with(self, other: CatalogEntry) -> bool:
        """Same vendor, runtime and kind: the only entries whose tiers mean the same thing,
        and the only ones a binary built for one can run on."""
        return (
            self.vendor == other.vendor
            and self.runtime is other.runtime
            and self.kind is other.kind
        )


class Requirement(Model):
    """Minimum figures of one visible device, as a request states them (``bf16>=300T``,
    ``mem>=64G``); categorical fields, when set, must match exactly."""

    kind: DeviceKind | None = None
    vendor: VendorSlug | None = None
    runtime: Runtime | None = None
    memory_bytes: MemoryBytes | None = None
    memory_bandwidth_gbps: Positive | None = None
    peak_tflops: dict[Precision, Peak] = Field(default_factory=dict)

    def minimums(self) -> dict[str, float]:
        out: dict[str, float] = {p: float(v) for p, v in self.peak_tflops.items()}
        if self.memory_bytes is not None:
            out["memory_bytes"] = float(self.memory_bytes)
        if self.memory_bandwidth_gbps is not None:
            out["memory_bandwidth_gbps"] = float(self.memory_bandwidth_gbps)
        return out

    def admits(self, entry: CatalogEntry) -> bool:
        """Whether the categorical part fits; the figures are ``shortfall``'s business."""
        return (
            (self.kind is None or entry.kind is self.kind)
            and (self.vendor is None or entry.vendor == self.vendor)
            and (self.runtime is None or entry.runtime is self.runtime)
        )

    def shortfall(self, entry: CatalogEntry) -> float:
        """How far one device of ``entry`` is from this requirement: 0 when it meets it, the
        sum of log(required / offered) over the figures it misses otherwise, and infinity
        when the category differs or a required figure is unknown. Logarithms, so that
        missing half of one figure weighs the same whatever its unit."""
        if not self.admits(entry):
            return math.inf
        total = 0.0
        for figure, need in self.minimums().items():
            have = entry.device_figure(figure)
            if have is None or have <= 0:
                return math.inf
            if have < need:
                total += math.log(need / have)
        return total

    def surplus(self, entry: CatalogEntry) -> float:
        """How much more than asked one device offers, same scale as ``shortfall``: among
        entries that meet a request, the smallest surplus is the tightest fit."""
        total = 0.0
        for figure, need in self.minimums().items():
            have = entry.device_figure(figure)
            if have is not None and have > need > 0:
                total += math.log(have / need)
        return total


class Catalog(Model):
    """All entries, with the lookups requests and probes resolve names through."""

    model_config = ConfigDict(frozen=True)

    version: int = Field(ge=1, le=1_000_000, description="revision of the data; bump on edits")
    # Emptiness is checked in ``_unique``: pydantic's min_length would also fire, with a
    # confusing "0 items after validation", whenever a single entry is invalid.
    entries: tuple[CatalogEntry, ...] = Field(max_length=10_000)

    _exact: dict[str, CatalogEntry] = PrivateAttr(default_factory=dict)
    _by_id: dict[str, CatalogEntry] = PrivateAttr(default_factory=dict)
    _tokens: list[tuple[CatalogEntry, list[frozenset[str]]]] = PrivateAttr(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> Catalog:
        """One name, one device: an exact name that fits two entries would make a request
        silently pick one of them."""
        if not self.entries:
            raise ValueError("entries: the catalog lists no entries")
        positions: dict[str, int] = {}
        for pos, entry in enumerate(self.entries, start=1):
            if entry.id in positions:
                raise ValueError(
                    f"duplicate id {entry.id!r}: entries #{positions[entry.id]} and #{pos}"
                )
            positions[entry.id] = pos
        owner: dict[str, tuple[str, str]] = {}
        for entry in self.entries:
            for name in entry.names():
                key = squash_name(name)
                if key in owner and owner[key][0] != entry.id:
                    other_id, other_name = owner[key]
                    raise ValueError(
                        f"duplicate name: {name!r} of entry {entry.id!r} is the same name "
                        f"as {other_name!r} of entry {other_id!r}"
                    )
                owner[key] = (entry.id, name)
        return self

    def model_post_init(self, context: Any, /) -> None:
        for entry in self.entries:
            self._by_id[entry.id] = entry
            sets: list[frozenset[str]] = []
            for name in entry.names():
                self._exact[squash_name(name)] = entry
                sets.append(frozenset([*normalize_name(name).split(), entry.vendor]))
            self._tokens.append((entry, sets))

    def get(self, entry_id: str) -> CatalogEntry | None:
        return self._by_id.get(entry_id)

    def by_vendor(self, vendor: str) -> list[CatalogEntry]:
        v = vendor.strip().lower()
        return [
            e for e in self.entries if e.vendor == v or VENDOR_NAMES.get(e.vendor, "").lower() == v
        ]

    def find(self, name: str) -> list[CatalogEntry]:
        """Entries a name refers to, in catalog order; several when the name is a family.

        1. an exact name (id, model or alias; case, spaces and punctuation ignored) gives its
           one entry: ``NVIDIA H100 80GB HBM3`` is the SXM5 card;
        2. otherwise every entry one of whose names has all the query's words as whole
           words (the vendor counts as a word of every name): ``H100`` gives the SXM5, PCIe
           and NVL cards, ``nvidia a100 80gb`` both A100 80GB cards, and ``A10`` never
           means an A100;
        3. otherwise every entry whose words start with the query's words: ``MI300`` gives
           the MI300X.

        An empty list means unknown; more than one is ambiguous and callers decide whether
        any of them will do (``H100:8``) or they need one (probe matching).
        """
        key = normalize_name(name)
        if not key:
            return []
        hit = self._exact.get(key.replace(" ", ""))
        if hit is not None:
            return [hit]
        words = key.split()
        whole = [e for e, sets in self._tokens if any(set(words) <= s for s in sets)]
        if whole:
            return whole
        return [
            e
            for e, sets in self._tokens
            if any(all(any(t.startswith(w) for t in s) for w in words) for s in sets)
        ]

    def better_or_equal(
        self, entry: CatalogEntry, *, figures: Iterable[str] | None = None
    ) -> list[CatalogEntry]:
        """Entries at least as good as ``entry``: what ``X+`` means.

        A candidate qualifies when it is comparable (same vendor, runtime and kind), of the
        same or a later tier, and per visible device at least as large in every figure
        compared. By default those are every peak ``entry`` lists and its memory, so ``X+``
        never hands out less of anything the catalog knows about X; a candidate that lacks
        a compared figure does not qualify, since it cannot be shown to be better. Memory
        bandwidth is compared only when named in ``figures``, because form factors of one
        class differ in it by a few percent (an H100 PCIe has 2.0 TB/s, an A100 SXM4 80GB
        2.04 TB/s). ``entry`` itself is included.
        """
        compared = list(figures) if figures is not None else self._default_figures(entry)
        out = []
        for cand in self.entries:
            if not cand.comparable_with(entry) or cand.tier < entry.tier:
                continue
            ok = True
            for figure in compared:
                mine = entry.device_figure(figure)
                if mine is None:
                    continue
                theirs = cand.device_figure(figure)
                if theirs is None or theirs < mine:
                    ok = False
                    break
            if ok:
                out.append(cand)
        return out

    @staticmethod
    def _default_figures(entry: CatalogEntry) -> list[str]:
        figures = list(entry.peak_tflops)
        if entry.memory_bytes is not None:
            figures.append("memory_bytes")
        return figures

    def or_better(self, name: str) -> list[CatalogEntry]:
        """``X+`` for a name: the union of ``better_or_equal`` over every entry the name
        finds, i.e. at least as good as the weakest device the name may mean: ``A100+``
        starts from the A100 PCIe 40GB and includes the B200. ``H100+`` does not include
        the B200, whose FP64 peak (40) is below every H100's; a request that only cares
        about AI precisions says so with figures (``bf16>=...``), not with a class. A
        trailing ``+`` is ignored."""
        found = self.find(name.strip().removesuffix("+"))
        ids: set[str] = set()
        for entry in found:
            ids.update(e.id for e in self.better_or_equal(entry))
        return [e for e in self.entries if e.id in ids]

    def matching(self, requirement: Requirement) -> list[CatalogEntry]:
        """Entries one device of which meets the requirement, in catalog order."""
        return [e for e in self.entries if requirement.shortfall(e) == 0]

    def closest(self, requirement: Requirement, limit: int = 3) -> list[CatalogEntry]:
        """The entries nearest to a requirement, best first, to name in a refusal.

        Entries that meet it come first, tightest fit first; then the smallest shortfall
        (see ``Requirement.shortfall``). Entries of another category, or without a figure
        the requirement names, are never offered: a CPU is no neighbour of ``bf16>=5000T``.
        """
        scored = []
        for pos, e in enumerate(self.entries):
            gap = requirement.shortfall(e)
            if math.isfinite(gap):
                scored.append((gap, requirement.surplus(e) if gap == 0 else 0.0, pos, e))
        scored.sort(key=lambda t: (t[0], t[1], t[2]))
        return [e for *_, e in scored[: max(0, limit)]]

    def identify(
        self, vendor: str, model: str, memory_bytes: int | None = None
    ) -> CatalogEntry | None:
        """The one entry a probed device is, or None when unknown or still ambiguous.

        Probes report a vendor slug, the tool's model string and usable memory, which is a
        few percent below the datasheet's (ECC and firmware reservations): memory decides
        between variants of one name (A100 40GB or 80GB) when it is within 85-105% of an
        entry's per-device memory.
        """
        found = [e for e in self.find(model) if not vendor or e.vendor == vendor.lower()]
        if len(found) > 1 and memory_bytes:
            fits = []
            for e in found:
                mem = e.device_memory_bytes
                if mem and 0.85 * mem <= memory_bytes <= 1.05 * mem:
                    fits.append(e)
            found = fits
        return found[0] if len(found) == 1 else None
