"""Numba kernels that integrate every reflection whose shoebox lies in a block of images.

For each reflection the kernel builds its shoebox from the images, marks foreground pixels
(any pixel corner within δb = n_sigma·σb of s1 in the Kabsch frame, on every frame of the box,
as DIALS 3.5 does), fits the background by the robust Poisson GLM of Cantoni & Ronchetti (2001)
(DIALS' default for counting detectors; Parkhurst et al. 2016) with a constant or a log-linear
model in (x, y, z), sums the background-subtracted foreground, and maps the shoebox onto an
11×11×11 grid in the Kabsch frame (c3, c2, c1) for 3D profile fitting (Kabsch 2010): each pixel
goes to the cell of its centre in (c1, c2), and each frame's counts are spread over the c3 slices
its angular range overlaps.

Every image voxel is read once: the first pass classifies the box's voxels into scratch arrays
that the background fit and the second pass (summation, centroid, grid) reuse; scratch arrays
are allocated once per block, not per reflection.
"""
from __future__ import annotations

import math

import numba
import numpy as np

from algorithms.integration.background_shape import ROOT_TABLE_STEPS

GRID_HALF = 5
GRID = 2 * GRID_HALF + 1
GRID_CELLS = GRID * GRID * GRID
SUBPIXELS = 4  # per pixel edge, for the mapping of pixels onto the grid
SUBPIXEL_WEIGHT = 1.0 / (SUBPIXELS * SUBPIXELS)

# local flag bits returned by the kernel (mapped to DIALS' flags by the caller)
FG_BAD = 1
BG_BAD = 2
OVERLOADED = 4
FAILED_BACKGROUND = 8
FAILED_SUMMATION = 16
OVERLAPPED_FG = 32

# background models (DIALS' background.glm.model.algorithm)
CONSTANT3D = 0
LOGLINEAR3D = 1
MIN_VOXELS_PER_GRADIENT_PARAMETER = 25
# the per-voxel loops of the kernel may reorder sums and use reciprocals (float rounding only;
# no assumptions about NaN or infinity): ~15 % faster integration
_FAST_MATH = {"reassoc", "contract", "arcp", "nsz"}

# voxel classes of the first pass
_INVALID_FG = 0
_FOREGROUND = 1
_BACKGROUND = 2  # valid, nobody's foreground: used for the background model
_OTHERS = 3  # valid, another reflection's foreground: neither background nor grid
_INVALID_BG = 4
_SHARED_FG = 5  # valid foreground also claimed by another reflection


@numba.njit(cache=True, nogil=True, fastmath=_FAST_MATH)
def huber_expectations(mu, c):
    """E[ψ_c(r)] and E[ψ_c(r)·r] for r = (Y − μ)/√μ, Y ~ Poisson(μ) (Cantoni & Ronchetti 2001)."""
    if mu <= 0.0:
        return 0.0, 1.0
    sigma = math.sqrt(mu)
    lo = max(0, int(mu - 12.0 * sigma - 10.0))
    hi = int(mu + 12.0 * sigma + 10.0)
    e_psi = 0.0
    e_psi_r = 0.0
    p = math.exp(lo * math.log(mu) - mu - math.lgamma(lo + 1.0))
    for j in range(lo, hi + 1):
        if j > lo:
            p *= mu / j  # Poisson pmf recurrence
        r = (j - mu) / sigma
        psi = min(max(r, -c), c)
        e_psi += p * psi
        e_psi_r += p * psi * r
    return e_psi, e_psi_r


@numba.njit(cache=True, nogil=True)
def _solve_spd(H, U, n):
    """Solve H x = U (n ≤ 4, symmetric positive definite) by Cholesky in place of small arrays;
    returns (x, ok)."""
    L = np.zeros((4, 4))
    for i in range(n):
        for j in range(i + 1):
            s = H[i, j]
            for k in range(j):
                s -= L[i, k] * L[j, k]
            if i == j:
                if s <= 1e-300:
                    return np.zeros(4), False
                L[i, i] = math.sqrt(s)
            else:
                L[i, j] = s / L[j, j]
    y = np.zeros(4)
    for i in range(n):
        s = U[i]
        for k in range(i):
            s -= L[i, k] * y[k]
        y[i] = s / L[i, i]
    x = np.zeros(4)
    for i in range(n - 1, -1, -1):
        s = y[i]
        for k in range(i + 1, n):
            s -= L[k, i] * x[k]
        x[i] = s / L[i, i]
    return x, True


@numba.njit(cache=True, nogil=True)
def box_coordinates(n):
    """Coordinates of a box axis of ``n`` voxels, centred and scaled to ±1."""
    half = max(0.5 * (n - 1), 0.5)
    u = np.empty(n)
    for k in range(n):
        u[k] = (k - 0.5 * (n - 1)) / half
    return u


