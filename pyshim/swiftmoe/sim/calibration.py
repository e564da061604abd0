"""Expert compute time against token count, from a calibration table (calibration/README.md).

A table is ``{"device": ..., "shapes": {"NAME (dD fF act)": [{"tokens": n, "fwd_bwd_ms": y,
...}, ...]}}``. :func:`load_table` picks one shape: by name (exact, else the unique name that
starts with it), else the one closest to the requested d_model/d_ff (log distance; a gated
activation breaks ties toward gated shapes). :class:`ExpertTime` maps tokens to milliseconds:

* 0 tokens cost 0 (the slot is skipped);
* up to the smallest measured count, the smallest count's time (a kernel costs its floor);
* between measured points, linear interpolation in tokens;
* beyond the largest point, the largest point's time scaled linearly in tokens.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["DEFAULT_TABLE", "ExpertTime", "default_table_path", "load_table"]

_SHAPE_RE = re.compile(r"\(d(\d+)\s+f(\d+)\s*([A-Za-z0-9_]*)\)")
_GATED = ("swiglu", "geglu", "glu", "reglu")


#: The default table's file name: in ``swiftmoe/_calibration/`` of an installed package (``pip
#: install`` copies the tables there), in ``calibration/`` of a source checkout.
DEFAULT_TABLE = "h200-expert-ffn.json"


def default_table_path() -> Path:
    """The default calibration table: the installed package's copy, else the checkout's."""
    pkg = Path(__file__).resolve().parents[1]  # the swiftmoe package
    bundled = pkg / "_calibration" / DEFAULT_TABLE
    if bundled.is_file():
        return bundled
    return pkg.parents[1] / "calibration" / DEFAULT_TABLE


@dataclass(frozen=True)
class ExpertTime:
    """fwd+bwd milliseconds of one expert on n tokens, from measured points."""

    table: str
    device: str
    shape: str
    tokens_P: np.ndarray  # measured token counts, increasing
    ms_P: np.ndarray  # fwd_bwd_ms at those counts

    @property
    def is_gpu(self) -> bool:
        d = self.device.lower()
        if "cpu" in d:
            return False
        return any(w in d for w in ("nvidia", "cuda", "gpu", "h100", "h200", "a100", "rocm"))

    def flops_per_s(self, flops_per_token: float, tokens: float) -> float:
        """The table's marginal throughput around ``tokens`` (FLOP/s): flops_per_token over the
        extra time per token between tokens/2 and 2*tokens. What the cost model's
        flops_per_s means for the strategy and the burst decision: the compute that moving a
        token off a busy rank saves (the table's fixed per-call time does not move)."""
        n = max(float(tokens), 2.0)
        dt_ms = float(self(2.0 * n) - self(0.5 * n))
        if not dt_ms > 0:
            return 0.0
        return flops_per_token * 1.5 * n / (dt_ms * 1e-3)

    def __call__(self, tokens) -> np.ndarray:
        x = np.asarray(tokens, dtype=np.float64)
        t, y = self.tokens_P, self.ms_P
        out = np.interp(x, t, y)  # clamps to y[0] below t[0] and to y[-1] above t[-1]
        big = x > t[-1]
        if np.any(big):
            out = np.where(big, y[-1] * x / t[-1], out)
        return np.where(x <= 0, 0.0, out)


def _dims(name: str) -> tuple[int, int, bool] | None:
    m = _SHAPE_RE.search(name)
    if not m:
        return None
    return int(m.group(1)), int(m.group(2)), m.group(3).lower() in _GATED


def load_table(
    path: str | Path | None = None,
    shape: str | None = None,
    d_model: int | None = None,
    d_ff: int | None = None,
    gated: bool = False,
) -> ExpertTime:
    """One shape of a calibration table; ValueError naming the problem and the fix."""
    p = Path(path) if path is not None else default_table_path()
    try:
        doc = json.loads(p.read_text())
    except OSError as e:
        raise ValueError(
            f"calibration table {str(p)!r} cannot be read ({e}): pass --calibration FILE"
        ) from None
    except ValueError as e:
        raise ValueError(
            f"calibration table {p} is not JSON ({e}): see calibration/README.md"
        ) from None
    shapes = doc.get("shapes") if isinstance(doc, dict) else None
    if not isinstance(shapes, dict) or not shapes:
        raise ValueError(
            f'calibration table {p} has no "shapes" object: see calibration/README.md for the format'
        )
    if shape:
        if shape in shapes:
            name = shape
        else:
            hits = [n for n in shapes if n.startswith(shape)]
            if len(hits) != 1:
                raise ValueError(
                    f"--shape {shape!r} {'matches several' if hits else 'matches no'} shape of "
                    f"{p}; pass one of: {', '.join(shapes)}"
                )
            name = hits[0]
    else:
        if not d_model or not d_ff:
            raise ValueError("pass --shape NAME, or --d-model and --d-ff to pick the closest shape")

        def dist(n: str) -> tuple[float, int]:
            dims = _dims(n)
            if dims is None:
                return (math.inf, 1)
            d, f, g = dims
            return (abs(math.log(d / d_model)) + abs(math.log(f / d_ff)), int(g != gated))

        name = min(shapes, key=dist)
        if dist(name)[0] == math.inf:
            raise ValueError(
                f"no shape of {p} names its dims as '(dD fF act)': pass --shape NAME "
                f"({', '.join(shapes)})"
            )
    pts = shapes[name]
    try:
        pairs = sorted((int(r["tokens"]), float(r["fwd_bwd_ms"])) for r in pts)
    except (TypeError, KeyError, ValueError):
        raise ValueError(
            f'calibration table {p}, shape {name!r}: every point needs "tokens" and "fwd_bwd_ms"'
        ) from None
    if (
        not pairs
        or any(t < 1 or not (ms >= 0 and math.isfinite(ms)) for t, ms in pairs)
        or len({t for t, _ in pairs}) != len(pairs)
    ):
        raise ValueError(
            f"calibration table {p}, shape {name!r}: points need distinct token counts >= 1 and "
            "finite times >= 0"
        )
    return ExpertTime(
        table=str(p),
        device=str(doc.get("device", "unknown device")),
        shape=name,
        tokens_P=np.array([t for t, _ in pairs], dtype=np.float64),
        ms_P=np.array([ms for _, ms in pairs], dtype=np.float64),
    )
