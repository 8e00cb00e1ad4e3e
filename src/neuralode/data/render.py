"""Rendered scenes with exact depth: a small vectorised ray-caster (torch) for single-image depth.

Why a renderer: no real depth data set is reachable offline, and a rendered scene gives the depth
of every pixel *exactly*. What it draws
-------------------------------------------------------------------------------------------------
* A room: the ground plane ``y = 0``, a back wall ``z = z_wall`` and, each with probability 1/2,
  a left and a right wall ``x = ±x_wall`` — infinite textured planes, so every ray hits something.
* 2–6 objects standing on the ground: spheres, boxes (turned about the vertical axis) and vertical
  cylinders with a top cap.
* Textures cut from real photographs (the caller passes them; :func:`load_textures` takes
  CIFAR-10 images), tiled over each surface with a random scale.
* Lambertian shading: one directional light from above, an ambient term, and hard shadows cast
  by the objects.
* A pinhole camera at height ``h`` with random yaw and downward pitch, horizontal field of
  view ``fov`` degrees.

Depth convention: the *z-depth* in the camera frame (distance along the optical axis), as in
NYU-v2 and KITTI depth maps. Rays are built with unit z-component in the camera frame, so a
ray's hit parameter ``t`` is the depth itself.

Determinism: scene ``i`` of a set is drawn from a generator seeded with ``(seed, i)``, so a set
is a prefix of any larger set with the same seed and the result never depends on batch order.

Cache: :func:`load_depth_scenes` renders once and keeps the arrays in
``<cache_dir()>/depth_scenes/`` (written atomically), keyed by every setting and
:data:`RENDER_VERSION`; a request for fewer scenes than a cached set is served from its prefix,
and one for more extends the largest cached set.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "RENDER_VERSION",
    "Camera",
    "DepthSet",
    "Scene",
    "camera_rays",
    "load_depth_scenes",
    "load_textures",
    "random_scene",
    "render",
    "render_scenes",
]

RENDER_VERSION = 1
_EPS = 1e-4
_FAR = 1e9

# object kinds
SPHERE, BOX, CYLINDER = 0, 1, 2


@dataclass
class Camera:
    """A pinhole camera: position, yaw (about +y, radians), pitch (down is positive), fov (degrees)."""

    position: tuple[float, float, float] = (0.0, 1.5, 0.0)
    yaw: float = 0.0
    pitch: float = 0.15
    fov: float = 60.0

    def rotation(self) -> torch.Tensor:
        """Camera-to-world rotation (columns: right, up, forward)."""
        cy, sy = math.cos(self.yaw), math.sin(self.yaw)
        cp, sp = math.cos(self.pitch), math.sin(self.pitch)
        yaw = torch.tensor([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]], dtype=torch.float64)
        pitch = torch.tensor([[1.0, 0.0, 0.0], [0.0, cp, sp], [0.0, -sp, cp]], dtype=torch.float64)
        return yaw @ pitch


@dataclass
class Scene:
    """Everything :func:`render` needs. Objects are rows of ``objects`` (see :func:`random_scene`).

    ``objects``: float64 ``(K, 8)`` rows ``kind, x, z, a, b, c, yaw, texture``:
    sphere ``a`` = radius (centre at height ``a``); box half-sizes ``a, b, c`` (x, y, z in the
    box frame, resting on the ground) and ``yaw``; cylinder radius ``a`` and height ``b``.
    ``planes``: ``(P, 6)`` rows ``nx, ny, nz, offset, texture, scale`` for ``n·p = offset``.
    ``object_scale``: texture repeats per unit length on objects.
    """

    camera: Camera
    planes: torch.Tensor
    objects: torch.Tensor
    light: tuple[float, float, float] = (0.4, 1.0, -0.3)
    ambient: float = 0.3
    object_scale: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))


@dataclass
class DepthSet:
    """Rendered images ``uint8 (N, 3, H, W)`` and their z-depth ``float32 (N, H, W)``."""

    images: torch.Tensor
    depth: torch.Tensor
    name: str = "rendered scenes"

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.depth.ndim != 3 or self.images.shape[0] != self.depth.shape[0] \
                or self.images.shape[2:] != self.depth.shape[1:]:
            raise ValueError(f"images {tuple(self.images.shape)} and depth {tuple(self.depth.shape)} "
                             "must be (N, 3, H, W) and (N, H, W)")

    def __len__(self) -> int:
        return len(self.depth)


# ---------------------------------------------------------------------------------- geometry


def camera_rays(camera: Camera, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """World-space ray origins ``(H*W, 3)`` and directions ``(H*W, 3)`` through pixel centres.

    A direction is ``R @ (u, v, 1)`` in camera coordinates, so the hit parameter ``t`` of a
    ray equals the z-depth of the hit point. Pixel ``(i, j)`` (row, column) looks through
    ``u = (j + 0.5 - W/2) / f``, ``v = -(i + 0.5 - H/2) / f`` with ``f = (W/2) / tan(fov/2)``.
    """
    f = (width / 2) / math.tan(math.radians(camera.fov) / 2)
    j = torch.arange(width, dtype=torch.float64) + 0.5 - width / 2
    i = torch.arange(height, dtype=torch.float64) + 0.5 - height / 2
    v, u = torch.meshgrid(-i / f, j / f, indexing="ij")
    d_cam = torch.stack([u, v, torch.ones_like(u)], dim=-1).reshape(-1, 3)
    dirs = d_cam @ camera.rotation().T
    origins = torch.tensor(camera.position, dtype=torch.float64).expand_as(dirs)
    return origins, dirs


def _hit_planes(o: torch.Tensor, d: torch.Tensor, planes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``t`` ``(N, P)`` of each ray with each plane (``_FAR`` where behind or parallel)."""
    n = planes[:, :3]
    denom = d @ n.T
    t = (planes[:, 3][None] - o @ n.T) / torch.where(denom.abs() < 1e-12, torch.full_like(denom, 1e-12), denom)
    return torch.where(t > _EPS, t, torch.full_like(t, _FAR)), n