@numba.njit(cache=True, nogil=True, fastmath=_FAST_MATH)
def robust_loglinear_background(values, use, root_shape, ux, uy, uz, n_params, tuning_constant, ex, ey, ez, beta,
                                information):
    """Robust Poisson GLM of the background voxels of a box: ``values`` and ``use`` hold the
    box's voxels in (z, y, x) order (the first nx·ny·nz entries; nx, ny, nz = the lengths of
    ux, uy, uz), ``use`` marks the background ones: μ = S·exp(β0 + β1·u + β2·v + β3·w) with
    (u, v, w) = (ux[x], uy[y], uz[z]) the coordinates centred on the box and scaled to ±1
    (``n_params`` = 1 gives DIALS' constant3d model, 4 its loglinear3d model) and S a known
    shape per voxel (``root_shape`` holds √S; all ones for DIALS' models; ``values`` then hold
    the counts over √S, so that the Pearson residual y/√μ needs no division per voxel).

    Fisher scoring of the Cantoni–Ronchetti estimating equations Σ (ψ_c(r_i) − E[ψ_c])·√μ_i·x_i = 0,
    with the expectations evaluated at the box mean (they vary by ≪ 1 % across a shoebox).
    On return ``ex[x]·ey[y]·ez[z]·S`` is μ at every voxel of the box, ``beta`` holds β and
    ``information`` the Poisson information Σ μ x xᵀ (for the variance of the background).
    Returns the number of iterations, or 0 when the fit fails (then the constant model should
    be used)."""
    nx, ny, nz = ux.shape[0], uy.shape[0], uz.shape[0]
    total = 0.0
    n = 0
    shape_total = 0.0
    for i in range(nx * ny * nz):
        if use[i]:
            total += values[i] * root_shape[i]
            shape_total += root_shape[i] * root_shape[i]
            n += 1
    beta[:] = 0.0
    mean_shape = shape_total / max(n, 1)
    beta[0] = math.log(max(total / max(shape_total, 1e-12), 1e-3))
    U = np.zeros(4)
    H = np.zeros((4, 4))
    # √μ and 1/√μ as products of per-axis tables, like μ: no square root or division per voxel
    # (r = y/√μ − √μ); the sums run along x rows, contiguous and unmasked (unused voxels weigh
    # 0), and the y and z terms are taken per row
    sx, sy, sz = np.empty(nx), np.empty(ny), np.empty(nz)
    isx, isy, isz = np.empty(nx), np.empty(ny), np.empty(nz)
    c = tuning_constant
    iterations = 0
    ok = True
    for _ in range(50):
        iterations += 1
        for xx in range(nx):
            sx[xx] = math.exp(0.5 * beta[1] * ux[xx])
            isx[xx] = 1.0 / sx[xx]
        for yy in range(ny):
            sy[yy] = math.exp(0.5 * beta[2] * uy[yy])
            isy[yy] = 1.0 / sy[yy]
        base = math.exp(beta[0])
        for zz in range(nz):
            sz[zz] = math.exp(0.5 * (beta[0] + beta[3] * uz[zz]))
            isz[zz] = 1.0 / sz[zz]
        e_psi, e_psi_r = huber_expectations(base * mean_shape, c)
        u0 = u1 = u2 = u3 = 0.0
        h00 = h10 = h11 = h20 = h21 = h22 = h30 = h31 = h32 = h33 = 0.0
        for zz in range(nz):
            x3 = uz[zz]
            for yy in range(ny):
                x2 = uy[yy]
                s_row = sz[zz] * sy[yy]
                is_row = isz[zz] * isy[yy]
                k = (zz * ny + yy) * nx
                g0 = g1 = m0 = m1 = m11 = 0.0
                for xx in range(nx):
                    w = 1.0 if use[k + xx] else 0.0
                    s = s_row * sx[xx] * root_shape[k + xx]
                    psi = min(max(values[k + xx] * (is_row * isx[xx]) - s, -c), c)
                    g = w * (psi - e_psi) * s
                    mu = w * s * s
                    x1 = ux[xx]
                    g0 += g
                    g1 += g * x1
                    m0 += mu
                    m1 += mu * x1
                    m11 += mu * x1 * x1
                u0 += g0
                u1 += g1
                u2 += g0 * x2
                u3 += g0 * x3
                h00 += m0
                h10 += m1
                h11 += m11
                h20 += m0 * x2
                h21 += m1 * x2
                h22 += m0 * x2 * x2
                h30 += m0 * x3
                h31 += m1 * x3
                h32 += m0 * x2 * x3
                h33 += m0 * x3 * x3
        U[0], U[1], U[2], U[3] = u0, u1, u2, u3
        H[0, 0], H[1, 1], H[2, 2], H[3, 3] = h00, h11, h22, h33
        H[1, 0] = H[0, 1] = h10
        H[2, 0] = H[0, 2] = h20
        H[2, 1] = H[1, 2] = h21
        H[3, 0] = H[0, 3] = h30
        H[3, 1] = H[1, 3] = h31
        H[3, 2] = H[2, 3] = h32
        for a in range(n_params):
            for b in range(n_params):
                information[a, b] = H[a, b]
        step, ok = _solve_spd(H * max(e_psi_r, 1e-3), U, n_params)
        if not ok:
            break
        largest = 0.0
        for a in range(n_params):
            step_a = min(max(step[a], -2.0), 2.0)
            beta[a] += step_a
            largest = max(largest, abs(step_a))
        if largest < 1e-4:
            break
    for xx in range(nx):
        ex[xx] = math.exp(beta[1] * ux[xx])
    for yy in range(ny):
        ey[yy] = math.exp(beta[2] * uy[yy])
    for zz in range(nz):
        ez[zz] = math.exp(beta[0]) * math.exp(beta[3] * uz[zz])
    return iterations if ok else 0


@numba.njit(cache=True, nogil=True)
def _corner_frame(x0, y0, nx, ny, e1, e2, origin, fast, slow, pixel_size_x, pixel_size_y, c1c, c2c):
    """Kabsch (c1, c2) of every pixel corner of a box into ``c1c``/``c2c`` (≥ (ny+1, nx+1));
    c = e·unit(lab) because e1, e2 ⟂ s1."""
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


