"""Captions that state what a clip does and how: "a person walks forward slowly, then turns left".

Every parameter is stated except a normal speed, which is said only sometimes ("walks forward" is a normal
walk); the subject, the order of words and the joining words vary.
"""

from __future__ import annotations

import numpy as np

from llamagen.data.motion.clips import Segment

SUBJECTS = ("a person", "someone", "the person", "a man", "a woman", "a figure")
JOINERS = (", then ", " and then ", ", after that ", ", and next ")
ADVERBS = {"slow": ("slowly", "at a slow pace"), "normal": ("at a normal pace", "at a steady pace"),
           "fast": ("quickly", "fast")}  # fmt: skip
TIMES = {1: "", 2: " twice", 3: " three times"}
NUMBERS = {1: "a", 2: "two", 3: "three"}


def _speed(speed: str, rng: np.random.Generator, say_normal: float = 0.3) -> str:
    if speed == "normal" and rng.random() >= say_normal:
        return ""
    return ADVERBS[speed][rng.integers(2)]


def _join(*words: str) -> str:
    return " ".join(word for word in words if word)


def phrase(segment: Segment, rng: np.random.Generator) -> str:
    """The verb phrase of one action, in one of a few word orders."""
    p, pick = segment.params, int(rng.integers(2))
    if segment.action == "walk":
        way = "forward" if p["direction"] == "forward" else ("backwards", "backward")[pick]
        speed = _speed(p["speed"], rng)
        return _join(speed, "walks", way) if speed.endswith("ly") and pick else _join("walks", way, speed)
    if segment.action == "run":
        speed = _speed(p["speed"], rng)
        return ("jogs slowly" if p["speed"] == "slow" else "runs fast") if pick else _join("runs", speed)
    if segment.action == "jump":
        where = "in place" if p["direction"] == "in place" else "forward"
        if pick:
            return _join("jumps", "high" if p["size"] == "large" else "a little", where) + TIMES[p["count"]]
        kind = "high" if p["size"] == "large" else "small"
        noun = "jump" if p["count"] == 1 else "jumps"
        return _join("does", NUMBERS[p["count"]], kind, noun, where)
    if segment.action == "wave":
        hand = "both hands" if p["side"] == "both" else f"the {p['side']} hand"
        how = ("widely", "energetically")[pick] if p["size"] == "large" else ("gently", "a little")[pick]
        return _join("waves", how, "with", hand) if pick else _join("waves with", hand, how)
    if segment.action == "squat":
        depth, speed = "deep" if p["size"] == "large" else "shallow", _speed(p["speed"], rng)
        if pick:
            squats = "squat" if p["count"] == 1 else "squats"
            return _join("does", NUMBERS[p["count"]], depth, squats, speed)
        return _join("squats", "deeply" if p["size"] == "large" else "halfway", speed) + TIMES[p["count"]]
    if segment.action == "kick":
        height = "high" if p["size"] == "large" else "low"
        leg = f"the {p['side']} {('leg', 'foot')[pick]}"
        return _join("kicks", height, "with", leg) if pick else _join("does a", height, "kick with", leg)
    if segment.action == "turn":
        if p["angle"] == 90:
            return f"turns {('', 'to the ')[pick]}{p['side']}"
        return ("turns around to the " if pick else "makes a half turn to the ") + p["side"]
    if segment.action == "sit":
        speed = _speed(p["speed"], rng)
        return _join(speed, "sits down") if speed.endswith("ly") and pick else _join("sits down", speed)
    raise ValueError(f"unknown action {segment.action!r}")


def describe(segments: list[Segment], rng: np.random.Generator) -> str:
    """A caption of the whole clip, its actions in order."""
    text = SUBJECTS[rng.integers(len(SUBJECTS))] + " " + phrase(segments[0], rng)
    for segment in segments[1:]:
        text += JOINERS[rng.integers(len(JOINERS))] + phrase(segment, rng)
    return text
