"""What a run's seed does to the bytes scenarios write, and what descriptor cookies say.

Pattern constants in a scenario are tags: XORed with the run's salt (`seed_salt`) they become
the CPU pattern seeds and FILL words of this run. Every descriptor a scenario submits carries a
cookie naming its step (`step_cookie`); the driver's own maintenance descriptors carry
`COOKIE_DRIVER | reason << 32 | handle` (`spec.agent.CookieReason`). Nothing here talks to a
machine.
"""

from __future__ import annotations

from dmalab.spec import agent as spec

#: The seed `dmalab run` uses unless told otherwise: its salt is 0, so its bytes are the
#: scenarios' constants as written.
DEFAULT_SEED = 1
COOKIE_TAG = 0x5C
COOKIE_DRIVER = spec.COOKIE_DRIVER
_MASK64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    """splitmix64's finaliser: every input bit moves every output bit."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def seed_salt(seed: int) -> int:
    """What a run's seed XORs into every pattern tag. 0 for the default seed, so that its bytes
    are the scenarios' constants as written and its results compare with older results files;
    XOR keeps distinct tags distinct within a run."""
    return _mix64(seed) ^ _mix64(DEFAULT_SEED)


def salted(tag: int, salt: int) -> int:
    """The 64-bit value a scenario's constant `tag` stands for under `salt`."""
    return (tag ^ salt) & _MASK64


def fill_bytes(word: int, n: int) -> bytes:
    """What FILL with `word` writes: byte i of the destination is byte i mod 8 of the word."""
    return (word.to_bytes(8, "little") * (n // 8 + 1))[:n]


def step_cookie(step: int, index: int = 0) -> int:
    """The cookie of the `index`-th descriptor a scenario submits at `step`."""
    return COOKIE_TAG << 56 | (step & 0xFFFF) << 16 | (index & 0xFFFF)


def cookie_step(cookie: int) -> int | None:
    """The step whose descriptor carries `cookie` (None: not a scenario descriptor)."""
    return cookie >> 16 & 0xFFFF if cookie >> 56 == COOKIE_TAG else None


def describe_cookie(cookie: int) -> tuple[str, int | None, str]:
    """("step", step, text) for a scenario descriptor, ("driver", None, text) for the driver's
    maintenance, ("other", None, text) otherwise."""
    step = cookie_step(cookie)
    if step is not None:
        return "step", step, f"descriptor {cookie & 0xFFFF} of step {step}"
    if cookie & COOKIE_DRIVER:
        number = cookie >> 32 & 0x7FFF_FFFF
        reason = spec.CookieReason.decmapping.get(number, f"reason {number}")
        return "driver", None, f"driver {reason} maintenance (handle {cookie & 0xFFFF_FFFF})"
    return "other", None, f"cookie {cookie:#x}"