@numba.njit(cache=True, nogil=True)
def _foreground_mask(c1c, c2c, nx, ny, delta_b_rad, foreground):
    """Pixels with any corner within δb of s1 (DIALS' ``compute_mask``) into ``foreground``."""
    inv_db2 = 1.0 / (delta_b_rad * delta_b_rad)
    for yy in range(ny):
        for xx in range(nx):
            m = 1e300
            for dy in range(2):
                for dx in range(2):
                    m = min(m, (c1c[yy + dy, xx + dx] ** 2 + c2c[yy + dy, xx + dx] ** 2) * inv_db2)
            foreground[yy, xx] = m <= 1.0


@numba.njit(cache=True, nogil=True)
def _cell_of(c1, c2, inv_step):
    """(c2, c1) cell index of a point, −1 outside the grid."""
    g1 = int(math.floor(c1 * inv_step + GRID_HALF + 0.5))
    g2 = int(math.floor(c2 * inv_step + GRID_HALF + 0.5))
    return g2 * GRID + g1 if 0 <= g1 < GRID and 0 <= g2 < GRID else -1


@numba.njit(cache=True, nogil=True)
def _outside_grid(c1c, c2c, yy, xx, inv_step):
    """Whether a pixel lies wholly beyond one edge of the grid (its corners all beyond it)."""
    edge = GRID_HALF + 0.5
    lo1 = hi1 = lo2 = hi2 = 0
    for dy in range(2):
        for dx in range(2):
            g1 = c1c[yy + dy, xx + dx] * inv_step
            g2 = c2c[yy + dy, xx + dx] * inv_step
            lo1 += g1 < -edge
            hi1 += g1 >= edge
            lo2 += g2 < -edge
            hi2 += g2 >= edge
    return lo1 == 4 or hi1 == 4 or lo2 == 4 or hi2 == 4


@numba.njit(cache=True, nogil=True)
def _max_box(bbox):
    mx = 1
    my = 1
    mz = 1
    for i in range(bbox.shape[0]):
        mx = max(mx, bbox[i, 1] - bbox[i, 0])
        my = max(my, bbox[i, 3] - bbox[i, 2])
        mz = max(mz, bbox[i, 5] - bbox[i, 4])
    return mx, my, mz


@numba.njit(cache=True, nogil=True)
def foreground_masks(bbox, e1, e2, origin, fast, slow, pixel_size_x, pixel_size_y, delta_b_rad):
    """Every reflection's foreground mask (ny, nx) of its box, flat (y-major) and concatenated,
    with offsets (n + 1): computed once, used by the painting of every image block and by the
    integration."""
    n = bbox.shape[0]
    offsets = np.zeros(n + 1, dtype=np.int64)
    for i in range(n):
        offsets[i + 1] = offsets[i] + (bbox[i, 1] - bbox[i, 0]) * (bbox[i, 3] - bbox[i, 2])
    masks = np.zeros(offsets[n], dtype=np.bool_)
    mx, my, _ = _max_box(bbox)
    c1c = np.empty((my + 1, mx + 1))
    c2c = np.empty((my + 1, mx + 1))
    foreground = np.empty((my, mx), dtype=np.bool_)
    for i in range(n):
        x0, y0 = bbox[i, 0], bbox[i, 2]
        nx, ny = bbox[i, 1] - x0, bbox[i, 3] - y0
        _corner_frame(x0, y0, nx, ny, e1[i], e2[i], origin, fast, slow, pixel_size_x, pixel_size_y, c1c, c2c)
        _foreground_mask(c1c, c2c, nx, ny, delta_b_rad, foreground)
        k = offsets[i]
        for yy in range(ny):
            for xx in range(nx):
                masks[k] = foreground[yy, xx]
                k += 1
    return masks, offsets


@numba.njit(cache=True, nogil=True)
def boxes_meeting(boxes, targets):
    """Indices of ``boxes`` (n, 6; half-open x0, x1, y0, y1, z0, z1) that overlap any of ``targets``."""
    keep = np.zeros(boxes.shape[0], dtype=np.bool_)
    for i in range(boxes.shape[0]):
        for j in range(targets.shape[0]):
            if (boxes[i, 0] < targets[j, 1] and targets[j, 0] < boxes[i, 1] and boxes[i, 2] < targets[j, 3]
                    and targets[j, 2] < boxes[i, 3] and boxes[i, 4] < targets[j, 5] and targets[j, 4] < boxes[i, 5]):
                keep[i] = True
                break
    return np.nonzero(keep)[0]


@numba.njit(cache=True, nogil=True)
def paint_foreground(shape, z_first, bbox, masks, mask_offsets):
    """How many reflections claim each voxel of an image block (nz, ny, nx) as foreground, so that
    no reflection takes another's foreground as its background (DIALS' image-volume integrators)."""
    nz_img, ny_img, nx_img = shape
    count = np.zeros((nz_img, ny_img, nx_img), dtype=np.int16)
    for i in range(bbox.shape[0]):
        x0, x1, y0, y1, z0, z1 = bbox[i, 0], bbox[i, 1], bbox[i, 2], bbox[i, 3], bbox[i, 4], bbox[i, 5]
        if z1 <= z_first or z0 >= z_first + nz_img or x1 <= 0 or y1 <= 0 or x0 >= nx_img or y0 >= ny_img:
            continue
        nx, ny = x1 - x0, y1 - y0
        k0 = mask_offsets[i]
        for yy in range(max(0, -y0), min(ny, ny_img - y0)):
            for xx in range(max(0, -x0), min(nx, nx_img - x0)):
                if masks[k0 + yy * nx + xx]:
                    for z in range(max(z0, z_first), min(z1, z_first + nz_img)):
                        count[z - z_first, y0 + yy, x0 + xx] += 1
    return count


