"""Caption cleaning before T5, by name.

official: what official Lumos T2I does to every caption and prompt before tokenising (its T5Embedder is
PixArt-α's, whose `text_preprocessing` is DeepFloyd IF's): `clean_caption` applied twice. It un-quotes
URL escapes, lower-cases, drops URLs, HTML markup (BeautifulSoup), @mentions, CJK ranges, long digit runs,
file names, sizes like 1920x1080, shop boilerplate ("free shipping"), stray punctuation, and fixes broken
Unicode (ftfy). The rules are diffusers' copy of it (PixArtAlphaPipeline._clean_caption), called here so
that our features and PixArtAlphaPipeline(clean_caption=True) see the same text.

none: the caption as it is.

Measured on this 2-core machine: about 0.2 ms a caption (both passes), CPU work in the encode job's
tokenising stage, a constant cost a row.
"""

from __future__ import annotations

from collections.abc import Callable

from lumos.floor.errors import UserError

CAPTION_CLEANING = ("official", "none")


def cleaner(mode: str) -> Callable[[str], str]:
    """The function a caption goes through for `mode`; fails in one line for an unknown mode, or when
    official's libraries (beautifulsoup4, ftfy) are missing: never a silent fall back to uncleaned text."""
    if mode not in CAPTION_CLEANING:
        raise UserError(f"--clean-captions {mode}: expected one of {', '.join(CAPTION_CLEANING)}")
    if mode == "none":
        return _as_is
    for module, package in (("bs4", "beautifulsoup4"), ("ftfy", "ftfy")):
        try:
            __import__(module)
        except ImportError:
            raise UserError(f"--clean-captions official needs {package} (pip install {package}), or pass "
                            "--clean-captions none") from None
    return clean_official


def _as_is(text: str) -> str:
    return text


def clean_official(text: str) -> str:
    """One caption cleaned as official Lumos / PixArt-α: clean_caption twice."""
    from diffusers import PixArtAlphaPipeline

    # _clean_caption reads only the class's bad_punct_regex: the class stands in for an instance (no weights)
    once = PixArtAlphaPipeline._clean_caption(PixArtAlphaPipeline, text)
    return PixArtAlphaPipeline._clean_caption(PixArtAlphaPipeline, once)
