"""`vlmkd classes add|remove|list EXPORT_DIR`: the class list of a zero-shot export, edited by name."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("classes", help="list, add or remove the classes of a zero-shot export (by name)")
    csub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = csub.add_parser("add", help="embed new class names with the export's text encoder and add them")
    a.add_argument("export_dir")
    a.add_argument("names", nargs="+")
    a.add_argument(
        "--text",
        action="append",
        help="the text to embed for each name, in order (default: the run's own texts for the name, "
        "recorded at export, else its templates filled with the name)",
    )
    a.add_argument("--replace", action="store_true", help="re-embed names that already exist")
    r = csub.add_parser("remove", help="remove classes by name")
    r.add_argument("export_dir")
    r.add_argument("names", nargs="+")
    ls = csub.add_parser("list", help="print the class names")
    ls.add_argument("export_dir")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vlmkd.export import add_classes, read_class_store, remove_classes

    if args.action == "add":
        before = set(read_class_store(args.export_dir)[0]["names"])
        names = add_classes(args.export_dir, args.names, args.text, replace=args.replace)
        for verb, group in (
            ("added", [n for n in args.names if n not in before]),
            ("replaced", [n for n in args.names if n in before]),
        ):
            if group:
                print(f"{len(names)} classes: {verb} {', '.join(group)}")
    elif args.action == "remove":
        names = remove_classes(args.export_dir, args.names)
        print(f"{len(names)} classes: removed {', '.join(args.names)}")
    if args.action in ("add", "remove"):
        _print_measured(args.export_dir)
    else:
        info, _ = read_class_store(args.export_dir)
        print("\n".join(info["names"]))
    return 0


def _print_measured(export_dir: str) -> None:
    """The new list's accuracy that `classes add|remove` measured and wrote to the model card."""
    from pathlib import Path

    from vlmkd.eval.class_list import format_class_list
    from vlmkd.utils.io import read_json

    path = Path(export_dir) / "export.json"
    res = read_json(path).get("class_list") if path.is_file() else None
    if not res:
        return
    if res.get("error"):
        print(f"accuracy with this class list: not measured ({res['error']})")
    else:
        print(f"{format_class_list(res)}; MODEL_CARD.md updated")
