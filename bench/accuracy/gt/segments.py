"""Reviewers' verdicts per draft part -> review.yaml's split/drop/persons.

A verdict file maps a draft track to consecutive segments, each one person, "none" (no person) or
"unknown": ``"3": [{from: 0, to: 29, person: P1}, {from: 30, to: 324, person: P2}]``. Segments after the
first become split points; "none" and "unknown" parts are dropped (unknown ones are listed for a second
look)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml


def merge_verdicts(paths: list[Path]) -> dict[str, list[dict[str, Any]]]:
    verdicts: dict[str, list[dict[str, Any]]] = {}
    for path in paths:
        data = yaml.safe_load(path.read_text()) or {}
        for part, segments in data.items():
            verdicts[str(part)] = sorted(segments, key=lambda s: int(s["from"]))
    return verdicts


def to_review(verdicts: dict[str, list[dict[str, Any]]]) -> tuple[dict[str, Any], list[str]]:
    split: dict[str, list[int]] = {}
    drop: list[str] = []
    persons: dict[str, list[str]] = defaultdict(list)
    unknown: list[str] = []
    for track, segments in sorted(verdicts.items(), key=lambda kv: int(kv[0])):
        cuts = [int(s["from"]) for s in segments[1:]]
        if cuts:
            split[track] = cuts
        for k, seg in enumerate(segments):
            part = track if k == 0 else f"{track}@{int(seg['from'])}"
            person = str(seg["person"])
            if person == "none":
                drop.append(part)
            elif person == "unknown":
                drop.append(part)
                unknown.append(f"{part} ({seg['from']}-{seg['to']})")
            else:
                persons[person].append(part)
    return {"split": split, "drop": drop, "persons": dict(sorted(persons.items()))}, unknown
