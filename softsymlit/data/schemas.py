"""Branch layouts of jet ROOT files and their mapping to the batch contract."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Schema:
    """How a ROOT file lays out jets, and how to turn it into ``(p4, mask, label, weight)``.

    Args:
        name: a label for messages.
        tree: name of the TTree.
        constituents: the four jagged (or fixed-length, zero-padded) constituent branches, in the
            order that ``representation`` names.
        representation: ``"e_px_py_pz"`` (E, px, py, pz) or ``"pt_eta_phi_e"`` (pT, η, φ, E).
        energy_unit: factor that converts the file's momenta to GeV (1e-3 for MeV).
        labels: one-hot label branches, in class-index order.
        label: an integer class-index branch, used when ``labels`` is empty.
        weight: a per-jet weight branch, or None for unit weights.

    Example::

        Schema(name="mine", tree="jets", constituents=("E", "px", "py", "pz"),
               labels=("is_qcd", "is_top"))
    """

    name: str = "custom"
    tree: str = "tree"
    constituents: tuple[str, str, str, str] = ("part_energy", "part_px", "part_py", "part_pz")
    representation: str = "e_px_py_pz"
    energy_unit: float = 1.0
    labels: tuple[str, ...] = ("label_QCD", "label_Tbqq")
    label: str | None = None
    weight: str | None = None

    def __post_init__(self) -> None:
        if self.representation not in REPRESENTATIONS:
            raise ValueError(
                f"representation {self.representation!r} is not available; use one of: "
                f"{', '.join(REPRESENTATIONS)}"
            )
        if len(self.constituents) != 4:
            raise ValueError(f"constituents needs four branches; got {list(self.constituents)}")
        if not self.labels and self.label is None:
            raise ValueError(f"schema {self.name!r} names neither one-hot labels nor a label")
        object.__setattr__(self, "constituents", tuple(self.constituents))
        object.__setattr__(self, "labels", tuple(self.labels))

    @property
    def num_classes(self) -> int | None:
        return len(self.labels) if self.labels else None

    @property
    def branches(self) -> list[str]:
        """Every branch this schema reads."""
        names = list(self.constituents) + list(self.labels)
        names += [b for b in (self.label, self.weight) if b is not None]
        return names


REPRESENTATIONS = ("e_px_py_pz", "pt_eta_phi_e")

JETCLASS = Schema(name="jetclass")
"""The JetClass layout (and that of ``softsymlit generate``): GeV, one-hot ``label_*``."""

ATLAS = Schema(
    name="atlas",
    tree="tree",
    constituents=("fjet_clus_pt", "fjet_clus_eta", "fjet_clus_phi", "fjet_clus_E"),
    representation="pt_eta_phi_e",
    energy_unit=1e-3,
    labels=(),
    label="labels",
    weight="weights",
)
"""The ATLAS top-tagging open-data layout: MeV, integer ``labels`` (1 = top), ``weights``."""

SCHEMAS: dict[str, Schema] = {"jetclass": JETCLASS, "atlas": ATLAS}


def resolve_schema(schema: str | Schema | dict) -> Schema:
    """A :class:`Schema` from a registered name, a mapping of its fields, or a schema."""
    if isinstance(schema, Schema):
        return schema
    if isinstance(schema, dict):
        return Schema(**schema)
    try:
        return SCHEMAS[schema]
    except KeyError:
        raise ValueError(
            f"schema {schema!r} is not available; use one of: {', '.join(SCHEMAS)}, "
            "or give a mapping of Schema fields"
        ) from None
