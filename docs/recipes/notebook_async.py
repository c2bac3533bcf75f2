# ruff: noqa: B018, F704 - a cell's last bare expression is displayed; cells may await
# %% [markdown]
# # Surface normals in a notebook, with `await`
#
# Jupyter runs every cell on the kernel's event loop and lets a cell `await` at the top level,
# so this notebook uses `clipnormals.AsyncClient` directly. While a request waits for the
# quota or for the server, the loop keeps serving everything else: widgets, progress bars,
# tasks started in other cells. (The blocking `clipnormals.Client` would hold the loop until
# the whole call returns.)
#
# Cells in the "percent" format: open this file in Jupyter (with jupytext), VS Code or
# PyCharm and run it cell by cell. It uses the API with the key in `CLIPDROP_API_KEY`; start
# Jupyter with `CLIPNORMALS_RECIPE_EMULATOR=1` (or set `EMULATOR = True` below) to use a local
# emulator instead: no key, no network, synthetic maps.

# %%
import os
from pathlib import Path

from PIL import Image

import clipnormals

EMULATOR = os.environ.get("CLIPNORMALS_RECIPE_EMULATOR") == "1"
SAMPLES = Path(clipnormals.__file__).parent / "samples"
OUT = Path("notebook-out")
OUT.mkdir(exist_ok=True)

# %%
if EMULATOR:
    from clipnormals.emulator import EmulatorConfig, start_in_thread

    # An emulator on a loopback port, with the real quota (60 a minute) and 100 credits.
    server = start_in_thread(EmulatorConfig(keys={"notebook": 100}))
    client = clipnormals.AsyncClient(api_key="notebook", base_url=server.url)
else:
    client = clipnormals.AsyncClient()  # one client for the whole notebook
client

# %% [markdown]
# One portrait. The map is decoded on first use; `normals` and `mask` are read-only arrays.

# %%
nm = await client.surface_normals(SAMPLES / "astronaut.png")
person = f"person: {nm.mask.mean():.0%} of the frame"
print(nm, nm.normals.shape, nm.normals.dtype, person)
print(client.credits)

# %% [markdown]
# The API does not document the signs of X and Y. The outline of the person tells them:
# there, normals point outwards.

# %%
found = nm.detect_convention()
print(found)
if found.reliable:  # else keep the default, +X right and +Y up
    nm = nm.with_convention(flip_x=found.flip_x, flip_y=found.flip_y)

# %% [markdown]
# Pictures: the map, a clay render, the photo relit by a warm light from the right.

# %%
key_light = clipnormals.DirectionalLight((0.8, 0.3, 0.55), color=(1.0, 0.9, 0.75))
nm.preview().save(OUT / "normals.png")
nm.shaded().save(OUT / "clay.png")
photo = Image.open(SAMPLES / "astronaut.png").convert("RGB")
relit = nm.relight(photo, light=key_light, ambient=0.2, mode="ratio")
relit.save(OUT / "relit.png")
relit

# %% [markdown]
# Many portraits: `map` yields results in completion order, within the quota. The cell
# awaits between requests, so the kernel stays responsive while it runs.

# %%
portraits = sorted(SAMPLES.glob("*.png"))
maps = {}
async for item in client.map(portraits):
    print(item.source.name, "ok" if item.ok else item.error)
    if item.ok:
        maps[item.source.name] = item.unwrap()
sheet = clipnormals.contact_sheet(
    [(SAMPLES / name, m) for name, m in maps.items()],
    names=list(maps),
    path=OUT / "sheet.png",
)
sheet

# %%
print(client.stats)
await client.aclose()
if EMULATOR:
    server.stop()
