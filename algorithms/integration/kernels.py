"""Numba kernels that integrate every reflection whose shoebox lies in a block of images.

For each reflection the kernel builds its shoebox from the images, marks foreground pixels
(any pixel corner within δb = n_sigma·σb of s1 in the Kabsch frame, on every frame of the box,
as DIALS 3.5 does), fits a constant background by the robust Poisson GLM of Cantoni & Ronchetti
(2001) (DIALS' default for counting detectors; Parkhurst et al. 2016), sums the background-
subtracted foreground, and maps the shoebox onto an 11×11×11 grid in the Kabsch frame (c3, c2, c1)
for 3D profile fitting (Kabsch 2010): each pixel goes to the cell of its centre in (c1, c2), and
each frame's counts are spread over the c3 slices its angular range overlaps.
"""
from __future__ import annotations

import math

import numba
import numpy as np

GRID_HALF = 5
GRID = 2 * GRID_HALF + 1

# local flag bits returned by the kernel (mapped to DIALS' flags by the caller)
FG_BAD = 1
BG_BAD = 2
OVERLOADED = 4
FAILED_BACKGROUND = 8
FAILED_SUMMATION = 16
OVERLAPPED_FG = 32


@numba.njit(cache=True, nogil=True)
def _poisson_log_pmf(j, mu):
    return j * math.log(mu) - mu - math.lgamma(j + 1.0)


@numba.njit(cache=True, nogil=True)
def _expected_huber_psi(mu, c):
    """E[ψ_c((Y − μ)/√μ)] for Y ~ Poisson(μ) (Cantoni & Ronchetti 2001, eq. for the Poisson GLM)."""
    sigma = math.sqrt(mu)
    j1 = math.floor(mu - c * sigma)
    j2 = math.floor(mu + c * sigma)
    lo = max(0, int(mu - 12.0 * sigma - 10.0))
    hi = int(mu + 12.0 * sigma + 10.0)
    p_le_j1 = 0.0
    p_gt_j2 = 0.0
    for j in range(lo, hi + 1):
        p = math.exp(_poisson_log_pmf(j, mu))
        if j <= j1:
            p_le_j1 += p
        elif j > j2:
            p_gt_j2 += p
    pmf_j1 = math.exp(_poisson_log_pmf(j1, mu)) if j1 >= 0 else 0.0
    pmf_j2 = math.exp(_poisson_log_pmf(j2, mu)) if j2 >= 0 else 0.0
    return c * (p_gt_j2 - p_le_j1) + (mu / sigma) * (pmf_j1 - pmf_j2)


@numba.njit(cache=True, nogil=True)
def robust_poisson_mean(values, n, tuning_constant=1.345):
    """Robust Poisson mean of ``values[:n]``: the root in μ of Σψ_c(r_i) = n·E[ψ_c] with Pearson
    residuals r = (y − μ)/√μ, found by bisection in ln μ (monotone in μ)."""
    lo_v = 1e300
    hi_v = 0.0
    for i in range(n):
        v = values[i]
        lo_v = min(lo_v, v)
        hi_v = max(hi_v, v)
    if hi_v <= 0.0:
        return 0.0
    a = math.log(max(lo_v, 1e-3))
    b = math.log(hi_v + 1.0)
    for _ in range(60):
        m = 0.5 * (a + b)
        mu = math.exp(m)
        sigma = math.sqrt(mu)
        s = 0.0
        for i in range(n):
            r = (values[i] - mu) / sigma
            s += min(max(r, -tuning_constant), tuning_constant)
        f = s - n * _expected_huber_psi(mu, tuning_constant)
        if f > 0.0:
            a = m
        else:
            b = m
        if b - a < 1e-7:
            break
    return math.exp(0.5 * (a + b))


@numba.njit(cache=True, nogil=True)
def _corner_frame(x0, y0, nx, ny, e1, e2, origin, fast, slow, pixel_size_x, pixel_size_y):
    """Kabsch (c1, c2) of every pixel corner of a box; c = e·unit(lab) because e1, e2 ⟂ s1."""
    c1c = np.empty((ny + 1, nx + 1))
    c2c = np.empty((ny + 1, nx + 1))
    for yy in range(ny + 1):
        for xx in range(nx + 1):
            px = (x0 + xx) * pixel_size_x
            py = (y0 + yy) * pixel_size_y
            lx = origin[0] + px * fast[0] + py * slow[0]
            ly = origin[1] + px * fast[1] + py * slow[1]
            lz = origin[2] + px * fast[2] + py * slow[2]
            ln = math.sqrt(lx * lx + ly * ly + lz * lz)
            c1c[yy, xx] = (e1[0] * lx + e1[1] * ly + e1[2] * lz) / ln
            c2c[yy, xx] = (e2[0] * lx + e2[1] * ly + e2[2] * lz) / ln
    return c1c, c2c


