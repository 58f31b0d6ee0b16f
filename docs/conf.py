"""Sphinx configuration of spreadqueue's documentation site.

Build it with ``tox -e docs`` (warnings are errors, references are checked), or by hand::

    python3 -m pip install -e '.[docs]'
    python3 -m sphinx -W --keep-going -n -b html docs docs/_build/html

The pages are Markdown (MyST), used as they are on GitHub; the API reference comes from
the docstrings (autodoc).
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import re
import sys
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.transforms import Transform
from sphinx import addnodes

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # document the checkout, not whatever copy is installed

import twisted.internet.interfaces  # noqa: E402
from zope.interface.interface import InterfaceClass  # noqa: E402

import spreadqueue  # noqa: E402
import spreadqueue.interfaces  # noqa: E402

project = "spreadqueue"
author = "the spreadqueue developers"
copyright = "the spreadqueue developers"
version = release = spreadqueue.__version__  # the one place the version is written

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "repoze.sphinx.autointerface",  # zope.interface classes: the `autointerface` directive
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build"]

# MyST: GitHub-style heading anchors, so that links such as protocol.md#7-failure-semantics
# resolve here as they do on GitHub (a broken one is a warning, hence an error).
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 4

# autodoc: what the docstrings say, signatures with the hints as written.
autodoc_default_options = {"members": True}
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autoclass_content = "both"
# Every cross-reference must resolve (-n), except to what this site does not document:
# other projects (there is no network for intersphinx inventories) and spreadqueue's
# private modules, whose names appear in a few signatures.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(twisted|zope|collections|asyncio|logging|uvloop)(\..*)?"),
    (r"py:.*", r"spreadqueue\._.*"),
    (r"py:class", r"GroupId"),  # MembershipMessage.group_id: a private type
    (r"py:class", r"spreadqueue\.aio\.(F|_\w+)"),  # a TypeVar and private helpers
]

# Straight dashes: "--spread" in a docstring stays an option, not an en dash.
smartquotes_action = "qe"

html_theme = "furo"
html_title = f"spreadqueue {release}"
html_static_path: list[str] = []


# --------------------------------------------------------------------------- anchors
class HtmlAnchorTargets(Transform):
    """``<a id="sec-4"></a>`` in a heading becomes a link target of that section.

    docs/spread-protocol.md gives its sections stable ids that way (GitHub keeps them),
    and links to them as ``(#sec-4)``; MyST alone would not know those ids.
    """

    default_priority = 250  # before MyST resolves [text](#id) links (879)
    _ANCHOR = re.compile(r'<a\s+id="([^"]+)"\s*>')

    def apply(self, **kwargs: Any) -> None:
        for raw in list(self.document.findall(nodes.raw)):
            match = self._ANCHOR.fullmatch(raw.astext().strip())
            if match is None or not isinstance(raw.parent, nodes.title):
                continue
            section = raw.parent.parent
            name = match.group(1)
            section["names"].append(name)
            self.document.note_explicit_target(section, section)
            self.document.nameids[name] = section["ids"][0]


class RepositoryFileLinks(Transform):
    """A Markdown link to a file of the repository that is not a page of this site (as
    ``[examples/shared_session.py](examples/shared_session.py)`` in the README) becomes
    a download of that file, instead of a broken link."""

    default_priority = 500

    def apply(self, **kwargs: Any) -> None:
        env = self.document.settings.env
        here = Path(env.doc2path(env.docname)).parent
        for ref in list(self.document.findall(addnodes.pending_xref)):
            if ref.get("reftype") != "myst" or not ref.source:
                continue
            target = (Path(ref.source).parent / ref["reftarget"]).resolve()
            if not target.is_file() or ROOT not in target.parents or target.suffix == ".md":
                continue
            download = addnodes.download_reference(
                "",
                "",
                *ref.children,
                refdoc=env.docname,
                refexplicit=True,
                reftarget=os.path.relpath(target, here),
            )
            ref.replace_self(download)


# --------------------------------------------------------------------- API coverage
def public_modules() -> list[str]:
    """spreadqueue and its modules whose dotted names have no ``_`` part."""
    found = ["spreadqueue"]
    for info in pkgutil.walk_packages(spreadqueue.__path__, "spreadqueue."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            found.append(info.name)
    return found


def check_api_reference(app: Any, env: Any) -> None:
    """Warn (an error with -W) when a public module, or a name in a public module's
    ``__all__``, has no entry in the API reference: the reference covers the public
    surface exactly, and this keeps it so as the surface grows."""
    from sphinx.util import logging

    log = logging.getLogger(__name__)
    objects = env.get_domain("py").objects
    for module in public_modules():
        if module not in env.get_domain("py").modules:
            log.warning(
                "API reference: public module %s has no page (add one under docs/api/)",
                module,
                type="spreadqueue",
                subtype="api",
            )
            continue
        for name in getattr(importlib.import_module(module), "__all__", ()):
            if f"{module}.{name}" not in objects:
                log.warning(
                    "API reference: %s.%s (in __all__) is not documented",
                    module,
                    name,
                    type="spreadqueue",
                    subtype="api",
                )


# ------------------------------------------------------------------ signatures
# A zope.interface class has no __qualname__, so type hints naming one would print as
# "<InterfaceClass spreadqueue._spread.interfaces.ISpreadSession>". Give each public
# interface one (in this build only): hints then name it, and public_home links ours.
for _module in (spreadqueue.interfaces, twisted.internet.interfaces):
    for _value in vars(_module).values():
        if isinstance(_value, InterfaceClass):
            _value.__qualname__ = _value.__name__


def public_home(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    """Resolve a reference to a private path (``spreadqueue._queue.sender.Reply``, as
    type hints give them) to the public name of the same object (``spreadqueue.Reply``)."""
    target = node.get("reftarget", "")
    if node.get("refdomain") != "py" or not target.startswith("spreadqueue._"):
        return None
    module_name, _, name = target.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        return None
    for module in public_modules():
        public = importlib.import_module(module)
        for public_name in getattr(public, "__all__", ()):
            if getattr(public, public_name) is obj:
                node["reftarget"] = f"{module}.{public_name}"
                domain = env.get_domain("py")
                return domain.resolve_xref(
                    env,
                    node["refdoc"],
                    app.builder,
                    node["reftype"],
                    node["reftarget"],
                    node,
                    contnode,
                )
    return None


def namedtuple_noise(
    app: Any, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    """Leave out what namedtuple writes for its fields and constructor ("Alias for
    field number 3", "Create new instance of ..."): the class docstrings say more."""
    for i, line in enumerate(lines):
        if re.fullmatch(r"Alias for field number \d+|Create new instance of .*", line):
            del lines[i:]
            return


def setup(app: Any) -> dict[str, Any]:
    app.add_transform(HtmlAnchorTargets)
    app.add_transform(RepositoryFileLinks)
    app.connect("env-check-consistency", check_api_reference)
    app.connect("missing-reference", public_home)
    app.connect("autodoc-process-docstring", namedtuple_noise)
    return {"parallel_read_safe": True}
