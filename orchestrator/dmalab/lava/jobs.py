"""LAVA job definitions for dmalab, as plain data (written as YAML by the CLI).

- `shard_job`: the full, host-checked suite, one job per shard, on LAVA's `docker` device type:
  LAVA starts the runner image (artifacts/runner_image.py) and its test shell runs
  `dmalab run --shard I/N` and `dmalab lava results`. LAVA owning QEMU would not fit dmalab's
  checks (RAM shared by fd, the agent socket, a QEMU per topology), so dmalab owns it inside.
- `smoke_job`: a guest-side check on LAVA's `qemu` device type: LAVA boots dmalab's QEMU with
  a topology's devices and vIOMMU and dmalab's guest image; its test shell checks that every
  ncdma device probed and answers the guest agent's DEVICE_INFO (an ioctl that reads the
  device's identity registers through the driver).

Every job validates against LAVA's own schema (`lava_common.schemas.validate`, strict): the
tests check it with Debian's lava-common (artifacts/lava_packages.py).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dmalab.machine.qemu_argv import Boot, qemu_argv
from dmalab.machine.topology import Topology
from dmalab.spec import agent as agent_spec

#: Where shard jobs keep their results inside the container: RESULTS_ROOT/<commit>/shard-I-of-N,
#: so a volume a lab mounts there collects every shard's directory for `dmalab report --merge`.
RESULTS_ROOT = "/dmalab-results"
#: The runner image's shell prompt: root on LAVA's container hostname, `lava`.
DOCKER_PROMPT = "root@lava:"
#: The guest's busybox shell prompt.
GUEST_PROMPT = "# "
REPLY_FLAG = agent_spec.HeaderFlags.flags["REPLY"]
TEST_DEFINITION_FORMAT = "Lava-Test Test Definition 1.0"
#: Options LAVA's qemu device type sets itself (-m from `context.memory`, the console with
#: -nographic) or that the job's deploy gives (kernel, initrd, command line).
_LAVA_OWNS = {"-m", "-serial", "-kernel", "-initrd", "-append", "-display"}


def _minutes(n: int) -> dict[str, int]:
    return {"minutes": max(1, n)}


def _inline(name: str, description: str, steps: list[str]) -> dict[str, Any]:
    """An inline test definition running `steps` in the test shell."""
    return {
        "from": "inline",
        "name": name,
        "path": f"inline/{name}.yaml",
        "repository": {
            "metadata": {
                "format": TEST_DEFINITION_FORMAT,
                "name": name,
                "description": description,
            },
            "run": {"steps": steps},
        },
    }


@dataclass(frozen=True)
class ShardJobs:
    """What every shard job of one run shares."""

    count: int
    image: str  # the runner image, e.g. localhost/dmalab-runner:<commit>
    local: bool = True  # the image is on the worker already (LAVA does not pull it)
    run_args: tuple[str, ...] = ()  # more `dmalab run` options (-k, --matrix, -t ...)
    minutes: int = 60  # the test shell's timeout; the job gets a margin on top
    name: str = "dmalab"
    priority: str = "medium"
    visibility: str = "public"
    tags: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)


def shard_steps(index: int, jobs: ShardJobs) -> list[str]:
    """The test shell's commands for shard `index` of `jobs.count`. A run that fails still has
    its results recorded; a run that wrote none records a failed verdict."""
    # $DMALAB_COMMIT: the runner image's commit (left to the shell to expand).
    results = f'"{RESULTS_ROOT}/${{DMALAB_COMMIT:-unknown}}/shard-{index}-of-{jobs.count}"'
    run = ["dmalab", "run", "--accel", "tcg", "--shard", f"{index}/{jobs.count}", *jobs.run_args]
    return [
        "dmalab doctor",
        f"{shlex.join(run)} --results {results} || true",
        f"dmalab lava results {results} || lava-test-case dmalab-verdict --result fail",
    ]


def shard_job(index: int, jobs: ShardJobs) -> dict[str, Any]:
    """The job of shard `index` (1-based) on the docker device type."""
    shard = f"{index}/{jobs.count}"
    name = f"{jobs.name}-shard-{index}-of-{jobs.count}"
    image: Any = {"name": jobs.image, "local": True} if jobs.local else jobs.image
    job: dict[str, Any] = {
        "device_type": "docker",
        "job_name": f"{jobs.name} shard {shard}",
        "priority": jobs.priority,
        "visibility": jobs.visibility,
        "timeouts": {
            "job": _minutes(jobs.minutes + 15),
            "action": _minutes(jobs.minutes + 5),
            "connection": _minutes(2),
        },
        "metadata": {**jobs.metadata, "dmalab.shard": shard, "dmalab.image": jobs.image},
        "actions": [
            {"deploy": {"to": "docker", "image": image, "timeout": _minutes(10)}},
            {
                "boot": {
                    "method": "docker",
                    "command": "bash",
                    "prompts": [DOCKER_PROMPT],
                    "timeout": _minutes(5),
                }
            },
            {
                "test": {
                    "timeout": _minutes(jobs.minutes),
                    "definitions": [
                        _inline(name, f"dmalab run --shard {shard}", shard_steps(index, jobs))
                    ],
                }
            },
        ],
    }
    if jobs.tags:
        job["tags"] = list(jobs.tags)
    return job


def smoke_options(topology: Topology, firmware_dirs: list[str]) -> list[str]:
    """`context.extra_options`: the topology's QEMU command line as dmalab builds it, without
    the agent port and what LAVA's qemu device type gives itself, each option with its value
    as one entry (LAVA appends them verbatim)."""
    # LAVA gives the kernel, initrd and command line (the deploy's image_arg): dropped below.
    argv = qemu_argv(topology, Boot(Path("KERNEL"), Path("INITRD"), ""), accel="tcg", agent=False)
    pairs: list[str] = [f"-L {d}" for d in firmware_dirs]
    i = 0
    while i < len(argv):
        word = argv[i]
        takes_value = i + 1 < len(argv) and not argv[i + 1].startswith("-")
        if word == "-nodefaults":
            i += 1  # LAVA's -nographic needs QEMU's default serial console
            continue
        if takes_value:
            if word not in _LAVA_OWNS:
                pairs.append(f"{word} {argv[i + 1]}")
            i += 2
        else:
            pairs.append(word)
            i += 1
    # LAVA always adds a NIC; dmalab's QEMU is built without its boot ROMs.
    pairs.append("-global virtio-net-pci.romfile=")
    return pairs


def selftest_request(dev: int) -> bytes:
    """The agent request the smoke job's self-test sends (DEVICE_INFO of /dev/ncdma<dev>)."""
    op = agent_spec.OP_BY_NAME["DEVICE_INFO"]
    return agent_spec.encode_request(op, dev + 1, {"dev": dev})