@numba.njit(cache=True, nogil=True)
def _foreground_mask(c1c, c2c, delta_b_rad):
    """Pixels with any corner within δb of s1 (DIALS' ``compute_mask``)."""
    ny, nx = c1c.shape[0] - 1, c1c.shape[1] - 1
    foreground = np.zeros((ny, nx), dtype=np.bool_)
    inv_db2 = 1.0 / (delta_b_rad * delta_b_rad)
    for yy in range(ny):
        for xx in range(nx):
            m = 1e300
            for dy in range(2):
                for dx in range(2):
                    m = min(m, (c1c[yy + dy, xx + dx] ** 2 + c2c[yy + dy, xx + dx] ** 2) * inv_db2)
            foreground[yy, xx] = m <= 1.0
    return foreground


@numba.njit(cache=True, nogil=True)
def paint_foreground(shape, z_first, bbox, e1, e2, origin, fast, slow, pixel_size_x, pixel_size_y, delta_b_rad):
    """How many reflections claim each voxel of an image block (nz, ny, nx) as foreground, so that
    no reflection takes another's foreground as its background (DIALS' image-volume integrators)."""
    nz_img, ny_img, nx_img = shape
    count = np.zeros((nz_img, ny_img, nx_img), dtype=np.int16)
    for i in range(bbox.shape[0]):
        x0, x1, y0, y1, z0, z1 = bbox[i, 0], bbox[i, 1], bbox[i, 2], bbox[i, 3], bbox[i, 4], bbox[i, 5]
        if z1 <= z_first or z0 >= z_first + nz_img:
            continue
        c1c, c2c = _corner_frame(x0, y0, x1 - x0, y1 - y0, e1[i], e2[i], origin, fast, slow, pixel_size_x, pixel_size_y)
        foreground = _foreground_mask(c1c, c2c, delta_b_rad)
        for z in range(max(z0, z_first), min(z1, z_first + nz_img)):
            for yy in range(y1 - y0):
                y = y0 + yy
                if y < 0 or y >= ny_img:
                    continue
                for xx in range(x1 - x0):
                    x = x0 + xx
                    if 0 <= x < nx_img and foreground[yy, xx]:
                        count[z - z_first, y, x] += 1
    return count


