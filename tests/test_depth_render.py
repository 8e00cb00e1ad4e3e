"""The depth renderer: exact ray–surface distances, Lambertian shading, determinism, cache."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from neuralode.data import render as R


def _rays_by_hand(cam: R.Camera, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel rays from the documented convention, written independently of the renderer."""
    f = (w / 2) / math.tan(math.radians(cam.fov) / 2)
    jj, ii = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    d_cam = np.stack([(jj - w / 2) / f, -(ii - h / 2) / f, np.ones_like(jj)], -1)
    # camera looks along +z, pitched down by `pitch`, then turned by `yaw` about +y
    cp, sp, cy, sy = math.cos(cam.pitch), math.sin(cam.pitch), math.cos(cam.yaw), math.sin(cam.yaw)
    y, z = d_cam[..., 1], d_cam[..., 2]
    y, z = cp * y + sp * z, -sp * y + cp * z          # pitch down: forward tilts to -y
    x = d_cam[..., 0]
    x, z = cy * x + sy * z, -sy * x + cy * z          # yaw about +y
    return np.asarray(cam.position, dtype=float), np.stack([x, y, z], -1)


def _uniform_textures(value: float = 0.5, n: int = 3) -> torch.Tensor:
    return torch.full((n, 3, 8, 8), value)


def _room(objects: list[list[float]], z_wall: float = 9.0, light=(0.3, 1.0, -0.2)) -> R.Scene:
    cam = R.Camera(position=(0.2, 1.4, 0.0), yaw=0.15, pitch=0.2, fov=62.0)
    planes = torch.tensor([[0, 1, 0, 0, 0, 1.0], [0, 0, 1, z_wall, 1, 0.5]], dtype=torch.float64)
    return R.Scene(cam, planes, torch.tensor(objects, dtype=torch.float64).reshape(-1, 8), light=light,
                   ambient=0.3, object_scale=torch.ones(len(objects), dtype=torch.float64))


def test_depth_equals_analytic_ray_sphere_and_plane_distances():
    radius, cx, cz = 0.9, 0.6, 4.0
    scene = _room([[R.SPHERE, cx, cz, radius, 0, 0, 0, 2]])
    h = w = 40
    _, depth = R.render(scene, _uniform_textures(), h, w)
    o, d = _rays_by_hand(scene.camera, h, w)
    # ground y = 0 and back wall z = 9: t = (offset - n·o) / (n·d) where positive
    t_ground = np.where(d[..., 1] < 0, -o[1] / np.where(d[..., 1] < 0, d[..., 1], -1), np.inf)
    t_wall = (9.0 - o[2]) / d[..., 2]
    # sphere: smallest root of |o + t d - c|^2 = r^2
    c = np.array([cx, radius, cz])
    oc = o - c
    a = (d * d).sum(-1)
    b = 2 * (d * oc).sum(-1)
    disc = b * b - 4 * a * ((oc * oc).sum() - radius ** 2)
    t_sphere = np.where(disc >= 0, (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a), np.inf)
    expected = np.minimum(np.minimum(t_ground, t_wall), t_sphere)
    hits_sphere = t_sphere < np.minimum(t_ground, t_wall)
    assert hits_sphere.sum() > 50 and (~hits_sphere).sum() > 50  # both kinds of pixel are tested
    np.testing.assert_allclose(depth.numpy(), expected, rtol=1e-5)


def test_depth_is_the_z_coordinate_in_the_camera_frame():
    scene = _room([])
    _, depth = R.render(scene, _uniform_textures(), 16, 16)
    o, d = R.camera_rays(scene.camera, 16, 16)
    forward = scene.camera.rotation()[:, 2]
    points = o + depth.double().reshape(-1, 1) * d
    np.testing.assert_allclose(((points - o) @ forward).numpy(), depth.reshape(-1).numpy(), rtol=1e-6)


def test_box_and_cylinder_depth_match_analytic_intersections():
    # an axis-aligned box (yaw 0) and a vertical cylinder, each alone in the room
    half = (0.5, 0.6, 0.4)
    box = _room([[R.BOX, -0.3, 4.0, *half, 0.0, 2]])
    cyl = _room([[R.CYLINDER, 0.8, 5.0, 0.5, 1.6, 0, 0, 2]])
    h = w = 32
    o, d = _rays_by_hand(box.camera, h, w)
    t_room = np.minimum(np.where(d[..., 1] < 0, -o[1] / np.minimum(d[..., 1], -1e-12), np.inf),
                        (9.0 - o[2]) / d[..., 2])
    # slab method for the box [x-a, x+a] x [0, 2b] x [z-c, z+c]
    lo = np.array([-0.3 - half[0], 0.0, 4.0 - half[2]])
    hi = np.array([-0.3 + half[0], 2 * half[1], 4.0 + half[2]])
    t1, t2 = (lo - o) / d, (hi - o) / d
    near, far = np.minimum(t1, t2).max(-1), np.maximum(t1, t2).min(-1)
    t_box = np.where((near <= far) & (near > 0), near, np.inf)
    _, depth = R.render(box, _uniform_textures(), h, w)
    assert (t_box < t_room).sum() > 20
    np.testing.assert_allclose(depth.numpy(), np.minimum(t_room, t_box), rtol=1e-5)
    # cylinder: side (in x-z) with 0 <= y <= height, or the top cap
    ox, oz = o[0] - 0.8, o[2] - 5.0
    a = d[..., 0] ** 2 + d[..., 2] ** 2
    b = 2 * (d[..., 0] * ox + d[..., 2] * oz)
    disc = b * b - 4 * a * (ox * ox + oz * oz - 0.25)
    side = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a)
    y = o[1] + side * d[..., 1]
    t_side = np.where((disc >= 0) & (side > 0) & (y >= 0) & (y <= 1.6), side, np.inf)
    cap = (1.6 - o[1]) / d[..., 1]
    px, pz = ox + cap * d[..., 0], oz + cap * d[..., 2]
    t_cap = np.where((cap > 0) & (px ** 2 + pz ** 2 <= 0.25), cap, np.inf)
    _, depth = R.render(cyl, _uniform_textures(), h, w)
    t_cyl = np.minimum(t_side, t_cap)
    assert (t_cyl < t_room).sum() > 20
    np.testing.assert_allclose(depth.numpy(), np.minimum(t_room, t_cyl), rtol=1e-5)