@numba.njit(cache=True, nogil=True, fastmath=_FAST_MATH)
def integrate_block(
    images, z_first, pixel_valid, trusted_lo, trusted_hi, foreground_count, ring_u, root_shape_tables,
    bbox, masks, mask_offsets, e1, e2, zeta, phi_calc,
    origin, fast, slow, pixel_size_x, pixel_size_y,
    delta_b_rad, guard_radius_rad, phi_start_rad, dphi_rad, scan_first,
    grid_step_b, grid_step_m, sigma_b_rad, sigma_m_rad, min_background_pixels, background_params, tuning_constant,
    support_cells, reference_slot,
    isum, vsum, bg_mean, bg_sum, bg_var, n_fg, n_bg, flags, centroid, voxel_volume, unshared_fraction,
    grid_counts, grid_background, grid_cover, grid_bad, grid_shared,
    ref_counts, ref_background, ref_cover, ref_bad, ref_frames,
):
    """Integrate the reflections ``bbox`` (n, 6) on ``images`` (nz, ny, nx) whose first frame has
    array index ``z_first``. ``foreground_count`` (from :func:`paint_foreground`) says how many
    reflections claim each voxel: a voxel claimed by another reflection is never background (nor
    a background cell of the profile grid), and neither is a voxel within ``guard_radius_rad`` of
    the reflection's centre in (c1, c2), which holds its own tail (unless fewer than
    ``min_background_pixels`` lie beyond). The background model is scaled by each frame's
    radial background shape S: ``root_shape_tables[z, j]`` is √S of frame z of ``images`` at
    ring coordinate j/ROOT_TABLE_STEPS (see :func:`root_shape_tables`), interpolated linearly
    at the pixel's ``ring_u``; one column of ones (and ``ring_u`` 0) gives DIALS' models. Foreground shared with another reflection is flagged
    and left out of the sum, which is scaled up by the model profile's mass in the whole
    foreground over its mass in the unshared part (``unshared_fraction`` is the inverse): DIALS
    sums shared foreground into both reflections, which on electron data — where a reciprocal
    lattice row near the beam puts neighbours on the same pixels a few images apart — counts
    a neighbour's whole spot into a reflection (sums 2× too large on 1 in 3 strong reflections
    of some simulated crystals). The model profile is DIALS' gaussian_rs: a Gaussian of σb in
    (c1, c2) at the pixel centre times the rocking curve's mass (σm in c3) on the frame.

    Outputs are written into the preallocated arrays: per reflection the summation results, the
    background (mean μ over the foreground, ΣB over the foreground and the variance of the
    per-voxel background there), and the Kabsch grid on the ``support_cells`` (flat cell
    indices) — counts, background, voxel mass, Σ mass², a bad-voxel flag and a flag for cells
    holding foreground another reflection claims too; reflections
    with ``reference_slot`` ≥ 0 also get their whole grid in the ``ref_*`` arrays at that slot, and
    in ``ref_frames`` the background-subtracted foreground counts of each frame of their box."""
    nz_img, ny_img, nx_img = images.shape
    n_refl = bbox.shape[0]
    mx, my, mz = _max_box(bbox)
    c1c = np.empty((my + 1, mx + 1))
    c2c = np.empty((my + 1, mx + 1))
    foreground = np.empty((my, mx), dtype=np.bool_)
    pixel_cells = np.empty((my, mx, SUBPIXELS * SUBPIXELS), dtype=np.int32)
    pixel_weights = np.empty((my, mx, SUBPIXELS * SUBPIXELS))
    pixel_n = np.empty((my, mx), dtype=np.int32)
    pixel_r2 = np.empty((my, mx))  # squared (c1, c2) distance of each pixel centre from the reflection
    guard2 = guard_radius_rad * guard_radius_rad
    voxel_value = np.empty(mx * my * mz, dtype=np.float32)
    voxel_class = np.empty(mx * my * mz, dtype=np.uint8)
    voxel_root_shape = np.empty(mx * my * mz)
    voxel_over_root = np.empty(mx * my * mz, dtype=np.float32)
    last_step = root_shape_tables.shape[1] - 1
    bg_use = np.empty(mx * my * mz, dtype=np.bool_)
    ex = np.empty(mx)
    ey = np.empty(my)
    ez = np.empty(mz)
    beta = np.zeros(4)
    information = np.zeros((4, 4))
    slice_k = np.empty((mz, GRID), dtype=np.int32)
    slice_f = np.empty((mz, GRID))
    slice_n = np.empty(mz, dtype=np.int32)
    slice_mass = np.empty(GRID)
    slice_g = np.empty((mz, GRID))
    g_counts = np.zeros(GRID_CELLS)
    g_background = np.zeros(GRID_CELLS)
    g_cover = np.zeros(GRID_CELLS)
    g_bad = np.zeros(GRID_CELLS, dtype=np.bool_)
    g_shared = np.zeros(GRID_CELLS, dtype=np.bool_)
    f_counts = np.zeros(GRID * GRID)
    f_background = np.zeros(GRID * GRID)
    f_area = np.zeros(GRID * GRID)
    f_bad = np.zeros(GRID * GRID, dtype=np.bool_)
    f_shared = np.zeros(GRID * GRID, dtype=np.bool_)
    inv_sb = 1.0 / grid_step_b
    grad = np.zeros(4)
    grad_unshared = np.zeros(4)
    frame_excess = np.zeros(mz)
    frame_mass = np.empty(mz)
    pixel_density = np.empty((my, mx))
    half_inv_var_b = 0.5 / (sigma_b_rad * sigma_b_rad)
    for i in range(n_refl):
        x0, x1, y0, y1, z0, z1 = bbox[i, 0], bbox[i, 1], bbox[i, 2], bbox[i, 3], bbox[i, 4], bbox[i, 5]
        nx, ny, nz = x1 - x0, y1 - y0, z1 - z0
        _corner_frame(x0, y0, nx, ny, e1[i], e2[i], origin, fast, slow, pixel_size_x, pixel_size_y, c1c, c2c)
        # solid angle of one pixel in (c1, c2) from the corner differences at the box centre
        cy, cx = ny // 2, nx // 2
        dc1x = c1c[cy, cx + 1] - c1c[cy, cx]
        dc2x = c2c[cy, cx + 1] - c2c[cy, cx]
        dc1y = c1c[cy + 1, cx] - c1c[cy, cx]
        dc2y = c2c[cy + 1, cx] - c2c[cy, cx]
        voxel_volume[i] = abs(dc1x * dc2y - dc1y * dc2x) * abs(zeta[i]) * abs(dphi_rad)
        k0 = mask_offsets[i]
        for yy in range(ny):
            for xx in range(nx):
                foreground[yy, xx] = masks[k0 + yy * nx + xx]
        # the (c1, c2) cells each pixel covers, with the fraction of its area in each: its
        # SUBPIXELS² sub-pixels go to the cells of their centres (c bilinear between the
        # corners), so that the grid does not depend on where the spot sits within a pixel
        for yy in range(ny):
            for xx in range(nx):
                # the cells of the four corners: one cell (most pixels) or all outside the grid
                # need no sub-pixels
                k00 = _cell_of(c1c[yy, xx], c2c[yy, xx], inv_sb)
                k01 = _cell_of(c1c[yy, xx + 1], c2c[yy, xx + 1], inv_sb)
                k10 = _cell_of(c1c[yy + 1, xx], c2c[yy + 1, xx], inv_sb)
                k11 = _cell_of(c1c[yy + 1, xx + 1], c2c[yy + 1, xx + 1], inv_sb)
                if k00 == k01 and k00 == k10 and k00 == k11 and k00 >= 0:
                    pixel_cells[yy, xx, 0] = k00
                    pixel_weights[yy, xx, 0] = 1.0
                    pixel_n[yy, xx] = 1
                    continue
                if _outside_grid(c1c, c2c, yy, xx, inv_sb):
                    pixel_n[yy, xx] = 0
                    continue
                m = 0
                for sy in range(SUBPIXELS):
                    ty = (sy + 0.5) / SUBPIXELS
                    for sx in range(SUBPIXELS):
                        tx = (sx + 0.5) / SUBPIXELS
                        c1 = ((1 - ty) * ((1 - tx) * c1c[yy, xx] + tx * c1c[yy, xx + 1])
                              + ty * ((1 - tx) * c1c[yy + 1, xx] + tx * c1c[yy + 1, xx + 1]))
                        c2 = ((1 - ty) * ((1 - tx) * c2c[yy, xx] + tx * c2c[yy, xx + 1])
                              + ty * ((1 - tx) * c2c[yy + 1, xx] + tx * c2c[yy + 1, xx + 1]))
                        g1 = int(math.floor(c1 * inv_sb + GRID_HALF + 0.5))
                        g2 = int(math.floor(c2 * inv_sb + GRID_HALF + 0.5))
                        if g1 < 0 or g1 >= GRID or g2 < 0 or g2 >= GRID:
                            continue
                        cell = g2 * GRID + g1
                        found = False
                        for e in range(m):
                            if pixel_cells[yy, xx, e] == cell:
                                pixel_weights[yy, xx, e] += SUBPIXEL_WEIGHT
                                found = True
                                break
                        if not found:
                            pixel_cells[yy, xx, m] = cell
                            pixel_weights[yy, xx, m] = SUBPIXEL_WEIGHT
                            m += 1
                pixel_n[yy, xx] = m
        # pixels within the guard radius of the reflection's centre hold its own tail (a few per
        # cent of it beyond a ±3σ foreground): not background, or the background fit absorbs it
        for yy in range(ny):
            for xx in range(nx):
                c1 = 0.25 * (c1c[yy, xx] + c1c[yy, xx + 1] + c1c[yy + 1, xx] + c1c[yy + 1, xx + 1])
                c2 = 0.25 * (c2c[yy, xx] + c2c[yy, xx + 1] + c2c[yy + 1, xx] + c2c[yy + 1, xx + 1])
                pixel_r2[yy, xx] = c1 * c1 + c2 * c2
        # pass 1: read and classify every voxel once
        nb = 0
        nb_near = 0
        nf = 0
        sum_fg = 0.0
        f = 0
        v_index = 0
        for zz in range(nz):
            zi = z0 + zz - z_first
            z_inside = 0 <= zi < nz_img
            for yy in range(ny):
                y = y0 + yy
                row_inside = z_inside and 0 <= y < ny_img
                for xx in range(nx):
                    x = x0 + xx
                    fg = foreground[yy, xx]
                    valid = row_inside and 0 <= x < nx_img
                    v = 0.0
                    others = 0
                    root = 1.0
                    if valid:
                        v = images[zi, y, x]
                        t = ring_u[y, x] * ROOT_TABLE_STEPS
                        k = min(int(t), last_step)
                        t -= k
                        root = (1.0 - t) * root_shape_tables[zi, k] + t * root_shape_tables[zi, min(k + 1, last_step)]
                        if pixel_valid[y, x] and v >= trusted_hi and fg:
                            f |= OVERLOADED
                        valid = pixel_valid[y, x] and trusted_lo < v < trusted_hi
                        others = foreground_count[zi, y, x] - (1 if fg else 0)
                    voxel_root_shape[v_index] = root
                    voxel_over_root[v_index] = v / root
                    voxel_value[v_index] = v
                    if fg:
                        if valid:
                            voxel_class[v_index] = _FOREGROUND
                            nf += 1
                            sum_fg += v
                            if others > 0:
                                f |= OVERLAPPED_FG
                                voxel_class[v_index] = _SHARED_FG
                        else:
                            voxel_class[v_index] = _INVALID_FG
                            f |= FG_BAD
                    elif not valid:
                        voxel_class[v_index] = _INVALID_BG
                        f |= BG_BAD
                    elif others > 0:
                        voxel_class[v_index] = _OTHERS
                    else:
                        voxel_class[v_index] = _BACKGROUND
                        if pixel_r2[yy, xx] < guard2:
                            nb_near += 1
                        else:
                            nb += 1
                    bg_use[v_index] = voxel_class[v_index] == _BACKGROUND and pixel_r2[yy, xx] >= guard2
                    v_index += 1
        if nb < min_background_pixels and nb_near > 0:
            # too little background beyond the guard (a box cut by the detector edge or crowded
            # by neighbours): DIALS' rule, everything outside the foreground
            nb += nb_near
            for q in range(nx * ny * nz):
                bg_use[q] = voxel_class[q] == _BACKGROUND
        n_fg[i] = nf
        n_bg[i] = nb
        overlapped = (f & OVERLAPPED_FG) != 0
        if overlapped:
            # the model profile (up to a constant) at each pixel centre, for the share of the
            # foreground that is not shared with a neighbour
            for yy in range(ny):
                for xx in range(nx):
                    pixel_density[yy, xx] = math.exp(-pixel_r2[yy, xx] * half_inv_var_b)
        centroid[i, 0] = np.nan
        centroid[i, 1] = np.nan
        centroid[i, 2] = np.nan
        if nb < min_background_pixels:
            flags[i] = f | FAILED_BACKGROUND | FAILED_SUMMATION
            bg_mean[i] = 0.0
            isum[i] = 0.0
            vsum[i] = -1.0
            if reference_slot[i] >= 0:
                ref_bad[reference_slot[i], :] = True
            grid_bad[i, :] = True
            grid_shared[i, :] = False
            continue
        # too few background voxels to see a gradient (a crowded box keeps a corner or two, from
        # which a slope extrapolates wildly): the constant model, still scaled by the shape
        n_params = background_params if nb >= MIN_VOXELS_PER_GRADIENT_PARAMETER * background_params else 1
        ux, uy, uz = box_coordinates(nx), box_coordinates(ny), box_coordinates(nz)
        if robust_loglinear_background(voxel_over_root, bg_use, voxel_root_shape, ux, uy, uz, n_params,
                                       tuning_constant, ex, ey, ez, beta, information) == 0:
            n_params = 1
            robust_loglinear_background(voxel_over_root, bg_use, voxel_root_shape, ux, uy, uz, 1, tuning_constant, ex,
                                        ey, ez, beta, information)
        # c3 slices of every frame: a frame's counts (and background) go to the slices it overlaps
        # in proportion to the Gaussian rocking curve's mass there (DIALS' reciprocal-space
        # transform; far out in the tail by the overlaps alone), while the c-volume a cell
        # receives (its cover) is the geometric overlap — so that counts ÷ volume is the mean
        # density over the slice whatever the frame's phase and width in c3
        inv_sm = 1.0 / (math.sqrt(2.0) * sigma_m_rad)
        for zz in range(nz):
            za = phi_start_rad + (z0 + zz + 1 - scan_first) * dphi_rad
            c3a = zeta[i] * (za - phi_calc[i])
            c3b = zeta[i] * (za + dphi_rad - phi_calc[i])
            if c3a > c3b:
                c3a, c3b = c3b, c3a
            width = c3b - c3a
            frame_mass[zz] = 0.5 * (math.erf(c3b * inv_sm) - math.erf(c3a * inv_sm))
            k_lo = max(0, int(math.floor(c3a / grid_step_m + GRID_HALF + 0.5)))
            k_hi = min(GRID - 1, int(math.floor(c3b / grid_step_m + GRID_HALF + 0.5)))
            m = 0
            total_mass = 0.0
            for k in range(k_lo, k_hi + 1):
                lo = max((k - GRID_HALF - 0.5) * grid_step_m, c3a)
                hi = min((k - GRID_HALF + 0.5) * grid_step_m, c3b)
                if hi > lo:
                    slice_k[zz, m] = k
                    slice_f[zz, m] = (hi - lo) / width
                    slice_g[zz, m] = (hi - lo) / width
                    slice_mass[m] = 0.5 * (math.erf(hi * inv_sm) - math.erf(lo * inv_sm))
                    total_mass += slice_mass[m]
                    m += 1
            if total_mass > 1e-9:
                for j in range(m):
                    slice_f[zz, j] = slice_mass[j] / total_mass
            slice_n[zz] = m
        # pass 2: background-subtracted sums, centroid and the Kabsch grid
        g_counts[:] = 0.0
        g_background[:] = 0.0
        g_cover[:] = 0.0
        g_bad[:] = False
        g_shared[:] = False
        sum_b = 0.0
        frame_excess[:nz] = 0.0
        grad[:] = 0.0
        grad_unshared[:] = 0.0
        excess_unshared = 0.0
        sum_b_unshared = 0.0
        mass_foreground = 0.0
        mass_unshared = 0.0
        wsum = 0.0
        cxs = 0.0
        cys = 0.0
        czs = 0.0
        v_index = 0
        for zz in range(nz):
            # the frame on the (c2, c1) plane first; then onto its c3 slices
            f_counts[:] = 0.0
            f_background[:] = 0.0
            f_area[:] = 0.0
            f_bad[:] = False
            f_shared[:] = False
            for yy in range(ny):
                for xx in range(nx):
                    c = voxel_class[v_index]
                    v = voxel_value[v_index]
                    root = voxel_root_shape[v_index]
                    v_index += 1
                    if c == _OTHERS:
                        continue
                    b = ex[xx] * ey[yy] * ez[zz] * root * root
                    if c == _FOREGROUND or c == _SHARED_FG:
                        frame_excess[zz] += v - b
                        sum_b += b
                        grad[1] += b * ux[xx]
                        grad[2] += b * uy[yy]
                        grad[3] += b * uz[zz]
                        if overlapped:
                            p = pixel_density[yy, xx] * frame_mass[zz]
                            mass_foreground += p
                        if overlapped and c == _FOREGROUND:
                            mass_unshared += p
                            excess_unshared += v - b
                            sum_b_unshared += b
                            grad_unshared[0] += b
                            grad_unshared[1] += b * ux[xx]
                            grad_unshared[2] += b * uy[yy]
                            grad_unshared[3] += b * uz[zz]
                        w = v - b
                        if w > 0:
                            wsum += w
                            cxs += w * (x0 + xx + 0.5)
                            cys += w * (y0 + yy + 0.5)
                            czs += w * (z0 + zz + 0.5)
                    if c == _INVALID_FG or c == _INVALID_BG:
                        for e in range(pixel_n[yy, xx]):
                            f_bad[pixel_cells[yy, xx, e]] = True
                        continue
                    shared = c == _SHARED_FG
                    for e in range(pixel_n[yy, xx]):
                        cell2 = pixel_cells[yy, xx, e]
                        area = pixel_weights[yy, xx, e]
                        f_counts[cell2] += v * area
                        f_background[cell2] += b * area
                        f_area[cell2] += area
                        if shared:
                            f_shared[cell2] = True
            for s in range(slice_n[zz]):
                base = slice_k[zz, s] * GRID * GRID
                frac = slice_f[zz, s]
                geometric = slice_g[zz, s]
                for cell2 in range(GRID * GRID):
                    cell = base + cell2
                    if f_bad[cell2]:
                        g_bad[cell] = True
                    if f_area[cell2] > 0.0:
                        g_counts[cell] += f_counts[cell2] * frac
                        g_background[cell] += f_background[cell2] * frac
                        g_cover[cell] += f_area[cell2] * geometric
                        if f_shared[cell2]:
                            g_shared[cell] = True
        grad[0] = sum_b
        if wsum > 0:
            centroid[i, 0] = cxs / wsum
            centroid[i, 1] = cys / wsum
            centroid[i, 2] = czs / wsum
        # variance of ΣB over the foreground from the background fit: gᵀ I⁻¹ g, g = Σ_fg ∂B/∂β
        var_sum_b = 0.0
        var_sum_b_unshared = 0.0
        if nf > 0:
            sol, ok = _solve_spd(information, grad, n_params)
            if ok:
                for a in range(n_params):
                    var_sum_b += grad[a] * sol[a]
            if overlapped:
                sol, ok = _solve_spd(information, grad_unshared, n_params)
                if ok:
                    for a in range(n_params):
                        var_sum_b_unshared += grad_unshared[a] * sol[a]
        if overlapped:
            unshared_fraction[i] = mass_unshared / mass_foreground if mass_foreground > 0 else 0.0
        else:
            unshared_fraction[i] = 1.0 if nf > 0 else 0.0
        bg_sum[i] = sum_b
        centre = ((nz // 2) * ny + ny // 2) * nx + nx // 2
        bg_mean[i] = sum_b / nf if nf > 0 else ex[nx // 2] * ey[ny // 2] * ez[nz // 2] * voxel_root_shape[centre] ** 2
        bg_var[i] = var_sum_b / (nf * nf) if nf > 0 else 0.0
        if f & FG_BAD:
            f |= FAILED_SUMMATION
            isum[i] = 0.0
            vsum[i] = -1.0
        elif overlapped:
            if mass_unshared > 0.0:
                scale = mass_foreground / mass_unshared
                isum[i] = excess_unshared * scale
                vsum[i] = (abs(excess_unshared) + abs(sum_b_unshared) + var_sum_b_unshared) * scale * scale
            else:
                f |= FAILED_SUMMATION
                isum[i] = 0.0
                vsum[i] = -1.0
        else:
            intensity = sum_fg - sum_b
            isum[i] = intensity
            vsum[i] = abs(intensity) + abs(sum_b) + var_sum_b
        flags[i] = f
        for j in range(support_cells.shape[0]):
            cell = support_cells[j]
            grid_counts[i, j] = g_counts[cell]
            grid_background[i, j] = g_background[cell]
            grid_cover[i, j] = g_cover[cell]
            grid_bad[i, j] = g_bad[cell]
            grid_shared[i, j] = g_shared[cell]
        slot = reference_slot[i]
        if slot >= 0:
            for cell in range(GRID_CELLS):
                ref_counts[slot, cell] = g_counts[cell]
                ref_background[slot, cell] = g_background[cell]
                ref_cover[slot, cell] = g_cover[cell]
                ref_bad[slot, cell] = g_bad[cell] or g_shared[cell]
            for zz in range(min(nz, ref_frames.shape[1])):
                ref_frames[slot, zz] = frame_excess[zz]


@numba.njit(cache=True, nogil=True)
def fit_profiles(profile_of_refl, profiles, fit_mask, grid_counts, grid_background, grid_cover, grid_bad,
                 grid_shared, bg_var, voxel_volume, min_unshared_fraction, intensity, variance, correlation, n_fitted,
                 max_iterations=100):
    """Fit I·q + B to each reflection's grid (on the support cells) by iteratively reweighted
    least squares.

    ``profiles`` (m, n_support) are densities per unit c-volume (normalised over the whole grid);
    ``fit_mask`` (m, n_support) the cells each profile is fitted on. For cell k of a reflection
    the expected counts are I·q_k + B_k with q_k = g_k·n_k·v_vox (n_k: voxel mass in the cell,
    v_vox: one voxel's c-volume, B_k: the modelled background there) and the variance
    B_k + I·q_k — the Poisson variance of the cell's counts, not Σ (fraction)²·(voxel variance):
    a voxel shared among neighbouring cells, whose fit weights are nearly equal, adds its whole
    variance to the estimate (counting only the squared fractions understated σ(I) by ~30 %).
    The variance of I adds the background model's own error
    (``bg_var``: variance of the per-voxel background level) propagated through the fit.
    Cells holding foreground that another reflection claims too (``grid_shared``: a
    neighbour's tail may add counts there) are left out when the others still hold at least
    ``min_unshared_fraction`` of the profile's fitted mass.
    """
    n = grid_counts.shape[0]
    n_support = grid_counts.shape[1]
    use = np.empty(n_support, dtype=np.bool_)
    for i in range(n):
        j = profile_of_refl[i]
        if j < 0:
            n_fitted[i] = 0
            variance[i] = -1.0
            continue
        g = profiles[j]
        vv = voxel_volume[i]
        mass_all = 0.0
        mass_unshared = 0.0
        for c in range(n_support):
            if fit_mask[j, c] and grid_cover[i, c] > 0 and not grid_bad[i, c]:
                mass_all += g[c] * grid_cover[i, c]
                if not grid_shared[i, c]:
                    mass_unshared += g[c] * grid_cover[i, c]
        exclude_shared = mass_unshared >= min_unshared_fraction * mass_all
        num0 = 0.0
        m = 0
        for c in range(n_support):
            use[c] = (fit_mask[j, c] and grid_cover[i, c] > 0 and not grid_bad[i, c]
                      and not (exclude_shared and grid_shared[i, c]))
            if use[c]:
                num0 += grid_counts[i, c] - grid_background[i, c]
                m += 1
        n_fitted[i] = m
        if m < 3:
            variance[i] = -1.0
            continue
        est = max(num0, 1e-3)
        for _ in range(max_iterations):
            num = 0.0
            den = 0.0
            for c in range(n_support):
                if use[c]:
                    nk = grid_cover[i, c]
                    q = g[c] * nk * vv
                    v = abs(grid_background[i, c]) + abs(est) * q + 1e-10
                    num += (grid_counts[i, c] - grid_background[i, c]) * q / v
                    den += q * q / v
            new = num / den
            converged = abs(new - est) < 1e-3
            est = new
            if converged:
                break
        den = 0.0
        dbg = 0.0
        sx = 0.0
        sy = 0.0
        sxx = 0.0
        syy = 0.0
        sxy = 0.0
        for c in range(n_support):
            if use[c]:
                nk = grid_cover[i, c]
                q = g[c] * nk * vv
                v = abs(grid_background[i, c]) + abs(est) * q + 1e-10
                den += q * q / v
                dbg += nk * q / v
                model = est * q + grid_background[i, c]
                data = grid_counts[i, c]
                sx += model
                sy += data
                sxx += model * model
                syy += data * data
                sxy += model * data
        intensity[i] = est
        variance[i] = 1.0 / den + bg_var[i] * (dbg / den) ** 2
        cov = sxy - sx * sy / m
        vx = sxx - sx * sx / m
        vy = syy - sy * sy / m
        correlation[i] = cov / math.sqrt(vx * vy) if vx > 0 and vy > 0 else 0.0
