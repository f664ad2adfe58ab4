"""API keys of the Serve endpoint (see gref.serving.auth): create, rotate, revoke, list.

    python -m jobs.apikey create --name shop-frontend --scopes rerank,feedback
    python -m jobs.apikey create --name prometheus --scopes metrics
    python -m jobs.apikey rotate --name shop-frontend     # new secret; the old key stops working
    python -m jobs.apikey revoke --name shop-frontend
    python -m jobs.apikey list

A new or rotated key is printed once; the file (serve config ``api_keys``, default
runs/serve/api_keys.json) keeps only its SHA-256. A running Router picks up a change within a
second, no redeploy. To rotate without a gap: create a second key for the client, switch the
client over, revoke the first.
"""

from __future__ import annotations

import argparse

from gref.cli import print_json

DEFAULT_FILE = "runs/serve/api_keys.json"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m jobs.apikey", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["create", "rotate", "revoke", "list"])
    p.add_argument("--name", help="the client's name (letters, digits, '-')")
    p.add_argument("--scopes", default="rerank,feedback", help="comma-separated: rerank, feedback, metrics")
    p.add_argument("--file", default=DEFAULT_FILE, help=f"the keys file (default {DEFAULT_FILE})")
    args = p.parse_args(argv)
    from gref.serving.auth import KeyFile

    keys = KeyFile(args.file)
    if args.action != "list" and not args.name:
        p.error(f"{args.action} needs --name")
    try:
        if args.action == "create":
            out = {"name": args.name, "key": keys.create(args.name, [s.strip() for s in args.scopes.split(",") if s.strip()])}
        elif args.action == "rotate":
            out = {"name": args.name, "key": keys.rotate(args.name)}
        elif args.action == "revoke":
            keys.revoke(args.name)
            out = {"revoked": args.name}
        else:
            out = {"keys": [{k: v for k, v in entry.items() if k != "sha256"} for entry in keys.read()]}
    except ValueError as err:
        raise SystemExit(f"apikey: {err}") from None
    print_json({**out, "file": str(keys.path.resolve())})
    return out


if __name__ == "__main__":
    main()