@numba.njit(cache=True, nogil=True)
def integrate_block(
    images, z_first, pixel_valid, trusted_lo, trusted_hi, foreground_count,
    bbox, s1, e1, e2, zeta, phi_calc,
    origin, fast, slow, pixel_size_x, pixel_size_y,
    delta_b_rad, phi_start_rad, dphi_rad, scan_first,
    grid_step_b, grid_step_m, min_background_pixels,
    isum, vsum, bg_mean, n_fg, n_bg, flags, centroid,
    grid_counts, grid_cover, grid_cover2, grid_bad, voxel_volume,
):
    """Integrate the reflections ``bbox`` (n, 6) on ``images`` (nz, ny, nx) whose first frame has
    array index ``z_first``. ``foreground_count`` (from :func:`paint_foreground`) says how many
    reflections claim each voxel: a voxel claimed by another reflection is never background (nor
    a background cell of the profile grid); foreground shared with another reflection is summed,
    as DIALS 3.5 does, and flagged. Outputs are written into the preallocated arrays."""
    nz_img, ny_img, nx_img = images.shape
    n_refl = bbox.shape[0]
    for i in range(n_refl):
        x0, x1, y0, y1, z0, z1 = bbox[i, 0], bbox[i, 1], bbox[i, 2], bbox[i, 3], bbox[i, 4], bbox[i, 5]
        nx, ny, nz = x1 - x0, y1 - y0, z1 - z0
        c1c, c2c = _corner_frame(x0, y0, nx, ny, e1[i], e2[i], origin, fast, slow, pixel_size_x, pixel_size_y)
        # solid angle of one pixel in (c1, c2) from the corner differences at the box centre
        cy, cx = ny // 2, nx // 2
        dc1x = c1c[cy, cx + 1] - c1c[cy, cx]
        dc2x = c2c[cy, cx + 1] - c2c[cy, cx]
        dc1y = c1c[cy + 1, cx] - c1c[cy, cx]
        dc2y = c2c[cy + 1, cx] - c2c[cy, cx]
        voxel_volume[i] = abs(dc1x * dc2y - dc1y * dc2x) * abs(zeta[i]) * abs(dphi_rad)
        foreground = _foreground_mask(c1c, c2c, delta_b_rad)
        # pass 1: validity, background sample, foreground sums
        bg_values = np.empty(nx * ny * nz)
        nb = 0
        nf = 0
        sum_fg = 0.0
        f = 0
        for zz in range(nz):
            zi = z0 + zz - z_first
            for yy in range(ny):
                y = y0 + yy
                for xx in range(nx):
                    x = x0 + xx
                    valid = 0 <= zi < nz_img and 0 <= y < ny_img and 0 <= x < nx_img
                    v = 0.0
                    if valid:
                        v = images[zi, y, x]
                        valid = pixel_valid[y, x] and trusted_lo < v < trusted_hi
                        if pixel_valid[y, x] and v >= trusted_hi:
                            f |= OVERLOADED if foreground[yy, xx] else 0
                    claimed = foreground_count[zi, y, x] if valid else 0
                    if foreground[yy, xx]:
                        if valid:
                            nf += 1
                            sum_fg += v
                            if claimed > 1:
                                f |= OVERLAPPED_FG
                        else:
                            f |= FG_BAD
                    elif claimed == 0:
                        if valid:
                            bg_values[nb] = v
                            nb += 1
                        else:
                            f |= BG_BAD
        n_fg[i] = nf
        n_bg[i] = nb
        if nb < min_background_pixels:
            flags[i] = f | FAILED_BACKGROUND | FAILED_SUMMATION
            bg_mean[i] = 0.0
            isum[i] = 0.0
            vsum[i] = -1.0
            continue
        mu = robust_poisson_mean(bg_values, nb)
        bg_mean[i] = mu
        if f & FG_BAD:
            f |= FAILED_SUMMATION
            isum[i] = 0.0
            vsum[i] = -1.0
        else:
            intensity = sum_fg - mu * nf
            isum[i] = intensity
            vsum[i] = abs(intensity) + abs(mu * nf) * (1.0 + nf / nb)
        flags[i] = f
        # pass 2: centroid of the background-subtracted foreground and the Kabsch-grid mapping
        wsum = 0.0
        cxs = 0.0
        cys = 0.0
        czs = 0.0
        inv_sb = 1.0 / grid_step_b
        inv_sm = 1.0 / grid_step_m
        for zz in range(nz):
            zi = z0 + zz - z_first
            za = phi_start_rad + (z0 + zz + 1 - scan_first) * dphi_rad
            c3a = zeta[i] * (za - phi_calc[i])
            c3b = zeta[i] * (za + dphi_rad - phi_calc[i])
            if c3a > c3b:
                c3a, c3b = c3b, c3a
            width = c3b - c3a
            for yy in range(ny):
                y = y0 + yy
                for xx in range(nx):
                    x = x0 + xx
                    valid = 0 <= zi < nz_img and 0 <= y < ny_img and 0 <= x < nx_img
                    v = 0.0
                    if valid:
                        v = images[zi, y, x]
                        valid = pixel_valid[y, x] and trusted_lo < v < trusted_hi
                        if not foreground[yy, xx] and foreground_count[zi, y, x] > 0:
                            continue  # another reflection's foreground in this one's background
                    if valid and foreground[yy, xx]:
                        w = v - mu
                        if w > 0:
                            wsum += w
                            cxs += w * (x + 0.5)
                            cys += w * (y + 0.5)
                            czs += w * (z0 + zz + 0.5)
                    # pixel centre → (c1, c2) cell
                    c1 = 0.25 * (c1c[yy, xx] + c1c[yy, xx + 1] + c1c[yy + 1, xx] + c1c[yy + 1, xx + 1])
                    c2 = 0.25 * (c2c[yy, xx] + c2c[yy, xx + 1] + c2c[yy + 1, xx] + c2c[yy + 1, xx + 1])
                    g1 = int(math.floor(c1 * inv_sb + GRID_HALF + 0.5))
                    g2 = int(math.floor(c2 * inv_sb + GRID_HALF + 0.5))
                    if g1 < 0 or g1 >= GRID or g2 < 0 or g2 >= GRID:
                        continue
                    for k in range(GRID):
                        lo = (k - GRID_HALF - 0.5) * grid_step_m
                        hi = lo + grid_step_m
                        overlap = min(hi, c3b) - max(lo, c3a)
                        if overlap <= 0.0:
                            continue
                        frac = overlap / width
                        if valid:
                            grid_counts[i, k, g2, g1] += v * frac
                            grid_cover[i, k, g2, g1] += frac
                            grid_cover2[i, k, g2, g1] += frac * frac
                        else:
                            grid_bad[i, k, g2, g1] = True
        if wsum > 0:
            centroid[i, 0] = cxs / wsum
            centroid[i, 1] = cys / wsum
            centroid[i, 2] = czs / wsum
        else:
            centroid[i, 0] = np.nan
            centroid[i, 1] = np.nan
            centroid[i, 2] = np.nan


