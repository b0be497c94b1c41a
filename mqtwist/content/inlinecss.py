"""
C{inlinecss}: the rules of an HTML document's C{<style>} elements written
into the C{style} attributes of the elements they select, by css_inline
(a Rust library, measured the faster of it and premailer: see
bench/results/inlinecss.txt).

Nothing is fetched: stylesheets that C{<link>} elements name are neither
loaded nor inlined (their elements stay, for the mail clients that load
them).  At-rules (C{@media}, C{@font-face}) cannot be attributes: they stay
in a C{<style>} element in the head.
"""

from __future__ import annotations

import css_inline

__all__ = ["inlineCSS"]

_INLINER = css_inline.CSSInliner(
    load_remote_stylesheets=False,
    keep_link_tags=True,
    keep_at_rules=True,
)


def inlineCSS(document: str) -> str:
    """
    C{document} with its C{<style>} rules as C{style} attributes.  The
    document is written anew by an HTML5 parser: a fragment gets its
    C{<html>}, C{<head>} and C{<body>}.

    @raise ValueError: when css_inline cannot read a rule; the caller
        refuses the job.
    """
    return _INLINER.inline(document)