def _rotate_y(p: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate points/vectors ``(..., 3)`` by ``angle`` about +y (world → box frame uses -yaw)."""
    c, s = torch.cos(angle), torch.sin(angle)
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    return torch.stack([c * x + s * z, y, -s * x + c * z], dim=-1)


def _hit_objects(o: torch.Tensor, d: torch.Tensor, objects: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``t`` ``(N, K)`` of each ray with each object and the world normal ``(N, K, 3)`` there."""
    n_rays, k = len(o), len(objects)
    t = torch.full((n_rays, k), _FAR, dtype=o.dtype)
    normal = torch.zeros(n_rays, k, 3, dtype=o.dtype)
    for j in range(k):
        kind, cx, cz, a, b, c, yaw, _ = objects[j].tolist()
        if kind == SPHERE:
            centre = torch.tensor([cx, a, cz], dtype=o.dtype)
            oc = o - centre
            qa = (d * d).sum(-1)
            qb = 2 * (d * oc).sum(-1)
            qc = (oc * oc).sum(-1) - a * a
            disc = qb * qb - 4 * qa * qc
            root = (-qb - disc.clamp_min(0).sqrt()) / (2 * qa)
            ok = (disc >= 0) & (root > _EPS)
            t[:, j] = torch.where(ok, root, t[:, j])
            normal[:, j] = (o + root[:, None] * d - centre) / a
        elif kind == BOX:
            ang = torch.tensor(-yaw, dtype=o.dtype)
            lo = _rotate_y(o - torch.tensor([cx, 0.0, cz], dtype=o.dtype), ang)
            ld = _rotate_y(d, ang)
            half = torch.tensor([a, b, c], dtype=o.dtype)
            centre_l = torch.tensor([0.0, b, 0.0], dtype=o.dtype)
            safe = torch.where(ld.abs() < 1e-12, torch.full_like(ld, 1e-12), ld)
            t1 = (centre_l - half - lo) / safe
            t2 = (centre_l + half - lo) / safe
            tmin, tmax = torch.minimum(t1, t2), torch.maximum(t1, t2)
            t_near, axis = tmin.max(dim=-1)
            t_far = tmax.min(dim=-1).values
            ok = (t_near <= t_far) & (t_near > _EPS)
            t[:, j] = torch.where(ok, t_near, t[:, j])
            n_local = torch.zeros_like(lo)
            n_local.scatter_(1, axis[:, None], -torch.sign(ld.gather(1, axis[:, None])))
            normal[:, j] = _rotate_y(n_local, -ang)
        elif kind == CYLINDER:
            ox, oz = o[:, 0] - cx, o[:, 2] - cz
            dx, dz = d[:, 0], d[:, 2]
            qa = (dx * dx + dz * dz).clamp_min(1e-12)
            qb = 2 * (dx * ox + dz * oz)
            qc = ox * ox + oz * oz - a * a
            disc = qb * qb - 4 * qa * qc
            side = (-qb - disc.clamp_min(0).sqrt()) / (2 * qa)
            y_side = o[:, 1] + side * d[:, 1]
            ok_side = (disc >= 0) & (side > _EPS) & (y_side >= 0) & (y_side <= b)
            dy = torch.where(d[:, 1].abs() < 1e-12, torch.full_like(d[:, 1], 1e-12), d[:, 1])
            cap = (b - o[:, 1]) / dy
            px, pz = ox + cap * dx, oz + cap * dz
            ok_cap = (cap > _EPS) & (px * px + pz * pz <= a * a)
            use_side = ok_side & (~ok_cap | (side <= cap))
            tj = torch.where(use_side, side, torch.where(ok_cap, cap, torch.full_like(cap, _FAR)))
            t[:, j] = tj
            n_side = torch.stack([ox + side * dx, torch.zeros_like(ox), oz + side * dz], -1) / a
            n_cap = torch.tensor([0.0, 1.0, 0.0], dtype=o.dtype).expand_as(n_side)
            normal[:, j] = torch.where(use_side[:, None], n_side, n_cap)
        else:
            raise ValueError(f"object {j}: kind={kind!r}; expected {SPHERE} (sphere), {BOX} (box) or "
                             f"{CYLINDER} (cylinder)")
    return t, normal


def _object_uv(p: torch.Tensor, obj: torch.Tensor) -> torch.Tensor:
    """Surface coordinates (in scene units) of points ``p`` ``(N, 3)`` on object row ``obj``."""
    kind, cx, cz, a, b, c, yaw, _ = obj.tolist()
    if kind == SPHERE:
        q = p - torch.tensor([cx, a, cz], dtype=p.dtype)
        theta = torch.atan2(q[:, 2], q[:, 0])
        phi = torch.acos((q[:, 1] / a).clamp(-1, 1))
        return torch.stack([theta * a, phi * a], -1)
    if kind == BOX:
        q = _rotate_y(p - torch.tensor([cx, 0.0, cz], dtype=p.dtype), torch.tensor(-yaw, dtype=p.dtype))
        # the two coordinates that vary on the face hit (the third is at a face position)
        on_x = (q[:, 0].abs() - a).abs() < 1e-6 * max(1.0, a) + 1e-6
        on_z = (q[:, 2].abs() - c).abs() < 1e-6 * max(1.0, c) + 1e-6
        u = torch.where(on_x, q[:, 2], q[:, 0])
        v = torch.where(on_x | on_z, q[:, 1], q[:, 2])
        return torch.stack([u, v], -1)
    q = p - torch.tensor([cx, 0.0, cz], dtype=p.dtype)
    return torch.stack([torch.atan2(q[:, 2], q[:, 0]) * a, q[:, 1]], -1)


def _plane_uv(p: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """In-plane coordinates of ``p`` on an axis-aligned plane with normal ``n``."""
    axis = int(n.abs().argmax())
    keep = [i for i in range(3) if i != axis]
    return p[:, keep]


def _sample(textures: torch.Tensor, tex: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear, wrapping lookup of ``textures`` ``(T, 3, S, S)`` at ``uv`` in texture periods."""
    n_tex, _, size, _ = textures.shape
    flat = textures.permute(0, 2, 3, 1).reshape(-1, 3)
    x = torch.remainder(uv[:, 0], 1.0) * size - 0.5
    y = torch.remainder(uv[:, 1], 1.0) * size - 0.5
    x0, y0 = torch.floor(x), torch.floor(y)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    x0, y0 = x0.long() % size, y0.long() % size
    x1, y1 = (x0 + 1) % size, (y0 + 1) % size
    base = tex.long() * size * size

    def at(yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        return flat[base + yy * size + xx]

    return ((1 - fy) * ((1 - fx) * at(y0, x0) + fx * at(y0, x1))
            + fy * ((1 - fx) * at(y1, x0) + fx * at(y1, x1)))


# ---------------------------------------------------------------------------------- rendering


def render(scene: Scene, textures: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ray-cast ``scene``: returns the image ``float32 (3, H, W)`` in [0, 1] and z-depth ``(H, W)``.

    ``textures``: ``(T, 3, S, S)`` floats in [0, 1]; planes and objects name theirs by index.
    """
    if textures.ndim != 4 or textures.shape[1] != 3 or textures.shape[2] != textures.shape[3]:
        raise ValueError(f"textures must be (T, 3, S, S); got shape {tuple(textures.shape)}")
    # only the textures this scene uses, as one float64 table (the full set can be thousands)
    used = torch.cat([scene.planes[:, 4], scene.objects[:, 7] if len(scene.objects) else scene.planes[:0, 4]])
    ids, remap = torch.unique(used.long(), return_inverse=True)
    if ids.min() < 0 or ids.max() >= len(textures):
        raise ValueError(f"scene names texture {int(ids.max())} but only {len(textures)} textures were given")
    textures = textures[ids].to(torch.float64)
    tex_of = remap.to(torch.float64)
    o, d = camera_rays(scene.camera, height, width)
    t_pl, n_pl = _hit_planes(o, d, scene.planes)
    t_ob, n_ob = _hit_objects(o, d, scene.objects)
    t_all = torch.cat([t_pl, t_ob], dim=1)
    t, which = t_all.min(dim=1)
    if (t >= _FAR).any():
        raise ValueError("some rays hit nothing; the scene needs a back wall and a ground plane")
    p = o + t[:, None] * d
    n_planes = len(scene.planes)
    colour = torch.zeros(len(t), 3, dtype=torch.float64)
    normal = torch.zeros(len(t), 3, dtype=torch.float64)
    for j in range(t_all.shape[1]):
        m = which == j
        if not m.any():
            continue
        if j < n_planes:
            nj = n_pl[j].expand(int(m.sum()), 3)
            nj = nj * -torch.sign((d[m] * nj).sum(-1, keepdim=True))  # face the camera
            uv = _plane_uv(p[m], n_pl[j]) * scene.planes[j, 5]
            tex = tex_of[j]
        else:
            k = j - n_planes
            nj = n_ob[m, k]
            uv = _object_uv(p[m], scene.objects[k]) * scene.object_scale[k]
            tex = tex_of[n_planes + k]
        normal[m] = nj
        colour[m] = _sample(textures, tex.expand(int(m.sum())), uv)
    light = torch.tensor(scene.light, dtype=torch.float64)
    light = light / light.norm()
    lambert = (normal @ light).clamp_min(0)
    if len(scene.objects):
        t_shadow, _ = _hit_objects(p + 1e-3 * normal, light.expand_as(p), scene.objects)
        lambert = torch.where(t_shadow.min(dim=1).values < _FAR, torch.zeros_like(lambert), lambert)
    shade = scene.ambient + (1 - scene.ambient) * lambert
    image = (colour * shade[:, None]).clamp(0, 1)
    return (image.T.reshape(3, height, width).to(torch.float32),
            t.reshape(height, width).to(torch.float32))


def random_scene(g: torch.Generator, n_textures: int) -> Scene:
    """A random room with 2–6 objects on the ground, textures drawn from ``range(n_textures)``."""

    def u(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=g, dtype=torch.float64))

    def tex() -> float:
        return float(torch.randint(n_textures, (), generator=g))

    camera = Camera(position=(u(-0.5, 0.5), u(1.0, 2.2), 0.0), yaw=u(-0.3, 0.3), pitch=u(0.05, 0.35),
                    fov=u(50.0, 70.0))
    z_wall = u(7.0, 14.0)
    planes = [[0.0, 1.0, 0.0, 0.0, tex(), u(0.3, 1.0)],          # ground y = 0
              [0.0, 0.0, 1.0, z_wall, tex(), u(0.2, 0.6)]]       # back wall z = z_wall
    for side in (-1.0, 1.0):
        if u(0, 1) < 0.5:
            planes.append([1.0, 0.0, 0.0, side * u(2.5, 5.0), tex(), u(0.2, 0.6)])
    n_obj = int(torch.randint(2, 7, (), generator=g))
    objects, scales = [], []
    for _ in range(n_obj):
        kind = int(torch.randint(3, (), generator=g))
        z = u(2.5, z_wall - 1.0)
        x = camera.position[0] + math.tan(camera.yaw) * z + u(-0.5, 0.5) * z * 0.9
        if kind == SPHERE:
            objects.append([SPHERE, x, z, u(0.3, 1.0), 0.0, 0.0, 0.0, tex()])
        elif kind == BOX:
            objects.append([BOX, x, z, u(0.2, 0.8), u(0.2, 0.9), u(0.2, 0.8), u(0, math.pi), tex()])
        else:
            objects.append([CYLINDER, x, z, u(0.2, 0.6), u(0.4, 2.0), 0.0, 0.0, tex()])
        scales.append(u(0.5, 1.5))
    light = (u(-1, 1), u(0.8, 1.6), u(-1, 0.3))
    return Scene(camera, torch.tensor(planes, dtype=torch.float64), torch.tensor(objects, dtype=torch.float64),
                 light=light, ambient=u(0.2, 0.4), object_scale=torch.tensor(scales, dtype=torch.float64))


def render_scenes(n: int, size: int, textures: torch.Tensor, seed: int, *, first: int = 0) -> DepthSet:
    """Render scenes ``first .. first+n-1`` of stream ``seed`` at ``size × size`` pixels."""
    if n < 0 or size < 4:
        raise ValueError(f"n={n}, size={size}: need n >= 0 and size >= 4")
    images = torch.zeros(n, 3, size, size, dtype=torch.uint8)
    depth = torch.zeros(n, size, size, dtype=torch.float32)
    for i in range(n):
        g = torch.Generator().manual_seed(seed * 1_000_003 + first + i)
        img, dep = render(random_scene(g, len(textures)), textures, size, size)
        images[i] = (img * 255).round().to(torch.uint8)
        depth[i] = dep
    return DepthSet(images, depth)


# ---------------------------------------------------------------------------------- data


def load_textures(split: str = "train", *, source: str = "auto", size: int = 32) -> torch.Tensor:
    """Real-photograph textures: CIFAR-10 test images (floats ``(T, 3, size, size)`` in [0, 1]).

    ``split="train"`` takes the even-numbered images, ``"test"`` the odd ones, so rendered
    training and held-out scenes never share a texture.
    """
    from neuralode.data.cifar10 import load_cifar10

    if split not in ("train", "test"):
        raise ValueError(f"split={split!r}; expected 'train' or 'test'")
    imgs = load_cifar10("test", source=source).images[0 if split == "train" else 1::2].float() / 255
    if size != imgs.shape[-1]:
        imgs = torch.nn.functional.interpolate(imgs, size=(size, size), mode="bilinear", align_corners=False)
    return imgs


def _cache_path(split: str, n: int, size: int, seed: int) -> Path:
    from neuralode.data.cache import cache_dir

    return cache_dir() / "depth_scenes" / f"v{RENDER_VERSION}_{split}_n{n}_s{size}_seed{seed}.npz"


def _cached_prefix(split: str, n: int, size: int, seed: int) -> DepthSet | None:
    """The cached set of this split/size/seed closest to ``n`` scenes (a larger one, else the largest smaller)."""
    folder = _cache_path(split, n, size, seed).parent
    sizes = []
    for path in folder.glob(f"v{RENDER_VERSION}_{split}_n*_s{size}_seed{seed}.npz"):
        try:
            sizes.append((int(path.name.split("_n")[1].split("_")[0]), path))
        except ValueError:
            continue
    larger = sorted(p for p in sizes if p[0] >= n)
    smaller = sorted(p for p in sizes if p[0] < n)
    for _, path in larger[:1] + smaller[-1:]:
        try:
            with np.load(path) as f:
                return DepthSet(torch.from_numpy(f["images"]), torch.from_numpy(f["depth"]), name=str(f["name"]))
        except (OSError, ValueError, KeyError):
            continue
    return None


def load_depth_scenes(split: str, n: int, size: int, *, seed: int = 0, source: str = "auto",
                      textures: torch.Tensor | None = None, cache: bool = True) -> DepthSet:
    """``n`` rendered ``size``-pixel scenes of ``split`` ("train" or "test"), cached after the first call.

    The two splits use different scene streams (``seed`` and ``seed + 1``) and disjoint texture
    sets (see :func:`load_textures`). ``textures`` overrides the photographs (tests); such sets
    are not cached.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r}; expected 'train' or 'test'")
    path = _cache_path(split, n, size, seed)
    if cache and textures is None and path.exists():
        try:
            with np.load(path) as f:
                return DepthSet(torch.from_numpy(f["images"]), torch.from_numpy(f["depth"]),
                                name=str(f["name"]))
        except (OSError, ValueError, KeyError):
            path.unlink(missing_ok=True)  # damaged: render again
    own = textures is None
    stream = 2 * seed + (split == "test")
    prefix = _cached_prefix(split, n, size, seed) if cache and own else None
    if prefix is not None and len(prefix) >= n:
        return DepthSet(prefix.images[:n].clone(), prefix.depth[:n].clone(), name=prefix.name)
    tex = textures if textures is not None else load_textures(split, source=source)
    data = render_scenes(n - (len(prefix) if prefix else 0), size, tex, seed=stream,
                         first=len(prefix) if prefix else 0)
    if prefix is not None:  # scene i depends only on (seed, i): extend the cached prefix
        data = DepthSet(torch.cat([prefix.images, data.images]), torch.cat([prefix.depth, data.depth]))
    data.name = "rendered scenes (CIFAR-10 textures)" if own else "rendered scenes"
    if cache and own:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, images=data.images.numpy(), depth=data.depth.numpy(), name=np.array(data.name))
        os.replace(tmp, path)
    return data
