"""Compression settings: what a user writes in the config, and the zarr metadata it becomes.

"none" (or null) must become an explicit `"compressor": null`: when the key is omitted, TensorStore's zarr v2 driver
compresses with blosc (lz4, clevel 5), which is what the original harness measured by mistake. `"blosc-default"`
reproduces that omission on purpose.
"""

from __future__ import annotations

from typing import Any, Mapping

from ckptbench.core.errors import UserError

# Per compressor: the allowed keys with their (default, low, high) or allowed values. Ranges are TensorStore's zarr v2
# ones; defaults are TensorStore's, so "gzip" means level 1, the level T5X's `{"id": "gzip"}` gets.
_LEVELS: dict[str, tuple[int, int, int]] = {"gzip": (1, 0, 9), "zlib": (1, 0, 9), "bz2": (1, 1, 9),
                                             "zstd": (1, -131072, 22)}
BLOSC_CNAMES = ("blosclz", "lz4", "lz4hc", "snappy", "zlib", "zstd")
BLOSC_SHUFFLES = (-1, 0, 1, 2)  # -1 automatic, 0 none, 1 byte, 2 bit
COMPRESSION_IDS = ("none", *_LEVELS, "blosc", "blosc-default")


def _check_int(where: str, key: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{where}.{key}: expected a whole number from {low} to {high}, got {value!r}")
    if not low <= value <= high:
        raise UserError(f"{where}.{key}: {value} is out of range; use {low} to {high}")
    return value


def normalize(value: Any, where: str = "compression") -> dict[str, Any] | None:
    """Canonical form of a compression setting: None for raw, else a dict with every field set."""
    if value is None or value == "none":
        return None
    if isinstance(value, str):
        value = {"id": value}
    if not isinstance(value, dict) or not isinstance(value.get("id"), str):
        raise UserError(f"{where}: expected \"none\", one of {', '.join(COMPRESSION_IDS)}, "
                        f"or an object like {{\"id\": \"gzip\", \"level\": 6}}; got {value!r}")
    cid = value["id"]
    options = {k: v for k, v in value.items() if k != "id"}
    if cid == "none":
        if options:
            raise UserError(f"{where}: \"none\" takes no options; remove {sorted(options)}")
        return None
    if cid == "blosc-default":
        if options:
            raise UserError(f"{where}: \"blosc-default\" takes no options; use \"blosc\" to set them")
        return {"id": "blosc-default"}
    if cid in _LEVELS:
        default, low, high = _LEVELS[cid]
        _reject_unknown(where, cid, options, {"level"})
        return {"id": cid, "level": _check_int(where, "level", options.get("level", default), low, high)}
    if cid == "blosc":
        _reject_unknown(where, cid, options, {"cname", "clevel", "shuffle"})
        cname = options.get("cname", "lz4")
        if cname not in BLOSC_CNAMES:
            raise UserError(f"{where}.cname: {cname!r} is not a blosc codec; use one of {', '.join(BLOSC_CNAMES)}")
        shuffle = options.get("shuffle", -1)
        if isinstance(shuffle, bool) or not isinstance(shuffle, int) or shuffle not in BLOSC_SHUFFLES:
            raise UserError(f"{where}.shuffle: {shuffle!r} is not valid; use -1 (auto), 0 (none), 1 (byte) or 2 (bit)")
        return {"id": "blosc", "cname": cname, "clevel": _check_int(where, "clevel", options.get("clevel", 5), 0, 9),
                "shuffle": shuffle}
    import difflib

    close = difflib.get_close_matches(cid, COMPRESSION_IDS, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; use one of {', '.join(COMPRESSION_IDS)}"
    raise UserError(f"{where}: unknown compression id {cid!r}{hint}")


def _reject_unknown(where: str, cid: str, options: dict, allowed: set[str]) -> None:
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise UserError(f"{where}: {cid} has no option {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")


def label(compression: Mapping[str, Any] | None) -> str:
    """Short human label, e.g. 'none', 'gzip-1', 'blosc-lz4-5'."""
    if compression is None:
        return "none"
    cid = compression["id"]
    if "level" in compression:
        return f"{cid}-{compression['level']}"
    if cid == "blosc":
        shuffle = {-1: "", 0: "-noshuffle", 1: "-shuffle", 2: "-bitshuffle"}[compression["shuffle"]]
        return f"blosc-{compression['cname']}-{compression['clevel']}{shuffle}"
    return cid


def apply_to_zarr_v2_metadata(metadata: dict[str, Any], compression: dict[str, Any] | None) -> dict[str, Any]:
    """Return metadata with the compressor set (null for raw), or deliberately omitted (blosc-default)."""
    if compression is not None and compression["id"] == "blosc-default":
        return metadata
    return {**metadata, "compressor": None if compression is None else dict(compression)}


_ZARR3_SHUFFLE = {-1: "shuffle", 0: "noshuffle", 1: "shuffle", 2: "bitshuffle"}


def zarr3_codecs(compression: dict[str, Any] | None, itemsize: int, where: str = "compression") -> list[dict[str, Any]]:
    """The bytes-to-bytes codecs (after `bytes`) of a zarr3 array; zarr3 has no bz2 or zlib codec."""
    if compression is None:
        return []
    cid = compression["id"]
    if cid in ("gzip", "zstd"):
        return [{"name": cid, "configuration": {"level": compression["level"]}}]
    if cid == "blosc":
        return [{"name": "blosc", "configuration": {
            "cname": compression["cname"], "clevel": compression["clevel"],
            "shuffle": _ZARR3_SHUFFLE[compression["shuffle"]], "typesize": itemsize, "blocksize": 0}}]
    raise UserError(f"{where}: zarr3 has no {cid!r} codec; use none, gzip, zstd or blosc, or format \"zarr2\"")
