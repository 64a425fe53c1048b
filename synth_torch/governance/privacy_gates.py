"""Privacy: nothing protected leaks into a dataset, through its assets or its images.

* ``privacy_assets``: no image asset (``texture_images``, ``background_images`` of the manifest) is a
  near-duplicate of an image of the protected real set: the Hamming distance between perceptual hashes
  (``imagehash``, pHash by default, also of the mirrored asset) must exceed ``max_distance``. The asset files
  must still have the hashes the manifest recorded.
* ``privacy_faces``: no asset contains a face, by OpenCV's bundled Haar cascades (frontal and profile, the
  profile one also on the mirrored image); ``scan_generated`` also scans the generated images.
* ``privacy_generated``: no generated image is a near-duplicate of a protected image. Each generated image's
  distance to the closest record (DCR: the smallest hash distance to any protected image) must exceed
  ``max_distance``; the figures give the DCR distribution beside the protected set's own nearest-neighbour
  distances (how close two distinct real images come).

Nothing is downloaded: the cascades ship inside ``opencv-python-headless`` (``cv2.data.haarcascades``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from synth_torch.governance.exports import GovernanceError
from synth_torch.governance.gates import FAIL, PASS, Findings, Gate, GateContext, GateResult
from synth_torch.scene.assets import IMAGE_SUFFIXES

IMAGE_ROLES = ("texture_images", "background_images")
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
HASH_SETTINGS = {"method": "phash", "hash_size": 8, "max_distance": 6, "mirrored": True, "exclude_suffix": ""}


def perceptual_hash(image: Image.Image, method: str = "phash", hash_size: int = 8) -> np.ndarray:
    """Packed bits (uint8 [hash_size**2 / 8]) of an ``imagehash`` perceptual hash of ``image``."""
    import imagehash

    funcs = {"phash": imagehash.phash, "dhash": imagehash.dhash, "average_hash": imagehash.average_hash,
             "whash": imagehash.whash}
    if method not in funcs:
        raise GovernanceError(f"hash method must be one of {sorted(funcs)}, got {method!r}")
    return np.packbits(funcs[method](image.convert("RGB"), hash_size=hash_size).hash.reshape(-1))


def hamming(a: np.ndarray, b: np.ndarray, block: int = 256) -> np.ndarray:
    """int [n, m] Hamming distances between packed hashes a [n, B] and b [m, B]."""
    out = np.empty((a.shape[0], b.shape[0]), dtype=np.int32)
    for i in range(0, a.shape[0], block):
        out[i:i + block] = _POPCOUNT[a[i:i + block, None, :] ^ b[None, :, :]].sum(-1, dtype=np.int32)
    return out


def list_images(folder: Path, exclude_suffix: str = "") -> list[Path]:
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    return [p for p in files if not (exclude_suffix and p.name.endswith(exclude_suffix))]


class _HashGate(Gate):
    """Shared by the two near-duplicate gates: the protected set's hashes (computed once per validate run)."""

    required_by_default = False
    defaults = HASH_SETTINGS

    def protected_index(self, ctx: GateContext) -> tuple[list[Path], np.ndarray, dict]:
        s = self.settings
        key = ("protected", str(ctx.protected), s["method"], s["hash_size"], s["exclude_suffix"])
        if key not in ctx.cache:
            paths = list_images(ctx.protected, s["exclude_suffix"])
            if not paths:
                raise GovernanceError(f"no images under the protected set {ctx.protected}")
            hashes = np.stack([self._hash_file(p) for p in paths])
            nn = hamming(hashes, hashes)
            np.fill_diagonal(nn, 1 << 20)
            nn = nn.min(1) if len(paths) > 1 else np.array([], dtype=np.int32)
            stats = {"images": len(paths), "nn_distance": _quantiles(nn)}
            ctx.cache[key] = (paths, hashes, stats)
        return ctx.cache[key]

    def _hash_file(self, path: Path) -> np.ndarray:
        with Image.open(path) as im:
            return self.hash(im)

    def hash(self, image: Image.Image) -> np.ndarray:
        return perceptual_hash(image, self.settings["method"], self.settings["hash_size"])

    def hashes(self, image: Image.Image) -> list[np.ndarray]:
        """The image's hash, and its mirror image's when ``mirrored``."""
        return [self.hash(image)] + ([self.hash(ImageOps.mirror(image))] if self.settings["mirrored"] else [])

    def closest(self, queries: list[list[np.ndarray]], protected: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(distance, index into the protected set) of the closest protected image of each query (over its
        hash variants)."""
        flat = np.stack([h for q in queries for h in q])
        owner = np.repeat(np.arange(len(queries)), [len(q) for q in queries])
        d = hamming(flat, protected)
        best = np.full(len(queries), 1 << 20, dtype=np.int64)
        arg = np.zeros(len(queries), dtype=np.int64)
        row_min, row_arg = d.min(1), d.argmin(1)
        for k, q in enumerate(owner):
            if row_min[k] < best[q]:
                best[q], arg[q] = row_min[k], row_arg[k]
        return best, arg


class AssetDuplicateGate(_HashGate):
    name = "privacy_assets"
    title = "Assets vs protected set"

    def check(self, ctx: GateContext) -> GateResult:
        if ctx.protected is None:
            return self.skip("no protected real set (--protected, or --reference)")
        assets = [a for a in ctx.export.manifest["assets"] if a["role"] in IMAGE_ROLES]
        if not assets:
            return self.skip("the scenario uses no image assets (texture_images, background_images)")
        paths, protected, stats = self.protected_index(ctx)
        found, queries, names = Findings(), [], []
        for a in assets:
            path = Path(a["path"])
            if not path.is_file():
                found.add("asset_missing", f"{a['role']} asset {path} is missing")
                continue
            if hashlib.sha256(path.read_bytes()).hexdigest() != a["sha256"]:
                found.add("asset_changed", f"{a['role']} asset {path} no longer has the sha256 the manifest recorded")
            with Image.open(path) as im:
                queries.append(self.hashes(im))
            names.append(f"{a['role']} {path}")
        figures = {"protected_set": str(ctx.protected), "protected": stats, "assets_checked": len(queries)}
        if queries:
            dist, arg = self.closest(queries, protected)
            figures["distance_to_closest"] = _quantiles(dist)
            figures["closest"] = [{"asset": names[i], "protected": str(paths[arg[i]]), "distance": int(dist[i])}
                                  for i in np.argsort(dist, kind="stable")[:5]]
            for i in np.flatnonzero(dist <= self.settings["max_distance"]):
                found.add("near_duplicate", f"{names[i]} is a near-duplicate of protected {paths[arg[i]]} "
                                            f"(hash distance {int(dist[i])} <= {self.settings['max_distance']})")
        figures["near_duplicates"] = found.counts["near_duplicate"]
        figures["problems"] = dict(found.counts)
        low = figures.get("distance_to_closest", {}).get("min")
        summary = (f"{len(queries)} image assets vs {stats['images']} protected; closest distance {low}; "
                   f"{found.counts['near_duplicate']} near-duplicates (<= {self.settings['max_distance']})"
                   + ("" if found.total == found.counts["near_duplicate"] else f"; {found.describe()}"))
        return self.result(FAIL if found.total else PASS, summary, figures, found.messages)


class GeneratedDuplicateGate(_HashGate):
    name = "privacy_generated"
    title = "Generated images vs protected set, distance to closest record"

    def check(self, ctx: GateContext) -> GateResult:
        if ctx.protected is None:
            return self.skip("no protected real set (--protected, or --reference)")
        paths, protected, stats = self.protected_index(ctx)
        refs, queries = [], []
        for ref, pixels in ctx.export.images():
            refs.append(ref)
            queries.append(self.hashes(Image.fromarray(pixels)))
        if not queries:
            return self.skip("the export holds no images")
        dcr, arg = self.closest(queries, protected)
        limit = self.settings["max_distance"]
        found = Findings()
        for i in np.flatnonzero(dcr <= limit):
            found.add("near_copy", f"generated {refs[i].stem} (slice {refs[i].slice}) is a near-copy of protected "
                                   f"{paths[arg[i]]} (hash distance {int(dcr[i])} <= {limit})")
        figures = {"protected_set": str(ctx.protected), "protected": stats, "images": len(refs),
                   "dcr": _quantiles(dcr), "share_at_or_below_max_distance": round(float((dcr <= limit).mean()), 6),
                   "closest": [{"image": refs[i].stem, "protected": str(paths[arg[i]]), "distance": int(dcr[i])}
                               for i in np.argsort(dcr, kind="stable")[:5]],
                   "near_copies": found.total}
        summary = (f"{len(refs)} images vs {stats['images']} protected: DCR min {int(dcr.min())}, median "
                   f"{figures['dcr']['median']:g} (protected NN median {stats['nn_distance'].get('median')}); "
                   f"{found.total} near-copies (<= {limit})")
        return self.result(FAIL if found.total else PASS, summary, figures, found.messages)


class FaceGate(Gate):
    name = "privacy_faces"
    title = "No faces in assets"
    required_by_default = False
    defaults = {"cascades": ["haarcascade_frontalface_alt2.xml", "haarcascade_profileface.xml"],
                "scale_factor": 1.1, "min_neighbors": 5, "min_size_px": 24, "scan_generated": False, "max_faces": 0}

    def check(self, ctx: GateContext) -> GateResult:
        s = self.settings
        items = [(f"{a['role']} {a['path']}", Path(a["path"])) for a in ctx.export.manifest["assets"]
                 if a["role"] in IMAGE_ROLES and Path(a["path"]).is_file()]
        if s["scan_generated"]:
            items += [(f"generated {ref.stem}", pixels) for ref, pixels in ctx.export.images()]
        if not items:
            return self.skip("no image assets to scan (and scan_generated is off)")
        cascades = load_cascades(s["cascades"])
        found = Findings()
        detections = []
        for name, source in items:
            for cascade, box in detect_faces(source, cascades, s["scale_factor"], s["min_neighbors"], s["min_size_px"]):
                detections.append({"image": name, "cascade": cascade, "box_xywh": box})
                found.add("face", f"{name}: a face at x,y,w,h {box} ({cascade})")
        images_with = len({d["image"] for d in detections})
        figures = {"images_scanned": len(items), "images_with_faces": images_with, "detections": detections[:50]}
        summary = f"{len(items)} images scanned with {len(cascades)} cascades; {len(detections)} faces in {images_with}"
        return self.result(FAIL if len(detections) > s["max_faces"] else PASS, summary, figures, found.messages)


def load_cascades(names: list[str]) -> dict:
    """OpenCV's bundled Haar cascades by file name (``cv2.data.haarcascades``)."""
    import cv2

    folder = Path(getattr(getattr(cv2, "data", None), "haarcascades", "") or ".")
    if not hasattr(cv2, "CascadeClassifier"):
        raise GovernanceError("privacy_faces needs OpenCV's Haar cascades (cv2.CascadeClassifier and cv2.data), "
                              "which opencv-python-headless 4.x ships; install synth-torch's pinned version")
    out = {}
    for name in names:
        path = folder / name
        cascade = cv2.CascadeClassifier(str(path))
        if not path.is_file() or cascade.empty():
            raise GovernanceError(f"gates.privacy_faces.cascades: {name} is not a cascade in {folder}")
        out[name] = cascade
    return out


def detect_faces(source, cascades: dict, scale_factor: float = 1.1, min_neighbors: int = 5,
                 min_size: int = 24) -> list[tuple[str, list[int]]]:
    """(cascade name, [x, y, w, h]) of every face the cascades find in an image file or uint8 [H, W, 3] array;
    profile cascades also run on the mirrored image (they find faces turned one way only)."""
    import cv2

    if isinstance(source, np.ndarray):
        rgb = source
    else:
        with Image.open(source) as im:
            rgb = np.asarray(im.convert("RGB"))
    gray = cv2.equalizeHist(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    W = gray.shape[1]
    out = []
    for name, cascade in cascades.items():
        views = [(gray, False)] + ([(gray[:, ::-1].copy(), True)] if "profile" in name else [])
        for img, flipped in views:
            boxes = cascade.detectMultiScale(img, scaleFactor=scale_factor, minNeighbors=min_neighbors,
                                             minSize=(min_size, min_size))
            for x, y, w, h in (boxes if len(boxes) else []):
                x = W - x - w if flipped else x
                out.append((name, [int(x), int(y), int(w), int(h)]))
    return out


def _quantiles(d: np.ndarray) -> dict:
    if len(d) == 0:
        return {}
    return {"min": int(d.min()), "p5": float(np.percentile(d, 5)), "median": float(np.median(d)),
            "max": int(d.max())}
