"""Geometric verification: do a photographed mark and a registered one line up?

A mark photographed on a sign or a card loses most of its similarity to its file
(perspective, light, the card around it), and with it the margin the decision needs
(indexer.decision): on LogoBench-scenes most registered marks lost were ranked first
but under the threshold (docs/scenes.md). A stranger's mark ranked first is a
look-alike. What tells the two apart is what instance retrieval has long checked after
the ranking (Philbin et al. 2007, "Object retrieval with large vocabularies and fast
spatial matching"): local features of the two that match one to one and sit where one
perspective (a homography) puts them. A photographed copy keeps its corners and strokes
where the camera moved them; a look-alike's match nowhere in particular.

So a mark found in a photograph whose picture alone is not sure is compared with the
thumbnail of its first match: SIFT keypoints of both at one size (OpenCV), matches that
pass Lowe's ratio test, a RANSAC homography. It is verified where at least
MIN_INLIERS matches agree with a homography that is a plausible camera's: it keeps the
mark's handedness (no mirror), scales its area by at most MAX_SCALE either way, and its
inliers spread over a fair part of the registered mark (not a corner of it). A few
corners agree with a homography too easily, though: a plain square or parallelogram
mark lines up with any card or window (on LogoBench-scenes, most false lines-up were
one-colour renditions). So the photographed mark is then warped into the
registered mark's frame by that homography, and their edges (gradient magnitudes,
smoothed) must agree: a normalised correlation of at least MIN_EDGES. A copy seen
through that perspective is its registered mark again; a card whose corners matched is
not.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

# Both pictures are compared at this size (their longer side): a thumbnail is 128 px
# (indexer.pipeline.THUMBNAIL_SIZE), a found mark any size.
SIDE = 256
MAX_FEATURES = 500
RATIO = 0.75  # Lowe's ratio test
RANSAC_PX = 5.0  # reprojection error of an inlier, in pixels at SIDE
MAX_SCALE = 10.0  # the homography's area scale, either way
MIN_SPREAD = 0.15  # the inliers' extent on either axis, as a share of SIDE
# Matches agreeing with one homography that verify a match: on brand-free photographs
# (docs/scenes.md "Keypoints"), the lowest count at which strangers are verified in
# well under 1% of pictures.
MIN_INLIERS = 8
# Edges of the photographed mark, warped into the registered mark's frame, that agree
# with the registered mark's: on brand-free photographs (docs/scenes.md "Keypoints"),
# what 95% of the registered marks lined up with their own (MIN_INLIERS) reach (0.397).
MIN_EDGES = 0.4
EDGE_SIGMA = 2.0  # smoothing before the gradients, in pixels at SIDE


@dataclass(frozen=True)
class Features:
    """SIFT keypoints of one picture at SIDE: their positions and descriptors, and the
    grey picture they were taken from."""

    points: np.ndarray  # (n, 2) float32
    descriptors: np.ndarray  # (n, 128) float32
    grey: np.ndarray  # (h, w) uint8, SIDE on its longer side

    def __len__(self) -> int:
        return len(self.points)


@dataclass(frozen=True)
class Alignment:
    """How a photographed mark lines up with a registered one."""

    inliers: int  # matches agreeing with the homography; 0 where there is none
    edges: float  # agreement of the edges through it (normalised correlation); 0 if none

    @property
    def verified(self) -> bool:
        return self.inliers >= MIN_INLIERS and self.edges >= MIN_EDGES


def _sift():
    import cv2  # imported where it is used: a server without photographs never needs it

    return cv2.SIFT_create(nfeatures=MAX_FEATURES)


def features(image: Image.Image) -> Features:
    """The picture's keypoints, in grey at SIDE on its longer side (transparency on
    white, as a mark's file is shown)."""
    if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGBA")
        flat = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(flat, image)
    grey = image.convert("L")
    f = SIDE / max(grey.size)
    grey = np.asarray(grey.resize((max(1, round(grey.width * f)), max(1, round(grey.height * f))),
                                  Image.Resampling.LANCZOS if f < 1 else Image.Resampling.BICUBIC))
    points, desc = _sift().detectAndCompute(grey, None)
    if desc is None:
        return Features(np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float32), grey)
    return Features(np.float32([p.pt for p in points]), desc.astype(np.float32), grey)


def _homography(query: Features, registered: Features) -> tuple[np.ndarray | None, int]:
    """The plausible homography from the query's keypoints to the registered mark's, and
    how many matches agree with it; (None, 0) where there is none."""
    import cv2

    if len(query) < 4 or len(registered) < 4:
        return None, 0
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(query.descriptors, registered.descriptors, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < RATIO * p[1].distance]
    if len(good) < 4:
        return None, 0
    a = query.points[[g.queryIdx for g in good]]
    b = registered.points[[g.trainIdx for g in good]]
    h, mask = cv2.findHomography(a, b, cv2.RANSAC, RANSAC_PX)
    if h is None:
        return None, 0
    det = float(np.linalg.det(h[:2, :2]))
    if not 1 / MAX_SCALE < det < MAX_SCALE:  # a mirror (det < 0), or a collapse
        return None, 0
    kept = b[mask.ravel().astype(bool)]
    if len(kept) < 4:  # RANSAC can return a homography that no match agrees with
        return None, 0
    if (kept.max(axis=0) - kept.min(axis=0)).min() < MIN_SPREAD * SIDE:
        return None, 0
    return h, len(kept)


def _edges(grey: np.ndarray) -> np.ndarray:
    import cv2

    z = cv2.GaussianBlur(grey.astype(np.float32), (0, 0), EDGE_SIGMA)
    return np.hypot(cv2.Sobel(z, cv2.CV_32F, 1, 0), cv2.Sobel(z, cv2.CV_32F, 0, 1))


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    norm = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum()) / norm if norm > 0 else 0.0


def align(query: Features, registered: Features) -> Alignment:
    """How the query lines up with the registered mark: agreeing matches, and the edges'
    agreement once the query is warped into the registered mark's frame."""
    import cv2

    h, inliers = _homography(query, registered)
    if h is None:
        return Alignment(0, 0.0)
    rh, rw = registered.grey.shape
    warped = cv2.warpPerspective(query.grey, h, (rw, rh), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_REPLICATE)
    return Alignment(inliers, _correlation(_edges(warped), _edges(registered.grey)))
