"""How the suite is split between pytest-xdist workers (``-n 2``).

A worker is a process with its own session fixtures, so a session server used by two workers starts twice. Each test
module stays on one worker (its module-scoped servers start once), and the modules that use one of the expensive
session fixtures below share a worker: the server over every family's repository (about 200 s to export and start,
seen in a two-worker run) and the trained default model's. xdist's own ``--dist loadgroup`` would do this with
marks, but it renames node ids in a way pytest 9 no longer sees, so the split is made here, from each module's
source.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from xdist.scheduler import LoadScopeScheduling

# Group name: the session fixtures whose modules run on one worker. Listed longest first: they run first, so that no
# long group starts last while the other worker has nothing left.
SHARED_FIXTURE_GROUPS = {
    "families": ("family_server", "sd3_exports", "flux_exports", "sdxl_dirs", "inpainting_exports"),
    "one_image": ("one_image_server",),
    "shapes": ("shapes_server", "shapes_repository", "shapes_diffusers_pipeline"),
}


@functools.cache
def group_of(module: Path) -> str | None:
    """The shared-fixture group of a test module, from the fixture names its source uses."""
    source = module.read_text(encoding="utf-8")
    for group, fixtures in SHARED_FIXTURE_GROUPS.items():
        if any(re.search(rf"\b{name}\b", source) for name in fixtures):
            return group
    return None


def run_order(module: Path) -> int:
    """The modules of the shared groups first, in their order, then the rest as collected (a stable sort key)."""
    group = group_of(module)
    return list(SHARED_FIXTURE_GROUPS).index(group) if group else len(SHARED_FIXTURE_GROUPS)


class GroupScheduling(LoadScopeScheduling):
    """Hands out whole modules, and whole shared groups, as units of work."""

    def _split_scope(self, nodeid: str) -> str:
        module = nodeid.split("::", 1)[0]
        return group_of(Path(self.config.rootpath, module)) or module
