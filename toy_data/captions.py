"""Captions of the tiny images: the attribute words each image has, and how often images match a caption.

A caption is a string of phrases of ``VOCAB`` (``refdiff.labels.tokenize``), e.g. "thick left
vertical bar". The words come in ``GROUPS`` of which an image has at most one each: its class
name, its thickness ("thin", "thick"), and where its stroke's box sits ("left" / "right" of the
image's centre column, "top" / "bottom" of its centre row). The toy CLIP (refdiff/clip.py,
docs/clip.md) is trained on these words, and ``caption_match`` judges samples against a caption.
"""
import numpy as np

from refdiff.labels import tokenize

from . import images

GROUPS = {"class": images.CLASS_NAMES, "thickness": ("thin", "thick"), "horizontal": ("left", "right"),
          "vertical": ("top", "bottom")}
VOCAB = sum(GROUPS.values(), ())
CENTRE = (images.SIZE - 1) / 2  # the image's centre row and column; a box centred there has no position word


def image_words(y, attributes):
    """Which VOCAB words describe each tiny image: bool (N, V).

    Its class name; "thin" (thickness 1) or "thick" (2); "left" / "right" when the centre column
    of its box (``images.box_centre``) is left / right of the image's centre 3.5, neither when it
    is at 3.5; "top" / "bottom" likewise for the centre row.
    """
    centre_row, centre_col = images.box_centre(y, attributes["thickness"], attributes["row"], attributes["col"])
    columns = {name: y == k for k, name in enumerate(images.CLASS_NAMES)}
    columns.update(thin=attributes["thickness"] == 1, thick=attributes["thickness"] == 2,
                   left=centre_col < CENTRE, right=centre_col > CENTRE, top=centre_row < CENTRE,
                   bottom=centre_row > CENTRE)
    return np.stack([columns[word] for word in VOCAB], axis=1)


def caption_match(x, caption):
    """How often tiny images match each word group of a caption, by the rule-based judge.

    The judge's best template (``images.judge_attributes``) gives each image its words
    (``image_words``); for each group the caption names a word of ("class", "thickness",
    "horizontal", "vertical"), the fraction of images whose word in that group is the caption's,
    and under "all" the fraction that match every one. An image the judge rejects matches nothing.

    Returns {group: fraction} for the caption's groups, and "all".
    """
    judged = images.judge_attributes(x)
    if len(judged["label"]) == 0:
        raise ValueError("x must hold at least one image")
    ok = judged["label"] != images.NO_MATCH
    words = np.zeros((len(ok), len(VOCAB)), dtype=bool)
    if ok.any():
        words[ok] = image_words(judged["label"][ok], {k: v[ok] for k, v in judged.items()})
    wanted = tokenize(caption, VOCAB)
    out, every = {}, ok.copy()
    for group, group_words in GROUPS.items():
        named = sorted({k for k in wanted if VOCAB[k] in group_words})
        if len(named) > 1:
            raise ValueError(f"caption {caption!r} names two {group} words")
        if named:
            hit = words[:, named[0]]
            out[group], every = float(hit.mean()), every & hit
    out["all"] = float(every.mean())
    return out
