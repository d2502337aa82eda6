"""The bucket's content for this project, per layout prefix and per dataset (``kedro cloud check``)."""

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from .s3 import S3Object
from .settings import LAYOUT, CloudSettings, split_s3_uri


@dataclass
class PrefixSummary:
    """Objects under one prefix of the layout."""

    prefix: str
    objects: int = 0
    size: int = 0
    last_modified: datetime | None = None

    def add(self, obj: S3Object) -> None:
        """Counts ``obj``."""
        self.objects += 1
        self.size += obj.size
        if self.last_modified is None or obj.last_modified > self.last_modified:
            self.last_modified = obj.last_modified


@dataclass
class DatasetStatus:
    """Whether a catalog dataset has data at its URI (a single object, or objects below it when it is a
    directory such as a versioned or partitioned dataset)."""

    name: str
    uri: str
    objects: int = 0
    size: int = 0
    last_modified: datetime | None = None

    @property
    def present(self) -> bool:
        """True when at least one object holds the dataset."""
        return self.objects > 0


@dataclass
class Inventory:
    """Result of ``kedro cloud check``."""

    root: str
    region: str
    prefixes: list[PrefixSummary] = field(default_factory=list)
    datasets: list[DatasetStatus] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (datetimes as ISO strings)."""

        def clean(row: Any) -> dict[str, Any]:
            out = asdict(row)
            if out.get("last_modified") is not None:
                out["last_modified"] = out["last_modified"].isoformat()
            return out

        return {
            "root": self.root,
            "region": self.region,
            "prefixes": [clean(p) for p in self.prefixes],
            "datasets": [dict(clean(d), present=d.present) for d in self.datasets],
        }


def build_inventory(
    objects: Iterable[S3Object], settings: CloudSettings, datasets: dict[str, str], region: str
) -> Inventory:
    """Sorts a listing of the project root into layout prefixes and catalog datasets.

    Args:
        objects: Objects under ``settings.root``.
        settings: Bucket and prefix.
        datasets: Catalog name -> ``s3://`` URI of the datasets in the bucket.
        region: Region to report.
    """
    root_key = settings.key()
    summaries = {name: PrefixSummary(f"{name}/") for name in LAYOUT}
    other = PrefixSummary("(other)")
    statuses = {name: DatasetStatus(name, uri) for name, uri in sorted(datasets.items())}
    keys = {
        name: split_s3_uri(uri)[1]
        for name, uri in datasets.items()
        if split_s3_uri(uri)[0] == settings.bucket
    }
    for obj in objects:
        relative = obj.key[len(root_key) + 1 :] if root_key else obj.key
        top = relative.split("/", 1)[0] if "/" in relative else ""
        summaries.get(top, other).add(obj)
        for name, key in keys.items():
            if obj.key == key or obj.key.startswith(key.rstrip("/") + "/"):
                status = statuses[name]
                status.objects += 1
                status.size += obj.size
                if status.last_modified is None or obj.last_modified > status.last_modified:
                    status.last_modified = obj.last_modified
    prefixes = list(summaries.values()) + ([other] if other.objects else [])
    return Inventory(settings.root, region, prefixes, list(statuses.values()))


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "-"


def format_inventory(inventory: Inventory) -> str:
    """A plain-text report: one line per prefix, then one line per dataset."""
    lines = [
        f"{inventory.root}  (region {inventory.region})",
        "",
        f"{'prefix':<16}{'objects':>8}{'size':>12}  last modified",
    ]
    for p in inventory.prefixes:
        lines.append(f"{p.prefix:<16}{p.objects:>8}{_size(p.size):>12}  {_when(p.last_modified)}")
    present = sum(d.present for d in inventory.datasets)
    lines += ["", f"datasets: {present} of {len(inventory.datasets)} present"]
    width = max((len(d.name) for d in inventory.datasets), default=10) + 2
    for d in inventory.datasets:
        state = "present" if d.present else "MISSING"
        detail = f"{_size(d.size):>10}  {_when(d.last_modified)}" if d.present else ""
        lines.append(f"  {d.name:<{width}}{state:<9}{d.uri}  {detail}".rstrip())
    return "\n".join(lines)
