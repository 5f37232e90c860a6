#!/usr/bin/env python3
"""Write per-mode copies of config/pair-a.toml and pair-b.toml (Python standard library only).

Usage:
  pairconf.py SRC_DIR OUT_DIR --data-root DIR --token-file FILE [--media-ip IP]
              [--set KEY=VALUE ...] [--omit KEY ...]

Line-based edit of the two files, so their comments and layout survive:
- `[general] data_dir` -> DIR/a and DIR/b (absolute), `ca_file` -> DIR/b/cert.pem,
  `token_file` -> FILE (absolute): the copies live in another folder, and relative paths
  resolve against the config file's folder.
- `[media] ip` -> IP when given.
- each `--set KEY=VALUE` (VALUE is a TOML literal, e.g. security='"sdes"') is added to
  `[media]` of both gateways and to every `[[sip_trunk]]` of gateway B (B's outbound leg
  toward the SIP peer; A's inbound leg is covered by A's `[media]`).
- `--omit KEY` drops a `--set` key again (used when the gateway binary rejects it).
The result is parsed back with tomllib and the written values are asserted.
"""
import argparse
import os
import re
import sys
import tomllib

HEADER = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.]+)\s*\]\]?\s*(#.*)?$")


def toml_str(value):
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def rewrite(text, name, data_root, token_file, media_ip, extra, src_dir):
    out, table = [], None
    lines = text.splitlines()

    def flush_extra():
        # Insert the extra keys at the end of the table we are leaving.
        if table == "media" or (table == "sip_trunk" and name == "b"):
            # Keep them above the blank lines/comments that separate tables.
            tail = []
            while out and (out[-1].strip() == "" or out[-1].lstrip().startswith("#")):
                tail.insert(0, out.pop())
            for key, val in extra:
                out.append(f"{key} = {val}")
            out.extend(tail)

    for line in lines:
        m = HEADER.match(line)
        if m:
            flush_extra()
            table = m.group(1)
            out.append(line)
            continue
        key = line.split("=", 1)[0].strip() if "=" in line else None
        if table == "general" and key == "data_dir":
            line = f"data_dir = {toml_str(os.path.join(data_root, name))}"
        elif table == "ript_peer" and key == "ca_file":
            line = f"ca_file = {toml_str(os.path.join(data_root, 'b', 'cert.pem'))}"
        elif table == "ript_peer" and key == "token_file":
            line = f"token_file = {toml_str(token_file)}"
        elif table == "stir" and key == "x5u_ca":
            # The x5u server is this pair's gateway B: its certificate lives in the data root.
            line = f"x5u_ca = {toml_str(os.path.join(data_root, 'b', 'cert.pem'))}"
        elif table == "stir" and key in ("sign_cert", "sign_key", "trust_anchors"):
            # Relative to the original file's folder: make it absolute for the copy.
            rel = tomllib.loads(line)[key]
            line = f"{key} = {toml_str(os.path.normpath(os.path.join(src_dir, rel)))}"
        elif table == "stir" and key == "crls":
            crls = tomllib.loads(line)[key]
            items = ", ".join(
                "{ " + ", ".join(
                    f"{k} = {toml_str(os.path.normpath(os.path.join(src_dir, v)))}"
                    for k, v in c.items()) + " }"
                for c in crls)
            line = f"crls = [{items}]"
        elif table == "media" and key == "ip" and media_ip:
            line = f"ip = {toml_str(media_ip)}"
        elif (table == "media" or (table == "sip_trunk" and name == "b")) and key in dict(extra):
            continue  # replaced by the --set value
        out.append(line)
    flush_extra()
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("src")
    ap.add_argument("out")
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--token-file", required=True)
    ap.add_argument("--media-ip")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--omit", action="append", default=[])
    a = ap.parse_args()
    extra = []
    for kv in a.set:
        k, sep, v = kv.partition("=")
        if not sep:
            raise SystemExit(f"--set wants KEY=VALUE, got {kv!r}")
        if k not in a.omit:
            extra.append((k.strip(), v.strip()))
    data_root = os.path.abspath(a.data_root)
    token_file = os.path.abspath(a.token_file)
    os.makedirs(a.out, exist_ok=True)
    for name in ("a", "b"):
        with open(os.path.join(a.src, f"pair-{name}.toml"), encoding="utf-8") as f:
            text = f.read()
        new = rewrite(text, name, data_root, token_file, a.media_ip, extra, os.path.abspath(a.src))
        doc = tomllib.loads(new)
        # The edit is line-based: prove it did what we meant.
        media = doc.get("media", {})
        want = {k: tomllib.loads(f"x = {v}")["x"] for k, v in extra}
        for k, v in want.items():
            assert media.get(k) == v, (name, "media", k)
            if name == "b":
                for t in doc.get("sip_trunk", []):
                    assert t.get(k) == v, (name, "sip_trunk", k)
        if a.media_ip:
            assert media.get("ip") == a.media_ip, (name, "media.ip")
        assert doc["general"]["data_dir"] == os.path.join(data_root, name)
        for p in doc.get("ript_peer", []):
            assert p.get("ca_file") in (None, os.path.join(data_root, "b", "cert.pem"))
            assert p.get("token_file") in (None, token_file)
        with open(os.path.join(a.out, f"pair-{name}.toml"), "w", encoding="utf-8") as f:
            f.write(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
