"""The kernel modules the guest image carries, and loading one with its dependencies.

The image's `/lib/modules/<release>/modules.dep` (`artifacts.kmod.modules_dep`, depmod's format)
names each module's file and every dependency, the one to load last first. The agent's
`MODULE_LOAD` is `finit_module` of one file, so loading walks that list from its end, as
modprobe does; a module already loaded is no error.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from dmalab.machine.agent import AgentClient, AgentError


def module_name(path: str) -> str:
    """`kernel/drivers/gpu/drm/vgem/vgem.ko` -> `vgem` (as /proc/modules spells it)."""
    return path.rsplit("/", 1)[-1].split(".ko")[0].replace("-", "_")


@dataclass(frozen=True)
class ImageModules:
    release: str
    #: module name -> its file, then its dependencies' files (the one to load last first)
    files: dict[str, list[str]]

    def path(self, name: str) -> str:
        return f"/lib/modules/{self.release}/{self.files[name][0]}"


async def image_modules(agent: AgentClient) -> ImageModules:
    release = (await agent.read_file("/proc/sys/kernel/osrelease", 256)).decode().strip()
    deps = (await agent.read_file(f"/lib/modules/{release}/modules.dep", 1 << 20)).decode()
    files = {}
    for line in deps.splitlines():
        if ":" in line:
            path, rest = line.split(":", 1)
            files[module_name(path)] = [path, *rest.split()]
    return ImageModules(release, files)


async def load_module(agent: AgentClient, name: str) -> bool:
    """Load `name` and what it needs; False when the image does not carry it (not a module of
    this kernel, or left out of the image)."""
    mods = await image_modules(agent)
    if name not in mods.files:
        return False
    path, *deps = mods.files[name]
    for file in [*reversed(deps), path]:
        try:
            await agent.module_load(f"/lib/modules/{mods.release}/{file}")
        except AgentError as exc:
            if exc.errno != errno.EEXIST:
                raise
    return True
