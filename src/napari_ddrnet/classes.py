"""Class names, display colours and the groups used by the differential count."""

from __future__ import annotations

#: Classes of the shipped model (PBC dataset order, alphabetical).
PBC_CLASSES = (
    "basophil",
    "eosinophil",
    "erythroblast",
    "ig",
    "lymphocyte",
    "monocyte",
    "neutrophil",
    "platelet",
)
UNIDENTIFIED = "unidentified"
#: A cell whose top class probability is below this is reported as :data:`UNIDENTIFIED`
#: (for review) instead of being forced into a class; every entry point defaults to it.
DEFAULT_MIN_CONFIDENCE = 0.5

#: White-cell classes: the differential is given as % of these.
WBC_CLASSES = ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil", "ig")
#: The five mature white-cell classes of a normal smear, sorted: LISC's classes and the calls
#: of the pseudo-labels.
MATURE_WBC = tuple(sorted(c for c in WBC_CLASSES if c != "ig"))
#: Reported per 100 WBC, outside the differential (as in a manual count).
PER_100_WBC = ("erythroblast",)
#: Shown apart from the differential.
APART = ("platelet", UNIDENTIFIED)

#: Fixed display colour per class (hex RGB), chosen to be distinct and colour-blind friendly
#: (Okabe-Ito palette plus grey). Documented in docs/user-guide.md.
CLASS_COLORS = {
    "neutrophil": "#0072B2",
    "lymphocyte": "#009E73",
    "monocyte": "#E69F00",
    "eosinophil": "#D55E00",
    "basophil": "#CC79A7",
    "ig": "#56B4E9",
    "erythroblast": "#F0E442",
    "platelet": "#999999",
    UNIDENTIFIED: "#FFFFFF",
}
DISPLAY_ORDER = WBC_CLASSES + PER_100_WBC + APART


def class_color(name: str) -> str:
    """Hex colour of a class; unknown names get the 'unidentified' colour."""
    return CLASS_COLORS.get(name, CLASS_COLORS[UNIDENTIFIED])
