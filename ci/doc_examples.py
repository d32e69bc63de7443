#!/usr/bin/env python3
"""Lists the public items of a crate whose documentation has no code example.

Reads the rustdoc JSON of one crate (`cargo +nightly rustdoc -p CRATE -- -Z unstable-options
--output-format json`) and walks what a user can name: the root module, public modules, and the
items they define or re-export from the same crate. An item counts when it is a module, type,
trait, function, constant, static or macro, or a public method or associated constant of an
inherent impl or of a public trait. Fields and variants are covered by their type's example,
types a derive generated (rkyv's archived and resolver types) by the type they derive from, and
trait impls (Display, From, ...) by the trait's own documentation; `#[doc(hidden)]` items are
left out. Prints one line per item without a fenced code block and exits 1 if there is any.

usage: doc_examples.py CRATE.json
"""

import json
import sys

COUNTED = {"module", "struct", "enum", "union", "trait", "function", "constant", "static",
           "type_alias", "macro", "assoc_const"}


def hidden(item):
    """Left out: `#[doc(hidden)]`, and types a derive generated (rkyv's archived and resolver
    types, documented by the type they derive from)."""
    attrs = [str(a) for a in item.get("attrs", [])]
    if any("hidden" in a and "doc" in a for a in attrs):
        return True
    return "automatically_derived" in attrs and next(iter(item["inner"])) in ("struct", "enum")


def main(path):
    doc = json.load(open(path))
    index = doc["index"]
    seen, missing, counted = set(), [], 0

    def check(item, name):
        nonlocal counted
        counted += 1
        if "```" not in (item.get("docs") or ""):
            span = item.get("span") or {}
            where = f"{span.get('filename', '?')}:{(span.get('begin') or ['?'])[0]}"
            missing.append(f"{where}: {name}")

    def impl_items(type_item, type_name):
        inner = next(iter(type_item["inner"].values()))
        for impl_id in inner.get("impls", []) if isinstance(inner, dict) else []:
            impl = index.get(str(impl_id))
            if impl is None:
                continue
            body = impl["inner"]["impl"]
            if body.get("trait") is not None or body.get("is_synthetic") or body.get("blanket_impl"):
                continue
            for member in body["items"]:
                m = index.get(str(member))
                if m is None or m["visibility"] != "public" or hidden(m):
                    continue
                kind = next(iter(m["inner"]))
                if kind in ("function", "assoc_const"):
                    check(m, f"{type_name}::{m['name']}")

    def walk(item_id, prefix):
        if item_id in seen:
            return
        seen.add(item_id)
        item = index.get(str(item_id))
        if item is None or item.get("crate_id", 0) != 0 or hidden(item):
            return
        kind = next(iter(item["inner"]))
        name = f"{prefix}{item['name']}" if item.get("name") else prefix.rstrip(":")
        if kind == "use":
            use = item["inner"]["use"]
            target = use.get("id")
            if target is None:
                return
            if use.get("is_glob"):
                t = index.get(str(target))
                if t is not None and "module" in t["inner"]:
                    for child in t["inner"]["module"]["items"]:
                        child_item = index.get(str(child))
                        if child_item is not None and child_item["visibility"] == "public":
                            walk(child, prefix)
                return
            walk(target, prefix)
            return
        if kind in COUNTED:
            check(item, name or "crate")
        if kind == "module":
            for child in item["inner"]["module"]["items"]:
                child_item = index.get(str(child))
                if child_item is not None and child_item["visibility"] == "public":
                    walk(child, f"{name}::" if name else "")
        elif kind in ("struct", "enum", "union"):
            impl_items(item, name)
        elif kind == "trait":
            for member in item["inner"]["trait"]["items"]:
                m = index.get(str(member))
                if m is not None and not hidden(m) and next(iter(m["inner"])) in ("function", "assoc_const"):
                    check(m, f"{name}::{m['name']}")

    walk(doc["root"], "")
    for line in sorted(missing):
        print(line)
    print(f"{len(missing)} of {counted} public items have no code example", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