@numba.njit(cache=True, nogil=True)
def fit_profiles(profile_of_refl, profiles, grid_counts, grid_cover, grid_cover2, grid_bad, bg_mean, bg_var,
                 voxel_volume, threshold, intensity, variance, correlation, n_fitted, max_iterations=100):
    """Fit I·q + b to each reflection's grid by iteratively reweighted least squares.

    ``profiles`` (m, 11, 11, 11) are densities per unit c-volume integrating to 1; for cell k of
    a reflection the expected excess counts are I·q_k with q_k = g_k·n_k·v_vox (n_k: voxel mass in
    the cell, v_vox: one voxel's c-volume) and its variance cover2_k·(b + I·g_k·v_vox).
    """
    n = grid_counts.shape[0]
    for i in range(n):
        j = profile_of_refl[i]
        if j < 0:
            n_fitted[i] = 0
            variance[i] = -1.0
            continue
        g = profiles[j]
        gmax = g.max()
        b = bg_mean[i]
        vv = voxel_volume[i]
        # initial estimate: summed excess over the cells used
        num0 = 0.0
        m = 0
        for k in range(GRID):
            for y in range(GRID):
                for x in range(GRID):
                    if g[k, y, x] > threshold * gmax and grid_cover[i, k, y, x] > 0 and not grid_bad[i, k, y, x]:
                        num0 += grid_counts[i, k, y, x] - b * grid_cover[i, k, y, x]
                        m += 1
        n_fitted[i] = m
        if m < 3:
            variance[i] = -1.0
            continue
        est = max(num0, 1e-3)
        for _ in range(max_iterations):
            num = 0.0
            den = 0.0
            for k in range(GRID):
                for y in range(GRID):
                    for x in range(GRID):
                        gk = g[k, y, x]
                        nk = grid_cover[i, k, y, x]
                        if gk > threshold * gmax and nk > 0 and not grid_bad[i, k, y, x]:
                            q = gk * nk * vv
                            v = grid_cover2[i, k, y, x] * (abs(b) + abs(est) * gk * vv) + 1e-10
                            num += (grid_counts[i, k, y, x] - b * nk) * q / v
                            den += q * q / v
            new = num / den
            converged = abs(new - est) < 1e-3
            est = new
            if converged:
                break
        # variance: counting term of the fit plus the background estimate's own error
        den = 0.0
        dbg = 0.0
        for k in range(GRID):
            for y in range(GRID):
                for x in range(GRID):
                    gk = g[k, y, x]
                    nk = grid_cover[i, k, y, x]
                    if gk > threshold * gmax and nk > 0 and not grid_bad[i, k, y, x]:
                        q = gk * nk * vv
                        v = grid_cover2[i, k, y, x] * (abs(b) + abs(est) * gk * vv) + 1e-10
                        den += q * q / v
                        dbg += nk * q / v
        intensity[i] = est
        variance[i] = 1.0 / den + bg_var[i] * (dbg / den) ** 2
        # Pearson correlation between model and data over the fitted cells
        sx = 0.0
        sy = 0.0
        sxx = 0.0
        syy = 0.0
        sxy = 0.0
        for k in range(GRID):
            for y in range(GRID):
                for x in range(GRID):
                    gk = g[k, y, x]
                    nk = grid_cover[i, k, y, x]
                    if gk > threshold * gmax and nk > 0 and not grid_bad[i, k, y, x]:
                        model = est * gk * nk * vv + b * nk
                        data = grid_counts[i, k, y, x]
                        sx += model
                        sy += data
                        sxx += model * model
                        syy += data * data
                        sxy += model * data
        cov = sxy - sx * sy / m
        vx = sxx - sx * sx / m
        vy = syy - sy * sy / m
        correlation[i] = cov / math.sqrt(vx * vy) if vx > 0 and vy > 0 else 0.0
