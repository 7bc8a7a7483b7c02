"""What the benchmark reports: the machine, the figures, their targets and the peers'
figures, as printed lines, a rich table and a JSON document."""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from rich.table import Table

# Figures of other job queues measured on the project's reference machine, by the key of
# the pgqueue figure they compare with.
PEERS: dict[str, dict[str, float]] = {
    "PGQueuer 1.6": {
        "enqueue_one": 2_000,
        "enqueue_bulk": 32_000,
        "process_1": 3_400,
        "process_2": 5_000,
        "pickup_p50": 4.0,
    },
    "procrastinate": {
        "enqueue_one": 835,
        "enqueue_bulk": 7_800,
        "process_1": 425,
        "process_2": 516,
    },
    "Celery+Redis": {
        "enqueue_one": 1_300,
        "enqueue_bulk": 1_100,
        "process_1": 670,
        "process_2": 1_270,
    },
}


@dataclass(frozen=True, slots=True)
class Target:
    """What the project wants of a figure: at least, at most, or at least a fraction of
    its bare bound."""

    kind: Literal["min", "max", "min_fraction"]
    value: float

    def met(self, figure: Figure) -> bool | None:
        if self.kind == "min":
            return figure.value >= self.value
        if self.kind == "max":
            return figure.value <= self.value
        fraction = figure.fraction
        return None if fraction is None else fraction >= self.value

    def describe(self, unit: str) -> str:
        if self.kind == "min_fraction":
            return f">= {self.value:.2f} of bare"
        sign = ">=" if self.kind == "min" else "<="
        return f"{sign} {number(self.value, unit)} {unit}"


@dataclass(slots=True)
class Figure:
    """One measured figure, its bare bound (when it has one) and its target."""

    key: str
    label: str
    value: float
    unit: str
    bound: float | None = None
    bound_label: str = ""
    target: Target | None = None
    peer_key: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def fraction(self) -> float | None:
        return None if not self.bound else self.value / self.bound

    def line(self) -> str:
        """E.g. ``bulk enqueue: 105,000 jobs/s = 0.93 of raw COPY 113,000/s``."""
        text = f"{self.label}: {number(self.value, self.unit)} {self.unit}"
        if self.bound is not None and self.fraction is not None:
            text += (
                f" = {self.fraction:.2f} of {self.bound_label}"
                f" {number(self.bound, self.unit)}{per(self.unit)}"
            )
        if self.target is not None:
            verdict = {True: "met", False: "NOT met", None: "n/a"}[self.target.met(self)]
            text += f"  [target {self.target.describe(self.unit)}: {verdict}]"
        return text

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "label": self.label,
            "value": round(self.value, 3),
            "unit": self.unit,
        }
        if self.bound is not None:
            out["bound"] = {"label": self.bound_label, "value": round(self.bound, 3)}
            out["fraction_of_bound"] = None if self.fraction is None else round(self.fraction, 4)
        if self.target is not None:
            out["target"] = {**asdict(self.target), "met": self.target.met(self)}
        if self.peer_key is not None:
            out["peers"] = {
                name: figures[self.peer_key]
                for name, figures in PEERS.items()
                if self.peer_key in figures
            }
        if self.detail:
            out["detail"] = self.detail
        return out


def number(value: float, unit: str) -> str:
    """Rates as whole numbers with thousands separators; milliseconds with 2 decimals."""
    return f"{value:,.2f}" if unit == "ms" else f"{value:,.0f}"


def per(unit: str) -> str:
    return " ms" if unit == "ms" else "/s"


# --- the machine ---------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def machine() -> dict[str, Any]:
    """The machine and the Python side of the software."""
    ram = _ram_gib()
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "ram_gib": None if ram is None else round(ram, 1),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "pgqueue": metadata.version("pgqueue-jobs"),
        "asyncpg": metadata.version("asyncpg"),
        "psycopg": metadata.version("psycopg"),
    }


def print_machine(info: dict[str, Any], server: dict[str, Any]) -> None:
    ram = "unknown" if info["ram_gib"] is None else f"{info['ram_gib']:.1f} GiB"
    print(
        f"machine:    {info['nproc']} CPUs (nproc), {info['cpu_model']}, {ram} RAM, "
        f"{info['kernel']}, load average {info['load_average_1m']}"
    )
    print(
        f"software:   {info['python']}, pgqueue {info['pgqueue']}, asyncpg {info['asyncpg']}, "
        f"psycopg {info['psycopg']}"
    )
    print(f"postgresql: {server['version']} ({server['where']})")
    print(
        f"durability: synchronous_commit = {server['synchronous_commit']} (checked on an "
        f"asyncpg and a psycopg session of the benchmark database), "
        f"fsync = {server['fsync']}, wal_sync_method = {server['wal_sync_method']}"
    )


# --- the summary -----------------------------------------------------------------------


def summary_table(figures: list[Figure]) -> Table:
    table = Table(title="pgqueue benchmark", title_justify="left")
    table.add_column("figure")
    table.add_column("pgqueue", justify="right")
    table.add_column("bare bound", justify="right")
    table.add_column("of bound", justify="right")
    table.add_column("target", justify="right")
    for name in PEERS:
        table.add_column(name, justify="right", style="dim")
    for figure in figures:
        met = figure.target.met(figure) if figure.target is not None else None
        style = {True: "green", False: "red", None: ""}[met]
        value = f"{number(figure.value, figure.unit)} {figure.unit}"
        cells = [
            figure.label,
            f"[{style}]{value}[/]" if style else value,
            "" if figure.bound is None else number(figure.bound, figure.unit),
            "" if figure.fraction is None else f"{figure.fraction:.2f}",
            "" if figure.target is None else figure.target.describe(figure.unit),
        ]
        for peer in PEERS.values():
            peer_value = peer.get(figure.peer_key or "")
            cells.append("" if peer_value is None else number(peer_value, figure.unit))
        table.add_row(*cells)
    return table
