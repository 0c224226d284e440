#!/usr/bin/env python3
"""Render a benches/load template: every @@NAME@@ becomes the value of the environment
variable T_NAME. A placeholder without a value is an error (never a silent blank).

usage: render.py TEMPLATE OUTPUT
"""
import os
import re
import sys


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, dst = sys.argv[1], sys.argv[2]
    with open(src) as f:
        text = f.read()
    missing = []

    def value(m):
        name = "T_" + m.group(1)
        if name not in os.environ:
            missing.append(name)
            return ""
        return os.environ[name]

    out = re.sub(r"@@([A-Z0-9_]+)@@", value, text)
    if missing:
        sys.exit(f"render.py: {src}: no value for {', '.join(sorted(set(missing)))}")
    with open(dst, "w") as f:
        f.write(out)


if __name__ == "__main__":
    main()
