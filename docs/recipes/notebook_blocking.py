# ruff: noqa: B018 - a cell's last bare expression is what the notebook displays
# %% [markdown]
# # Surface normals in a notebook, with the blocking `Client`
#
# Cells in the "percent" format: open this file in Jupyter (with jupytext), VS Code or
# PyCharm and run it cell by cell, or run it whole with `python notebook_blocking.py`.
# `clipnormals.Client` runs the async client on an event loop of its own, so it works the
# same inside Jupyter's running loop and in a plain script.
#
# It uses the API with the key in `CLIPDROP_API_KEY`; set `CLIPNORMALS_RECIPE_EMULATOR=1`
# (or pass `--emulator`) to use a local emulator instead: no key, no network, synthetic maps.

# %%
import os
import sys
from pathlib import Path

from PIL import Image

import clipnormals

EMULATOR = os.environ.get("CLIPNORMALS_RECIPE_EMULATOR") == "1" or "--emulator" in sys.argv
SAMPLES = Path(clipnormals.__file__).parent / "samples"
OUT = Path("notebook-out")
OUT.mkdir(exist_ok=True)

# %%
if EMULATOR:
    from clipnormals.emulator import EmulatorConfig, start_in_thread

    # An emulator on a loopback port, with the real quota (60 a minute) and 100 credits.
    server = start_in_thread(EmulatorConfig(keys={"notebook": 100}))
    client = clipnormals.Client(api_key="notebook", base_url=server.url)
else:
    client = clipnormals.Client()  # one client for the whole notebook
client

# %% [markdown]
# One portrait. The map is decoded on first use; `normals` and `mask` are read-only arrays.

# %%
nm = client.surface_normals(SAMPLES / "astronaut.png")
print(nm, nm.normals.shape, nm.normals.dtype, f"person: {nm.mask.mean():.0%} of the frame")
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
# Many portraits: `map` yields results in completion order, within the quota.

# %%
portraits = sorted(SAMPLES.glob("*.png"))
maps = {}
for item in client.map(portraits):
    print(item.source.name, "ok" if item.ok else item.error)
    if item.ok:
        maps[item.source.name] = item.unwrap()
sheet = clipnormals.contact_sheet(
    [(SAMPLES / name, m) for name, m in maps.items()], names=list(maps), path=OUT / "sheet.png"
)
sheet

# %%
print(client.stats)
client.close()
if EMULATOR:
    server.stop()
