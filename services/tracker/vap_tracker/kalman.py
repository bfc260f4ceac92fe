"""Constant-velocity Kalman filter over box (cx, cy, w, h), batched over all tracks of a channel.

Why decoupled: with a constant-velocity transition, position-only measurements and diagonal process and
measurement noise, the four coordinates never interact, so the 8x8 covariance of the classic SORT/ByteTrack
filter stays block-diagonal: four independent 2x2 (position, velocity) blocks. Keeping only the three
distinct numbers of each block (pp, pv, vv) gives the *same* estimates as the full filter while every step
is a handful of element-wise numpy operations instead of N small matrix products and inversions.

Layout: coordinate-major, every quantity a (4, N) array (rows cx, cy, w, h; one column per track). Rows of
a C-ordered 2-D array are contiguous, so each operation runs over contiguous memory; the same operations on
(N, 4) column slices of a wider array are ~3x slower at tracking sizes (strided inner loops).

Units: positions in pixels, velocities in pixels per *reference frame interval* (``1 / ref_fps`` seconds);
``dt`` is given in reference intervals, so irregular frame timing (sampling, drops) is handled by the
model rather than assumed away. Noise is proportional to the box size (as in SORT/ByteTrack): a person near
the camera moves and jitters more pixels than one far away. x and w scale with the box width, y and h with
its height, because boxes of people are about 2.5x taller than wide and their horizontal jitter is
correspondingly smaller.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]

_WHWH = np.array([2, 3, 2, 3])  # rows of (cx, cy, w, h) each coordinate's noise scales with


@dataclass(frozen=True, slots=True)
class KalmanParams:
    """Noise as fractions of the box size (standard deviations per reference frame interval)."""

    # Measurement noise of a detection's centre and size. Twice ByteTrack's 1/20: real detector boxes
    # jitter by several percent of their size per edge, and trusting them less smooths the velocity.
    std_measurement: float = 0.1
    # Process noise: how much position and velocity may change unexplained between two frames.
    std_position: float = 0.02
    std_velocity: float = 0.00625
    # Initial uncertainty of a new track (its velocity is unknown: large).
    std_init_position: float = 0.1
    std_init_velocity: float = 0.1
    # Sizes never shrink below this many pixels in the noise model (a 1-pixel box would make it singular).
    min_size: float = 4.0


def boxes_to_xywh(boxes_t: F64) -> F64:
    """(4, N) x1, y1, x2, y2 -> (4, N) cx, cy, w, h."""
    out = np.empty_like(boxes_t)
    np.add(boxes_t[0:2], boxes_t[2:4], out=out[0:2])
    out[0:2] *= 0.5
    np.subtract(boxes_t[2:4], boxes_t[0:2], out=out[2:4])
    return out


def xywh_to_boxes(xywh: F64) -> F64:
    """(4, N) cx, cy, w, h -> (4, N) x1, y1, x2, y2."""
    half = xywh[2:4] * 0.5
    out = np.empty_like(xywh)
    np.subtract(xywh[0:2], half, out=out[0:2])
    np.add(xywh[0:2], half, out=out[2:4])
    return out


class BatchKalman:
    """Operations on the filter arrays a tracker keeps: ``pos``, ``vel``, and the covariance blocks ``pp``,
    ``pv``, ``vv``, each (4, N). Methods work in place on the arrays given."""

    def __init__(self, params: KalmanParams | None = None) -> None:
        self.params = params or KalmanParams()
        p = self.params
        self._q_pos = p.std_position**2
        self._q_vel = p.std_velocity**2
        self._r = p.std_measurement**2

    def _scale2(self, xywh: F64) -> F64:
        """Squared size each coordinate's noise is proportional to: (w, h, w, h)^2, sizes >= min_size."""
        s: F64 = np.maximum(xywh.take(_WHWH, axis=0), self.params.min_size)
        s *= s
        return s

    def initiate(self, xywh: F64) -> F64:
        """Filter state of new tracks from their first measurement: (20, K) rows pos, vel, pp, pv, vv."""
        p = self.params
        scale2 = self._scale2(xywh)
        out = np.zeros((20, xywh.shape[1]))
        out[0:4] = xywh
        out[8:12] = (p.std_init_position**2) * scale2
        out[16:20] = (p.std_init_velocity**2) * scale2
        return out

    def predict(self, pos: F64, vel: F64, pp: F64, pv: F64, vv: F64, dt: float) -> None:
        """Advance every track by ``dt`` reference intervals, in place.

        Process noise grows linearly with dt (a random walk), so a gap of k frames is as uncertain as k
        single steps.
        """
        scale2 = self._scale2(pos)
        if dt == 1.0:
            pos += vel
            # P' = F P F^T + Q with F = [[1, 1], [0, 1]] per coordinate.
            pp += pv
            pp += pv
            pp += vv
            pv += vv
        else:
            pos += vel * dt
            pp += (2.0 * pv + vv * dt) * dt
            pv += vv * dt
            scale2 *= dt
        # A shrinking box (negative size velocity) must not turn inside out during a long occlusion.
        np.maximum(pos[2:4], 1.0, out=pos[2:4])
        pp += self._q_pos * scale2
        vv += self._q_vel * scale2

    def innovation_variance(self, pos: F64, pp: F64) -> F64:
        """Variance (4, N) of a measurement about the predicted ``pos`` (4, N), ``pp`` the position
        variance: the gating metric's denominator (the covariance is diagonal across coordinates)."""
        s = self._scale2(pos)
        s *= self._r
        s += pp
        return s

    def update(self, kf: F64, z: F64) -> None:
        """Correct with measurements ``z`` (4, K) cx, cy, w, h, in place. ``kf`` is the (20, K) filter block
        of the matched tracks: rows pos, vel, pp, pv, vv (see ``initiate``).

        Position and velocity (rows 0:8) and pp and pv (rows 8:16) are updated as (2, 4, K) stacks: the same
        arithmetic in about half the numpy calls, which is what a frame of a few dozen tracks costs.
        """
        k = z.shape[1]
        s = self._scale2(z)
        s *= self._r
        s += kf[8:12]  # innovation variance
        gain = kf[8:16].reshape(2, 4, k) / s  # (k_pos, k_vel)
        innovation = z - kf[0:4]
        kf[0:8].reshape(2, 4, k)[...] += gain * innovation
        # P' = (I - K H) P for each 2x2 block; vv first, it uses the old pv.
        kf[16:20] -= gain[1] * kf[12:16]
        kf[8:16].reshape(2, 4, k)[...] *= 1.0 - gain[0]
