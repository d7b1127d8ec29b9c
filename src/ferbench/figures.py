"""The style and PNG rendering every ferbench figure shares (report and explain stages).

Apart from the report so that a stage drawing figures does not import the report's
statistics (scipy.stats, about 2.5 s of every explain job)."""

from __future__ import annotations

import io

from matplotlib.figure import Figure

DPI = 90
# Fixed salt and style so the PNG bytes do not depend on the user's matplotlibrc.
RC = {"svg.hashsalt": "ferbench", "font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8,
      "xtick.labelsize": 7, "ytick.labelsize": 7, "legend.fontsize": 7}


def figure_png(fig: Figure) -> bytes:
    """Render without the Software/date metadata so equal figures give equal bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()