def test_lambertian_shading_of_lit_ground_unlit_wall_and_shadow():
    # light from the upper left: the ground gets cos = l_y / |l|, the back wall (normal -z)
    # cos = 0, and ground points whose path to the light meets the sphere are in shadow
    centre, radius = np.array([0.2, 0.8, 3.5]), 0.8
    scene = _room([[R.SPHERE, 0.2, 3.5, 0.8, 0, 0, 0, 2]], light=(-1.0, 0.7, 0.0))
    image, depth = R.render(scene, _uniform_textures(0.5), 48, 48)
    o, d = _rays_by_hand(scene.camera, 48, 48)
    p = o + depth.double().numpy()[..., None] * d
    on_ground = np.abs(p[..., 1]) < 1e-6
    on_wall = np.abs(p[..., 2] - 9.0) < 1e-6
    light = np.array([-1.0, 0.7, 0.0]) / math.hypot(1.0, 0.7)
    qc = p - centre
    b = (qc * light).sum(-1)
    disc = b * b - ((qc * qc).sum(-1) - radius ** 2)          # |l| = 1
    shadowed = on_ground & (disc > 0.02) & (-b > 0)
    lit = on_ground & (disc < -0.02)
    assert shadowed.sum() > 3 and lit.sum() > 50 and on_wall.sum() > 50
    img = image.numpy()
    np.testing.assert_allclose(img[:, lit], 0.5 * (0.3 + 0.7 * light[1]), atol=1e-6)  # ambient + diffuse
    np.testing.assert_allclose(img[:, on_wall], 0.5 * 0.3, atol=1e-6)                    # grazing light
    np.testing.assert_allclose(img[:, shadowed], 0.5 * 0.3, atol=1e-6)                   # in the shadow


def test_scenes_are_deterministic_by_seed_and_a_prefix_of_larger_sets():
    tex = torch.rand(20, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    a = R.render_scenes(3, 32, tex, seed=7)
    b = R.render_scenes(2, 32, tex, seed=7)
    c = R.render_scenes(2, 32, tex, seed=8)
    assert torch.equal(a.images[:2], b.images) and torch.equal(a.depth[:2], b.depth)
    assert not torch.equal(b.depth, c.depth)
    assert a.images.dtype == torch.uint8 and a.depth.dtype == torch.float32
    assert bool((a.depth > 0).all()) and bool(torch.isfinite(a.depth).all())


def test_rendered_sets_are_cached_and_reloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURALODE_CACHE", str(tmp_path))
    calls = []

    def fake_textures(split, *, source="auto", size=32):
        calls.append(split)
        return torch.rand(10, 3, 8, 8, generator=torch.Generator().manual_seed(len(split)))

    monkeypatch.setattr(R, "load_textures", fake_textures)
    first = R.load_depth_scenes("test", 2, 32, seed=0)
    files = list((tmp_path / "depth_scenes").glob("*.npz"))
    assert len(files) == 1 and calls == ["test"]
    again = R.load_depth_scenes("test", 2, 32, seed=0)
    assert calls == ["test"]  # served from the cache
    assert torch.equal(first.images, again.images) and torch.equal(first.depth, again.depth)
    train = R.load_depth_scenes("train", 2, 32, seed=0)
    assert not torch.equal(train.depth, first.depth)
    # a larger request extends the cached prefix; a smaller one is served from it
    more = R.load_depth_scenes("test", 3, 32, seed=0)
    assert torch.equal(more.depth[:2], first.depth)
    fresh = R.render_scenes(3, 32, fake_textures("test"), seed=1)
    assert torch.equal(more.depth, fresh.depth) and torch.equal(more.images, fresh.images)
    n_calls = len(calls)
    one = R.load_depth_scenes("test", 1, 32, seed=0)
    assert len(calls) == n_calls and torch.equal(one.depth, first.depth[:1])


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="split='val'"):
        R.load_depth_scenes("val", 2, 32)
    with pytest.raises(ValueError, match="textures must be"):
        R.render(_room([]), torch.zeros(3, 8, 8), 8, 8)
    with pytest.raises(ValueError, match="kind="):
        R.render(_room([[7, 0, 4, 1, 1, 1, 0, 0]]), _uniform_textures(), 8, 8)
