"""Shards' results.json files joined into the results.json of the whole run.

`dmalab run --shard I/N` on N machines runs the suite once between them (docs/cli.md); joining
their files in shard order gives the unsharded run's results in its order. Only shards of one
build and one set of run options join: a different QEMU build, guest image or dmalab commit
would make the merged verdicts a mixture, and two shards holding the same result (or the same
shard twice) would count it twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dmalab.errors import BadInput
from dmalab.scenarios.compare_results import result_key, results_of

#: meta keys that say what ran: shards of one run agree on all of them.
RUN_OPTIONS = ("seed", "scenarios", "policies", "matrix", "topologies", "keyword", "kernel")


def shard_of(doc: Mapping[str, Any], file: str) -> tuple[int, int]:
    """(I, N) from `meta.shard` ("I/N"); an unsharded run is shard 1 of 1."""
    meta = doc.get("meta") or {}
    text = meta.get("shard", "1/1") if isinstance(meta, Mapping) else "1/1"
    try:
        index, count = (int(x) for x in str(text).split("/"))
    except ValueError:
        raise BadInput(f"{file}: meta.shard is not I/N: {text!r}") from None
    return index, count


def build_of(doc: Mapping[str, Any]) -> dict[str, Any]:
    """What built a run (results.json meta, dmalab.provenance): the QEMU build, the dmalab
    commit and each topology's guest image; what a file does not record is left out."""
    meta = doc.get("meta") if isinstance(doc.get("meta"), Mapping) else {}
    out: dict[str, Any] = {}
    qemu = meta.get("qemu")
    if isinstance(qemu, Mapping) and qemu.get("build_key"):
        out["qemu.build_key"] = qemu["build_key"]
    if meta.get("dmalab_commit"):
        out["dmalab_commit"] = meta["dmalab_commit"]
    guest = meta.get("guest")
    for topology, image in guest.items() if isinstance(guest, Mapping) else ():
        if isinstance(image, Mapping) and image.get("image_key"):
            out[f"guest.{topology}.image_key"] = image["image_key"]
    return out


def merge(docs: Sequence[tuple[dict[str, Any], str]]) -> dict[str, Any]:
    """The whole run's results.json from its shards' (document, file name) pairs, in any order;
    BadInput (one line naming both files) for shards of different builds or run options, a
    shard given twice, overlapping results, or shards of different splits."""
    if not docs:
        raise BadInput("--merge: no results given")
    shards = sorted(((shard_of(doc, name), doc, name) for doc, name in docs), key=lambda s: s[0])
    (_, count), first, first_name = shards[0]
    built: dict[str, tuple[Any, str]] = {}
    seen: dict[Any, str] = {}
    index_seen: dict[int, str] = {}
    for (index, n), doc, name in shards:
        if n != count:
            raise BadInput(f"--merge: {name} is a shard of {n}, {first_name} of {count}")
        if index in index_seen:
            raise BadInput(f"--merge: {name} and {index_seen[index]} are both shard {index}/{n}")
        index_seen[index] = name
        for key, value in build_of(doc).items():
            other = built.setdefault(key, (value, name))
            if other[0] != value:
                raise BadInput(f"--merge: {other[1]} and {name} are of different builds "
                               f"({key} {other[0]} vs {value})")  # fmt: skip
        meta, first_meta = doc.get("meta") or {}, first.get("meta") or {}
        for key in RUN_OPTIONS:
            if meta.get(key) != first_meta.get(key):
                raise BadInput(f"--merge: {first_name} and {name} are not shards of one run "
                               f"(meta.{key} differs)")  # fmt: skip
        for r in results_of(doc):
            key = result_key(r)
            if key in seen:
                raise BadInput(f"--merge: {seen[key]} and {name} overlap (both hold {key})")
            seen[key] = name
    return _joined(shards, count)


def _joined(
    shards: list[tuple[tuple[int, int], dict[str, Any], str]], count: int
) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    merged_meta: dict[str, Any] = {"of": count, "shards": [], "hosts": {}}
    results: list[dict[str, Any]] = []
    machines: list[dict[str, Any]] = []
    walls: list[float] = []
    for (index, _), doc, name in shards:
        shard = f"{index}/{count}"
        doc_meta = dict(doc.get("meta") or {})
        host = doc_meta.pop("host", None)
        doc_meta.pop("shard", None)
        for key, value in doc_meta.items():  # per-topology maps join; the rest is shared
            if isinstance(value, dict) and isinstance(meta.get(key), dict):
                meta[key] = {**meta[key], **value}
            else:
                meta.setdefault(key, value)
        merged_meta["shards"].append(
            {"shard": shard, "file": name, "results": len(results_of(doc))}
        )
        if host is not None:
            merged_meta["hosts"][shard] = host
        results += results_of(doc)
        timing = doc.get("timing") or {}
        machines += [{**m, "shard": shard} for m in timing.get("machines") or ()]
        if isinstance(timing.get("wall_seconds"), int | float):
            walls.append(float(timing["wall_seconds"]))
    merged_meta["missing"] = [
        f"{i}/{count}" for i in range(1, count + 1) if i not in {s[0][0] for s in shards}
    ]
    meta["merged"] = merged_meta
    # The shards ran side by side: the run took as long as its slowest shard.
    timing = {"wall_seconds": max(walls, default=0.0), "shard_wall_seconds": walls,
              "machines": machines}  # fmt: skip
    return {"meta": meta, "results": results, "timing": timing}
