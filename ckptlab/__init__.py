"""ckptlab: progress measures over every checkpoint of a training run.

    rec = ckptlab.Recorder("run.zarr", model=model, data=data)   # write a trajectory
    ds = ckptlab.analyze("run.zarr")                              # measures per checkpoint
    seg = ckptlab.segment(ds)                                     # transitions and phases
    ckptlab.plot_overview(ds, seg)                                # the figure
"""

from __future__ import annotations

__version__ = "0.1.0"

from . import accessor as _accessor  # noqa: E402,F401  (registers ds.ckpt)
from .analysis import analyze, load_analysis  # noqa: E402
from .errors import CkptlabError  # noqa: E402
from .phases import (  # noqa: E402
    align_runs,
    format_mi_summary,
    format_phase_table,
    mi_summary,
    seg_to_json,
    segment,
)
from .plot import plot_information_plane, plot_overview, plot_resolution_curve  # noqa: E402
from .store import (  # noqa: E402
    FORMAT_VERSION,
    ImportResult,
    Recorder,
    Run,
    VerifyReport,
    import_checkpoints,
    open_run,
    run_info,
    verify,
)

__all__ = [
    "__version__",
    "CkptlabError",
    "Recorder",
    "Run",
    "open_run",
    "run_info",
    "import_checkpoints",
    "ImportResult",
    "verify",
    "VerifyReport",
    "FORMAT_VERSION",
    "analyze",
    "load_analysis",
    "segment",
    "align_runs",
    "format_phase_table",
    "seg_to_json",
    "mi_summary",
    "format_mi_summary",
    "plot_overview",
    "plot_information_plane",
    "plot_resolution_curve",
]
