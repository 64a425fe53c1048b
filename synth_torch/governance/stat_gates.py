"""Statistical fidelity: per-slice image statistics of an export against a real reference folder.

The features are :mod:`synth_torch.quality.realism`'s model-free image statistics (nothing is downloaded),
standardised by the real set's mean and standard deviation so that every statistic weighs the same (the raw
features differ in scale by orders of magnitude). For the whole export and for each slice the gate reports the
feature means, the Fréchet distance between Gaussian fits of synthetic and real features (in units of real
standard deviations), and beside it the **floor**: the Fréchet distance between two disjoint
halves of the real set drawn at the same size as the synthetic set (the median over ``floor_splits`` random
splits), i.e. how far two samples of the real distribution itself lie apart at that size. The gate passes when
every ratio ``frechet / floor`` stays within ``max_ratio`` (and ``frechet`` within ``max_frechet`` when set).
Slices with fewer than ``min_images`` images, and those in ``ignore_slices`` (conditions the real reference
does not show, such as a low-light slice against daylight photographs), are reported but not gated. Each
comparison also gives every feature's z-score, ``(synthetic mean - real mean) / real std``, so a reviewer
sees which statistic moved.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy import linalg

from synth_torch.governance.gates import FAIL, PASS, Gate, GateContext, GateResult
from synth_torch.quality.realism import FEATURES, frechet_distance, image_features, load_real_images


def _frechet(a: torch.Tensor, b: torch.Tensor) -> float:
    with warnings.catch_warnings():  # near-singular covariances of small slices: sqrtm warns, the value stands
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        return frechet_distance(a, b)


def split_half_floor(real: torch.Tensor, m: int, splits: int, seed: int) -> float:
    """Median Fréchet distance between two disjoint random subsets of ``m`` rows of ``real`` features."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(splits):
        perm = torch.randperm(real.shape[0], generator=g)
        out.append(_frechet(real[perm[:m]], real[perm[m:2 * m]]))
    return float(np.median(out))


class StatisticalGate(Gate):
    name = "statistical"
    title = "Statistical fidelity"
    required_by_default = False
    defaults = {"max_ratio": 100.0, "max_frechet": None, "min_images": 8, "ignore_slices": [], "real_limit": 256,
                "max_images_per_slice": 256, "floor_splits": 5, "exclude_suffix": ".png", "seed": 0}

    def check(self, ctx: GateContext) -> GateResult:
        s = self.settings
        if ctx.reference is None:
            return self.skip("no real reference folder (--reference)")
        view = ctx.export
        real = load_real_images(ctx.reference, view.size, limit=s["real_limit"], exclude_suffix=s["exclude_suffix"],
                                seed=s["seed"])
        raw = image_features(real)
        mu, sd = raw.mean(0), raw.std(0).clamp_min(1e-3)  # a constant real feature (grey photos: colour)
        fr = (raw - mu) / sd
        groups: dict[str, list[np.ndarray]] = {}
        for ref, pixels in view.images():
            group = groups.setdefault(ref.slice or "(unknown)", [])
            if len(group) < s["max_images_per_slice"]:
                group.append(pixels)
        feats = {name: (image_features(torch.from_numpy(np.stack(px)).permute(0, 3, 1, 2).float() / 255.0) - mu) / sd
                 for name, px in groups.items()}
        figures = {"reference": str(ctx.reference), "real_images": int(fr.shape[0]), "features": list(FEATURES),
                   "real_mean": _r(mu), "real_std": _r(sd),
                   "overall": self._compare(torch.cat(list(feats.values())), fr, True), "slices": {}}
        for name, f in feats.items():
            gated = f.shape[0] >= s["min_images"] and name not in s["ignore_slices"]
            figures["slices"][name] = self._compare(f, fr, gated)
        failures = []
        for name, c in [("overall", figures["overall"])] + sorted(figures["slices"].items()):
            if c["gated"] and not c["ok"]:
                limit = f"max_ratio {s['max_ratio']:g}" + (f", max_frechet {s['max_frechet']:g}"
                                                          if s["max_frechet"] is not None else "")
                worst = max(range(len(FEATURES)), key=lambda k: abs(c["z"][k]))
                failures.append(f"{name}: Fréchet {c['frechet']:.4g} = {c['ratio']:.3g} x floor {c['floor']:.4g} "
                                f"({c['images']} images; {limit}); largest shift {FEATURES[worst]} z = "
                                f"{c['z'][worst]:+.2f}")
        gated = [(n, c) for n, c in figures["slices"].items() if c["gated"]]
        worst = max(gated, key=lambda nc: nc[1]["ratio"], default=None)
        o = figures["overall"]
        summary = (f"Fréchet {o['frechet']:.4g} = {o['ratio']:.3g} x floor {o['floor']:.4g} ({o['images']} images vs "
                   f"{fr.shape[0]} real)" + (f"; worst slice {worst[0]} {worst[1]['ratio']:.3g} x" if worst else "")
                   + f"; {len(failures)} over max_ratio {s['max_ratio']:g}")
        return self.result(FAIL if failures else PASS, summary, figures, failures)

    @classmethod
    def key_figures(cls, figures: dict) -> dict:
        out = {"reference": figures["reference"], "real_images": figures["real_images"]}
        for name, c in [("overall", figures["overall"])] + list(figures["slices"].items()):
            for key in ("images", "frechet", "floor", "ratio"):
                out[f"{name}.{key}"] = c.get(key)
        return out

    def _compare(self, f: torch.Tensor, fr: torch.Tensor, gated: bool) -> dict:
        s = self.settings
        n = int(f.shape[0])
        out = {"images": n, "z": _r(f.mean(0)), "gated": bool(gated and n >= 2)}
        if n < 2:
            return out | {"frechet": None, "floor": None, "ratio": None, "ok": True}
        m = min(n, fr.shape[0] // 2)
        fd = _frechet(f, fr)
        floor = split_half_floor(fr, m, s["floor_splits"], s["seed"])
        ratio = fd / max(floor, 1e-12)
        ok = ratio <= s["max_ratio"] and (s["max_frechet"] is None or fd <= s["max_frechet"])
        return out | {"frechet": round(fd, 6), "floor": round(floor, 6), "floor_size": m, "ratio": round(ratio, 4),
                      "ok": bool(ok)}


def _r(t: torch.Tensor) -> list[float]:
    return [round(float(v), 5) for v in t]