def selftest_reply_head(dev: int) -> bytes:
    """The header of a good reply: status 0 (the driver's NCDMA_IOC_INFO succeeded) and the
    whole reply's length."""
    op = agent_spec.OP_BY_NAME["DEVICE_INFO"]
    return agent_spec.encode_header(op.code, dev + 1, op.reply.sizeof(), flags=REPLY_FLAG)


def smoke_steps(devices: int) -> list[str]:
    """The guest test shell's commands: the devices probed, then each one's self-test."""
    steps = [
        "lava-test-case ncdma-driver-loaded --shell grep -q '^ncdma ' /proc/modules",
        f"lava-test-case ncdma-devices-probed --shell test \"$(ls /dev | grep -c '^ncdma[0-9]')\" "
        f"-eq {devices}",
    ]
    for dev in range(devices):
        request = "".join(f"\\{b:03o}" for b in selftest_request(dev))
        want = selftest_reply_head(dev).hex()
        got = (f"printf '{request}' | /sbin/dmalab-agent - 2>/dev/null | "
               f"head -c {len(selftest_reply_head(dev))} | od -An -tx1 | tr -d ' \\n'")  # fmt: skip
        steps.append(f'lava-test-case ncdma{dev}-selftest --shell test "$({got})" = {want}')
    return steps


@dataclass(frozen=True)
class SmokeJob:
    topology: Topology
    kernel_url: str
    initrd_url: str
    cmdline: str
    firmware_dirs: tuple[str, ...] = ()
    name: str = "dmalab"
    minutes: int = 10
    visibility: str = "public"


def smoke_job(s: SmokeJob) -> dict[str, Any]:
    """The guest-side smoke job on the qemu device type (TCG: `no_kvm`)."""
    topo = s.topology
    devices = len(topo.devices)
    return {
        "device_type": "qemu",
        "job_name": f"{s.name} guest smoke {topo.name} ({topo.arch})",
        "priority": "medium",
        "visibility": s.visibility,
        "timeouts": {
            "job": _minutes(s.minutes),
            "action": _minutes(s.minutes - 1),
            "connection": _minutes(2),
        },
        "context": {
            # QEMU's names, which LAVA's template takes too: its validation runs
            # qemu-system-<arch> --version, and there is no qemu-system-amd64.
            "arch": topo.arch,
            "no_kvm": True,
            "netdevice": "none",
            "memory": topo.machine.memory_mib,
            "extra_options": smoke_options(topo, list(s.firmware_dirs)),
        },
        "metadata": {"dmalab.topology": topo.name},
        "actions": [
            {
                "deploy": {
                    "to": "tmpfs",
                    "timeout": _minutes(3),
                    "images": {
                        "kernel": {
                            "url": s.kernel_url,
                            "image_arg": f'-kernel {{kernel}} -append "{s.cmdline}"',
                        },
                        "ramdisk": {
                            "url": s.initrd_url,
                            "image_arg": "-initrd {ramdisk}",
                            "format": "cpio.newc",
                            "overlays": {"lava": True},
                        },
                    },
                }
            },
            {
                "boot": {
                    "method": "qemu",
                    "media": "tmpfs",
                    "timeout": _minutes(3),
                    "auto_login": {"login_prompt": "DMALAB-READY", "username": ""},
                    "prompts": [GUEST_PROMPT],
                }
            },
            {
                "test": {
                    "timeout": _minutes(3),
                    "definitions": [
                        _inline(
                            f"{s.name}-guest-smoke",
                            "ncdma probe and self-test",
                            smoke_steps(devices),
                        )
                    ],
                }
            },
        ],
    }
